"""End to end on a tiny Qwen2 model built here (2 layers, hidden 64, random weights, the real Qwen2.5 tokenizer
rebuilt from the 0.5B GGUF, converted to GGUF with llama.cpp's own script): the student loads from GGUF as the
local models do; LoRA SFT lowers the loss; KD trains on the teacher's top-k and drops misaligned records; the
adapter converts to a llama.cpp LoRA that the engine serves with the trained model's log-probabilities (the
reply's tokens aligned across llama.cpp and transformers); a merged model converts and serves too; and
`cd-dspy distill` and examples/distill_compare.py run the whole path.

Needs the `distill` extra, llama-cpp-python and the 0.5B GGUF (for its tokenizer); without them every test here
is skipped with a NOT TESTED warning, never passed.
"""

from __future__ import annotations

import importlib.util
import json
import warnings
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import dspy
import numpy as np
import pytest
from conftest import load_example

from cd_dspy.cli import main as cli
from cd_dspy.distill import (
    LlamaScorer,
    LoraTrainer,
    TrainSettings,
    convert_hf,
    convert_lora,
    generate_distillation_data,
    load_student,
    merge_adapter,
    validate_jsonl,
)
from cd_dspy.distill.train import encode_records
from cd_dspy.testing.simulated import HELPFUL_RULES, answer_match, simulated_splits
from cd_dspy.testing.solving_teacher import solving_teacher_lm

SOURCE = "qwen2.5-coder-0.5b"  # only its tokenizer is used


def _skip(why: str) -> None:
    msg = f"NOT TESTED: distillation on a tiny model ({why})"
    warnings.warn(msg, stacklevel=2)
    pytest.skip(msg)


def _requirements() -> None:
    missing = [m for m in ("torch", "transformers", "peft", "gguf", "sentencepiece", "llama_cpp")
               if importlib.util.find_spec(m) is None]
    if missing:
        _skip(f"{', '.join(missing)} missing; fix: pip install \"cd-dspy[distill,local]\"")
    from cd_dspy.distill.convert import ConversionUnavailableError, scripts_dir
    from cd_dspy.lms.catalog import ModelNotInstalledError, ensure_model

    try:
        ensure_model(SOURCE)
    except ModelNotInstalledError as exc:
        _skip(f"the {SOURCE} GGUF holds the tokenizer: {exc}")
    try:
        scripts_dir()
    except ConversionUnavailableError as exc:
        _skip(str(exc))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> SimpleNamespace:
    _requirements()
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from cd_dspy.distill.student import gguf_tokenizer, model_file

    tokenizer = gguf_tokenizer(model_file(SOURCE))
    root = tmp_path_factory.mktemp("tiny")
    config = Qwen2Config(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32768,
                         rope_theta=1e6, tie_word_embeddings=True, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id)
    torch.manual_seed(0)
    Qwen2ForCausalLM(config).save_pretrained(str(root / "hf"))
    tokenizer.save_pretrained(str(root / "hf"))
    return SimpleNamespace(hf=root / "hf", gguf=convert_hf(root / "hf", root / "tiny.gguf", outtype="f32"))


@pytest.fixture(scope="module")
def records():
    train = simulated_splits(6, seed=1)[0]
    with dspy.context(adapter=dspy.JSONAdapter()):
        return generate_distillation_data(dspy.ChainOfThought("question -> answer: float"), train,
                                          teacher_lm=solving_teacher_lm(), metric=answer_match, priming="gold").records


def _reply_logprobs(trainer: LoraTrainer, record) -> tuple[list[int], np.ndarray]:
    """The reply's token ids and the trained (transformers) model's log-probabilities of them."""
    import torch

    (item,), _ = encode_records([record], trainer.tokenizer, mode="sft", max_length=4096)
    trainer.model.eval()
    with torch.no_grad():
        logits = trainer.model(input_ids=torch.tensor([item.ids])).logits[0, item.prompt_len - 1:-1]
    reply = item.ids[item.prompt_len:]
    logp = torch.log_softmax(logits.double(), -1)[torch.arange(len(reply)), torch.tensor(reply)]
    return reply, logp.numpy()


def test_student_loads_from_the_gguf_as_the_local_models_do(tiny):
    import torch
    from transformers import AutoModelForCausalLM

    model, tokenizer = load_student(tiny.gguf)
    reference = AutoModelForCausalLM.from_pretrained(str(tiny.hf), dtype=torch.float32)
    ids = torch.tensor([tokenizer("Pack 23 apples in bags of 5.")["input_ids"]])
    with torch.no_grad():
        assert torch.allclose(model(input_ids=ids).logits, reference(input_ids=ids).logits, atol=1e-5)
    assert "<|im_start|>" in tokenizer.chat_template and tokenizer.eos_token == "<|im_end|>"


