"""DSPy's own fine-tuning API on the local models: `dspy.BootstrapFinetune` runs through `LocalLoraProvider` end to
end on the tiny random Qwen2 of test_distill_tiny (its `tiny` fixture, imported): a scripted teacher writes the
traces, the provider trains a LoRA on them, converts it with llama.cpp's script, and the compiled program's
predictor serves it through the project's llama.cpp engine, answering otherwise than the base model. Without the
`distill` extra, llama-cpp-python, the 0.5B GGUF (its tokenizer) or the conversion scripts, those tests skip with a
NOT TESTED warning. The argument checks need no model.
"""

from __future__ import annotations

from pathlib import Path

import dspy
import pytest
from dspy.clients.utils_finetune import TrainDataFormat
from dspy.lm15 import Config, Message, Request
from test_distill_tiny import tiny  # noqa: F401  (module-scoped fixture: the tiny Qwen2 as HF dir and GGUF)

from cd_dspy.distill import LocalLoraProvider, finetunable_lm, validate_jsonl
from cd_dspy.distill.pipeline import serve
from cd_dspy.distill.provider import LoraTrainingJob, split_train_kwargs, with_adapter
from cd_dspy.testing.simulated import answer_match, simulated_splits
from cd_dspy.testing.solving_teacher import solving_teacher_lm

SIGNATURE = "question -> answer: float"
SERVING = {"max_tokens": 12, "grammar": "never", "n_threads": 1, "n_ctx": 1024}


def _predict(lm: dspy.LM) -> dspy.Predict:
    program = dspy.Predict(SIGNATURE)
    program.set_lm(lm)
    return program


def _reply(lm: dspy.LM, question: str) -> str:
    """The LM's raw greedy reply to the predictor's prompt for `question` (DSPy's ChatAdapter format)."""
    system, user = dspy.ChatAdapter().format(dspy.Predict(SIGNATURE).signature, [], {"question": question})
    request = Request(model=lm.model, messages=(Message.user(user["content"]),), system=system["content"],
                      config=Config(max_tokens=SERVING["max_tokens"], temperature=0.0))
    return lm(request).text


def test_bootstrap_finetune_trains_converts_and_serves_a_lora(tiny, tmp_path):  # noqa: F811
    base = finetunable_lm(tiny.gguf, directory=tmp_path / "runs", cache=False, **SERVING)
    student, teacher = _predict(base), _predict(solving_teacher_lm())
    train, held_out = simulated_splits(8, 3, seed=1)
    optimizer = dspy.BootstrapFinetune(metric=answer_match, num_threads=1,
                                       train_kwargs={"num_train_epochs": 3, "learning_rate": 1e-2, "threads": 1})
    compiled = optimizer.compile(student, trainset=train, teacher=teacher)

    # the data: the teacher's accepted traces in chat format (it misses the unit problems: 6 of 8 kept)
    (run,) = (tmp_path / "runs").iterdir()
    data = validate_jsonl(run / "train.jsonl")
    assert data.records == sum(answer_match(x, teacher(question=x.question)) for x in train) == 6
    # the adapter, converted for llama.cpp, and the compiled predictor served with it under local_lm's name
    adapter = run / "adapter.gguf"
    assert adapter.is_file() and (run / "adapter" / "adapter_config.json").is_file()
    tuned = compiled.predictors()[0].lm
    assert tuned is not base and base.engine.lora_path is None
    assert tuned.engine.lora_path == str(adapter) and tuned.engine.n_ctx == base.engine.n_ctx
    assert tuned.model == serve(tiny.gguf, adapter).model and tuned.model.startswith("local/tiny+lora-")
    assert isinstance(tuned.provider, LocalLoraProvider) and tuned.kwargs["max_tokens"] == SERVING["max_tokens"]
    # served answers: the tuned model replies otherwise than the base model, with a token of the trained replies'
    # format ("[[ ## answer ## ]]"; 18 steps of a rank-4 LoRA on a random 2-layer model learn no more than that)
    before = [_reply(base, x.question) for x in held_out]
    after = [_reply(tuned, x.question) for x in held_out]
    assert all(b != a for b, a in zip(before, after, strict=True)), (before, after)
    assert all("##" in a for a in after) and not any("##" in b for b in before), (before, after)


def test_better_together_runs_its_weight_step_through_the_provider(tiny, tmp_path):  # noqa: F811
    base = finetunable_lm(tiny.gguf, directory=tmp_path / "runs", cache=False, **SERVING)
    train, val = simulated_splits(6, 2, seed=2)
    weights = dspy.BootstrapFinetune(metric=answer_match, num_threads=1,
                                     train_kwargs={"epochs": 1, "lr": 1e-2, "threads": 1})
    best = dspy.BetterTogether(metric=answer_match, w=weights).compile(
        _predict(base), trainset=train, teacher=_predict(solving_teacher_lm()), valset=val, strategy="w",
        num_threads=1)
    assert best.flag_compilation_error_occurred is False  # BetterTogether logs a failed step and goes on
    tuned = {c["strategy"]: c["program"].predictors()[0].lm for c in best.candidate_programs}
    (adapter,) = (tmp_path / "runs").glob("*/adapter.gguf")
    assert tuned[""].engine.lora_path is None and tuned["w"].engine.lora_path == str(adapter)
    assert tuned["w"].model != tuned[""].model  # how BetterTogether tells that the weights changed


def _fake_lm(tmp_path: Path) -> dspy.LM:
    (tmp_path / "m.gguf").write_bytes(b"GGUF")  # the engine loads lazily: never read here
    return finetunable_lm(tmp_path / "m.gguf", directory=tmp_path / "runs")


CHAT = [{"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "u"},
                      {"role": "assistant", "content": "a"}]}]


@pytest.mark.parametrize(("data", "fmt", "kwargs", "error"), [
    (CHAT, "completion", {}, "chat data only, got train_data_format='completion'"),
    (CHAT, TrainDataFormat.GRPO_CHAT, {}, "chat data only, got train_data_format='grpo_chat'"),
    (CHAT, "chat", {"learning_rate": 1e-3, "warmup_ratio": 0.1}, r"does not know the train_kwargs \['warmup_ratio'\]"),
    (CHAT, "chat", {"use_peft": False}, "LoRA adapters only"),
    (CHAT, "chat", {"lr": 1e-3, "learning_rate": 1e-2}, "twice with different values"),
    ([], "chat", {}, "no training data"),
    ([{"messages": CHAT[0]["messages"][:2]}], "chat", {}, "record 0 is not chat data: the last message"),
    ([{"prompt": "p", "completion": "c"}], "chat", {}, "record 0 is not chat data"),
])
def test_finetune_refuses_what_it_cannot_train_before_loading_a_model(tmp_path, data, fmt, kwargs, error):
    lm = _fake_lm(tmp_path)
    job = lm.finetune(data, fmt, kwargs)  # DSPy runs the provider on a thread; a failure becomes the result
    assert isinstance(job, LoraTrainingJob)
    result = job.result(timeout=60)
    with pytest.raises(ValueError, match=error):
        raise result
    assert job.status() == "failed" and not list((tmp_path / "runs").glob("*/adapter.gguf"))


def test_train_kwargs_map_to_the_projects_settings():
    train, lora, run = split_train_kwargs({"num_train_epochs": 2, "learning_rate": 5e-3, "r": 8, "lora_alpha": 16,
                                           "per_device_train_batch_size": 2, "gradient_accumulation_steps": 3,
                                           "target_modules": ["q_proj"], "max_seq_length": 512, "use_peft": True,
                                           "output_dir": "x"})
    assert (train.mode, train.epochs, train.lr, train.grad_accum, train.max_length) == ("sft", 2, 5e-3, 6, 512)
    assert (lora.rank, lora.alpha, lora.targets) == (8, 16, ("q_proj",)) and run == {"output_dir": "x"}


def test_an_lm_without_the_projects_engine_or_gguf_is_refused(tmp_path):
    with pytest.raises(TypeError, match="finetunable_lm"):
        with_adapter(solving_teacher_lm(), tmp_path / "a.gguf")
    lm = dspy.LM("local/m", engine=_fake_lm(tmp_path).engine, provider=LocalLoraProvider())  # no finetuning_model
    result = lm.finetune(CHAT, "chat").result(timeout=60)
    assert isinstance(result, ValueError) and "finetuning_model" in str(result)