def test_lora_sft_kd_conversion_and_serving(tiny, records, tmp_path):
    model, tokenizer = load_student(tiny.hf)
    trainer = LoraTrainer(model, tokenizer, seed=0)
    sft = trainer.train(records, TrainSettings(mode="sft", epochs=2, lr=1e-2, seed=0), adapter_dir=tmp_path / "sft")
    assert sft.steps == 2 * len(records) and sft.loss_after < sft.loss_before - 0.05
    assert sft.seconds > 0 and sft.peak_rss_mb > 100 and sft.dropped == {}

    # the adapter in llama.cpp: the same log-probabilities for the reply's tokens as the trained model
    gguf = convert_lora(tmp_path / "sft", tmp_path / "sft.gguf")
    reply, expected = _reply_logprobs(trainer, records[0])
    prompt, answer = records[0].messages[:-1], records[0].messages[-1]["content"]
    scored = _score(tiny.gguf, prompt, answer, lora_path=gguf)
    assert scored.tokens == reply  # llama.cpp and transformers cut the same reply tokens
    assert np.allclose(scored.token_logprobs, expected, atol=2e-3)
    untuned = _score(tiny.gguf, prompt, answer).token_logprobs
    assert np.abs(np.array(untuned) - expected).max() > 0.05  # the adapter is what made the difference

    from cd_dspy.lms import local_lm

    served = local_lm(str(tiny.gguf), lora_path=str(gguf), max_tokens=6, grammar="never", n_threads=1)
    assert served.model.startswith("local/tiny+lora-") and isinstance(served("Hello")[0], str)

    # KD on a teacher that puts most of its mass on the reply's own token and the rest on one other token
    encoded, _ = encode_records(records, tokenizer, mode="sft", max_length=4096)
    taught = [replace(r, teacher_logprobs={"tokens": e.ids[e.prompt_len:],
                                           "top_ids": [[t, 7] for t in e.ids[e.prompt_len:]],
                                           "top_logprobs": [[-0.05, -3.0]] * (len(e.ids) - e.prompt_len)})
              for r, e in zip(records, encoded, strict=True)]
    kd = trainer.train(taught, TrainSettings(mode="kd", epochs=2, lr=1e-2, kd_alpha=0.7, kd_temperature=2.0))
    assert kd.records == len(records) and kd.loss_after < kd.loss_before
    shifted = replace(taught[0], teacher_logprobs={**taught[0].teacher_logprobs,
                                                   "tokens": taught[0].teacher_logprobs["tokens"][1:]})
    partial = trainer.train([shifted, *taught[1:]], TrainSettings(mode="kd", max_steps=1))
    assert partial.dropped == {"token_mismatch": 1} and partial.records == len(records) - 1

    # merged into the weights and converted as a whole model: the same log-probabilities again
    _, expected = _reply_logprobs(trainer, records[0])
    merged = convert_hf(merge_adapter(trainer, tmp_path / "merged"), tmp_path / "merged.gguf", outtype="f32")
    assert np.allclose(_score(merged, prompt, answer).token_logprobs, expected, atol=2e-3)


def _score(gguf, prompt, answer, **settings):
    scorer = LlamaScorer(gguf, top_k=5, n_ctx=512, **settings)
    try:
        return scorer.score(prompt, answer)
    finally:
        scorer.close()


def test_cd_dspy_distill_runs_the_whole_path_with_kd(tiny, tmp_path, capsys):
    out = tmp_path / "run"
    code = cli.main(["distill", "--task", "simulated", "--teacher", "simulated-solver", "--target", str(tiny.gguf),
                     "--student", str(tiny.hf), "--train", "6", "--val", "2", "--test", "3", "--mode", "kd",
                     "--kd-teacher", str(tiny.gguf), "--kd-top-k", "4", "--kd-n-ctx", "512", "--kd-grid",
                     "0.5:1,0.9:2", "--select-on", "loss", "--epochs", "1", "--lr", "1e-2", "--max-tokens", "6",
                     "--grammar", "never", "--priming", "gold", "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    report = validate_jsonl(out / "train.jsonl", require_logprobs=True)
    assert report.records == report.with_logprobs == 6
    result = json.loads((out / "distill_result.json").read_text())
    assert result["data"]["accepted"] == 6 and result["data"]["kd"]["scored"] == 6
    grid = result["training"]["extra"]["kd_grid"]
    assert [(g["alpha"], g["temperature"]) for g in grid] == [(0.5, 1.0), (0.9, 2.0)]
    assert Path(result["adapter_gguf"]).is_file()
    assert [row["n"] for row in result["held_out"].values()] == [3, 3]
    assert "| target + KD adapter |" in (out / "report.md").read_text()


def test_distill_compare_example_on_the_tiny_model(tiny, tmp_path):
    from cd_dspy.core.result import Rule
    from cd_dspy.phases.integrate import with_rules

    rules = tmp_path / "program.json"
    program = dspy.ChainOfThought("question -> answer: float")
    with_rules(program, [Rule(id="R1", text=HELPFUL_RULES["units"], predictor="predict")]).save(str(rules))
    module = load_example("distill_compare")
    report = module.main(["--task", "simulated", "--teacher", "simulated-solver", "--target", str(tiny.gguf),
                          "--student", str(tiny.hf), "--train", "5", "--val", "2", "--test", "3", "--rules",
                          str(rules), "--methods", "rules+sft", "--max-steps", "2", "--lr", "1e-2",
                          "--max-tokens", "6", "--grammar", "never", "--sft-priming", "confidence",
                          "--out", str(tmp_path / "cmp")])
    assert module.holds_rules(program, dspy.ChainOfThought("question -> answer: float")) is False
    assert list(report["rows"]) == ["none", "rules+sft", "sft:confidence"]  # no help is always the baseline
    assert report["rows"]["rules+sft"]["train"]["steps"] == 2 and "vs_baseline" in report["rows"]["rules+sft"]
    restyled = validate_jsonl(tmp_path / "cmp" / "train_rules.jsonl")
    assert restyled.records == report["data"]["records"]
    assert HELPFUL_RULES["units"] in (tmp_path / "cmp" / "train_rules.jsonl").read_text()
    table = (tmp_path / "cmp" / "distill_compare.md").read_text()
    assert "target + CD rules + SFT" in table and "| target + SFT (confidence-primed teacher) |" in table
    primed = validate_jsonl(tmp_path / "cmp" / "train_confidence.jsonl")
    assert primed.records == report["data_by_priming"]["confidence"]["records"] > 0
    assert report["rows"]["sft:confidence"]["train"]["steps"] == 2 and "p_holm" in report["rows"]["sft:confidence"][
        "vs_baseline"]
