"""Distillation data without a model: the primed teacher's accepted traces as chat JSONL (validated line by line,
also by DSPy's own validator), rules in the system prompt, the validator's errors, the teacher's log-probabilities
aligned to the reply's tokens (fake llama.cpp), the CLI's bad inputs and the priming ablation script on the simulated
world. Serving a tuned model: test_distill_serving.py."""

from __future__ import annotations

import json
from pathlib import Path

import dspy
import numpy as np
import pytest
from conftest import load_example
from dspy.clients.utils_finetune import TrainDataFormat, validate_data_format

from cd_dspy.cli import main as cli
from cd_dspy.core.priming import PRIMING_STRATEGIES
from cd_dspy.core.result import Rule
from cd_dspy.distill import (
    AlignmentError,
    DistillDataError,
    LlamaScorer,
    generate_distillation_data,
    meta_path,
    read_jsonl,
    validate_jsonl,
    with_student_view,
    write_jsonl,
)
from cd_dspy.lms import llama_engine
from cd_dspy.phases.integrate import with_rules
from cd_dspy.programs.pipelines import PlanThenSolve
from cd_dspy.testing.simulated import HELPFUL_RULES, answer_match, simulated_splits
from cd_dspy.testing.solving_teacher import solving_teacher_lm


def generate(priming="gold", program=None, **kwargs):
    train = simulated_splits(8, seed=1)[0]
    program = program or dspy.ChainOfThought("question -> answer: float")
    with dspy.context(adapter=dspy.JSONAdapter()):
        return generate_distillation_data(program, train, teacher_lm=solving_teacher_lm(), metric=answer_match,
                                          priming=priming, **kwargs)


# ---------------------------------------------------------------- generation and export

def test_rejected_traces_are_dropped_and_gold_priming_recovers_them(tmp_path):
    plain, gold = generate("none"), generate("gold")
    # the solving teacher gets unit conversions wrong (2 of 8 problems) unless shown the gold answer
    assert (plain.accepted, plain.rejected, len(plain.records)) == (6, 2, 6)
    assert (gold.accepted, gold.rejected, len(gold.records)) == (8, 0, 8)
    assert {r.example_index for r in plain.records} < {r.example_index for r in gold.records}
    assert all(r.score == 1.0 for r in plain.records)


def test_jsonl_is_dspys_chat_format_and_validates_line_by_line(tmp_path):
    data = generate("gold")
    path = write_jsonl(data.records, tmp_path / "train.jsonl")
    report = validate_jsonl(path)
    assert report.records == 8 and report.with_logprobs == 0
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    validate_data_format(lines, TrainDataFormat.CHAT)  # DSPy's own check of fine-tuning data
    for line in lines:
        assert [m["role"] for m in line["messages"]] == ["system", "user", "assistant"]
        assert json.loads(line["messages"][-1]["content"])["answer"] is not None
    # the student's view never holds the priming; the teacher's view (sidecar) does, with the gold
    metas = [json.loads(line) for line in meta_path(path).read_text().splitlines()]
    assert [m["line"] for m in metas] == list(range(8))
    for line, meta in zip(lines, metas, strict=True):
        assert "correct answer" not in line["messages"][0]["content"]
        assert "You are given the correct answer: " in meta["teacher_messages"][0]["content"]
    again = read_jsonl(path)
    assert [r.messages for r in again] == [r.messages for r in data.records]
    assert again[0].inputs == data.records[0].inputs


def test_rules_reach_the_system_prompt_and_restyling_keeps_the_replies(tmp_path):
    program = dspy.ChainOfThought("question -> answer: float")
    ruled = with_rules(program, [Rule(id="R1", text=HELPFUL_RULES["units"], predictor="predict")])
    data = generate("ground_truth", program=program, student_program=ruled)
    assert data.records and all(HELPFUL_RULES["units"] in r.messages[0]["content"] for r in data.records)
    plain = generate("ground_truth", program=program)
    plain.records[0].teacher_logprobs = {"tokens": [1]}
    with dspy.context(adapter=dspy.JSONAdapter()):
        restyled = with_student_view(plain.records, ruled)
    assert [r.messages for r in restyled] == [r.messages for r in data.records]
    assert restyled[0].teacher_logprobs == {"tokens": [1]}  # the same reply: its tokens still hold
    chat = with_student_view(plain.records, ruled, adapter=dspy.ChatAdapter())
    assert "[[ ## answer ## ]]" in chat[0].messages[-1]["content"] and chat[0].teacher_logprobs is None
    assert all(HELPFUL_RULES["units"] not in r.messages[0]["content"] for r in plain.records)
    with pytest.raises(ValueError, match="compiled version of the same program"):
        generate("gold", program=program, student_program=dspy.Predict("question, plan -> answer"))


def test_every_predictor_of_a_pipeline_gets_records():
    data = generate("gold", program=PlanThenSolve())
    assert data.per_predictor == {"plan": 8, "solve": 8}
    first = [r for r in data.records if r.example_index == 0]
    assert [r.predictor for r in first] == ["plan", "solve"]
    assert "plan" in json.loads(first[0].messages[-1]["content"])


def test_bad_inputs_to_generation():
    with pytest.raises(ValueError, match="trainset is empty"):
        generate_distillation_data(dspy.Predict("q -> a"), [], teacher_lm=solving_teacher_lm(), metric=answer_match)
    with pytest.raises(ValueError, match="teacher_lm is required"):
        generate_distillation_data(dspy.Predict("q -> a"), [dspy.Example(q="x", a="y").with_inputs("q")],
                                   teacher_lm=None, metric=answer_match)
    with pytest.raises(ValueError, match="unknown priming strategy"):
        generate("goldd")
    with pytest.raises(ValueError, match="no records to write"):
        write_jsonl([], "unused.jsonl")


# ---------------------------------------------------------------- the validator

def _corrupt(tmp_path, edit) -> Path:
    path = write_jsonl(generate("gold").records[:3], tmp_path / "d.jsonl")
    lines = path.read_text().splitlines()
    metas = meta_path(path).read_text().splitlines()
    edit(lines, metas)
    path.write_text("\n".join(lines) + "\n")
    meta_path(path).write_text("\n".join(metas) + "\n")
    return path


def _message(line: str, **change) -> str:
    record = json.loads(line)
    record["messages"][-1].update(change)
    return json.dumps(record)


@pytest.mark.parametrize("edit, line, problem", [
    (lambda c, m: c.__setitem__(1, "{not json"), 2, "not valid JSON"),
    (lambda c, m: c.__setitem__(0, json.dumps({"messages": [], "extra": 1})), 1, "exactly one key"),
    (lambda c, m: c.__setitem__(2, _message(c[2], role="bot")), 3, "role 'bot'"),
    (lambda c, m: c.__setitem__(1, _message(c[1], content="  ")), 2, "empty or non-string content"),
    (lambda c, m: c.__setitem__(0, json.dumps({"messages": json.loads(c[0])["messages"][:2]})), 1,
     "last message must be the assistant"),
])
def test_malformed_chat_lines_are_named_by_line(tmp_path, edit, line, problem):
    path = _corrupt(tmp_path, edit)
    with pytest.raises(DistillDataError) as err:
        validate_jsonl(path)
    assert f"{path}:{line}: " in str(err.value) and problem in str(err.value)


def _logprobs(meta_line: str, **lp) -> str:
    meta = json.loads(meta_line)
    meta["teacher_logprobs"] = {"tokens": [5, 6], "top_ids": [[5, 1], [6, 2]], "top_logprobs": [[-0.1, -2.5],
                                                                                                  [-0.2, -1.9]], **lp}
    return json.dumps(meta)


@pytest.mark.parametrize("edit, problem", [
    (lambda c, m: m.__setitem__(1, _logprobs(m[1], top_ids=[[5, 1]])), "not aligned: 2 tokens, 1 top_ids rows"),
    (lambda c, m: m.__setitem__(1, _logprobs(m[1], top_logprobs=[[-0.1, 0.5], [-0.2, -1.9]])), "<= 0"),
    (lambda c, m: m.__setitem__(1, _logprobs(m[1], top_ids=[[5, 5], [6, 2]])), "k distinct token ids"),
    (lambda c, m: m.__setitem__(1, _logprobs(m[1], top_ids=[[5, 1], [6]])), "must both hold k = 2"),
    (lambda c, m: m.__setitem__(1, json.dumps({**json.loads(m[1]), "line": 7})), "'line' must be 1"),
    (lambda c, m: m.pop(), "2 lines for 3 records"),
])
def test_malformed_sidecar_lines_are_named_by_line(tmp_path, edit, problem):
    path = _corrupt(tmp_path, edit)
    with pytest.raises(DistillDataError, match="problem") as err:
        validate_jsonl(path)
    assert problem in str(err.value)


def test_valid_logprobs_pass_and_kd_requires_them(tmp_path):
    path = _corrupt(tmp_path, lambda c, m: m.__setitem__(1, _logprobs(m[1])))
    assert validate_jsonl(path).with_logprobs == 1
    with pytest.raises(DistillDataError, match=r"d\.meta\.jsonl:1: no teacher_logprobs; KD needs them"):
        validate_jsonl(path, require_logprobs=True)
    with pytest.raises(DistillDataError, match="no such file"):
        validate_jsonl(tmp_path / "missing.jsonl")


# ---------------------------------------------------------------- teacher log-probabilities (fake llama.cpp)

TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
            "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
SPECIAL = {"<|im_start|>": 1, "<|im_end|>": 2}


class ScoringLlama:
    """A llama.cpp stand-in whose logits at position i put a margin of 4 on the token at i + 1."""

    def __init__(self, model_path, n_ctx, **kwargs):
        self.n_ctx, self.kwargs, self.metadata = n_ctx, kwargs, {"tokenizer.chat_template": TEMPLATE}
        self.tokens: list[int] = []

    def tokenize(self, text: bytes, add_bos: bool = True, special: bool = False) -> list[int]:
        out, text = [], text.decode()
        while text:
            mark = next((m for m in SPECIAL if text.startswith(m)), None)
            out.append(SPECIAL[mark] if mark else ord(text[0]) % 250 + 3)
            text = text[len(mark):] if mark else text[1:]
        return out

    def detokenize(self, tokens, special=False):
        return b"<|im_end|>" if tokens == [2] else b""

    def token_bos(self):
        return 0

    def token_eos(self):
        return 2

    def reset(self):
        self.tokens = []

    def eval(self, tokens):
        self.tokens = list(tokens)

    @property
    def scores(self):
        rows = np.zeros((self.n_ctx, 260), dtype=np.float32)
        for i, token in enumerate(self.tokens[1:]):
            rows[i, token] = 4.0
        return rows


def test_teacher_logprobs_are_aligned_with_the_replys_tokens(monkeypatch, tmp_path):
    monkeypatch.setattr(llama_engine, "_LLAMA_FACTORY", ScoringLlama)
    gguf = tmp_path / "teacher.gguf"
    gguf.write_bytes(b"GGUF")
    scorer = LlamaScorer(gguf, top_k=3, n_ctx=256)
    prompt = [{"role": "system", "content": "Be exact."}, {"role": "user", "content": "2+2?"}]
    scored = scorer.score(prompt, '{"answer": 4}')
    assert scored.tokens == scorer.llama.tokenize(b'{"answer": 4}<|im_end|>')
    assert scored.prompt_tokens == len(scorer.llama.tokenize(
        b"<|im_start|>system\nBe exact.<|im_end|>\n<|im_start|>user\n2+2?<|im_end|>\n<|im_start|>assistant\n"))
    # the row predicting reply token j is the prompt length + j - 1: its top id is that very token
    assert [row[0] for row in scored.top_ids] == scored.tokens
    assert all(len(row) == 3 and row[0] > row[1] >= row[2] for row in scored.top_logprobs)
    assert scored.token_logprobs == [row[0] for row in scored.top_logprobs]
    assert np.isclose(np.exp(scored.top_logprobs[0][0]), np.exp(4) / (np.exp(4) + 259))
    with pytest.raises(AlignmentError, match="raise n_ctx"):
        LlamaScorer(gguf, top_k=3, n_ctx=20).score(prompt, "a long reply that does not fit")
    with pytest.raises(ValueError, match="top_k must be a positive int"):
        LlamaScorer(gguf, top_k=0)
    with pytest.raises(FileNotFoundError, match="KD needs a local GGUF teacher"):
        LlamaScorer(tmp_path / "absent.gguf")


# ---------------------------------------------------------------- the CLI's bad inputs

@pytest.mark.parametrize("extra, message", [
    (["--kd-grid", "0.5:1"], "--kd-grid needs --mode kd"),
    (["--mode", "kd", "--kd-grid", "0.5"], "bad KD grid item '0.5'"),
    (["--mode", "kd", "--kd-grid", "1.5:2"], "alpha lies in [0, 1]"),
    (["--priming", "Teacher"], "unknown priming strategy 'Teacher'"),
    (["--rules", "no/such/program.json"], "--rules no/such/program.json: no such file"),
    (["--train", "0"], "--train is 0"),
    (["--mode", "kd"], "pass --kd-teacher PATH"),
    (["--mode", "kd", "--kd-teacher", "missing.gguf"], "'missing.gguf' is neither a catalog model"),
    (["--target", "nowhere.gguf", "--lr", "0"], "lr must be > 0"),
])
def test_distill_cli_bad_inputs_are_one_line_errors(capsys, extra, message):
    code = cli.main(["distill", "--task", "simulated", "--teacher", "simulated-solver", "--train", "4", "--val", "0",
                     "--test", "0", *extra])
    assert code == 2
    assert message in capsys.readouterr().err


# ---------------------------------------------------------------- the priming ablation script

def test_priming_ablation_script_on_the_simulated_world(tmp_path):
    module = load_example("priming_ablation")
    report = module.main(["--task", "simulated", "--train", "12", "--val", "24", "--test", "8", "--trials", "4",
                          "--strategies", "none,gold", "--out", str(tmp_path / "abl")])
    assert set(report["strategies"]) == {"none", "gold"}
    for row in report["strategies"].values():
        assert row["rules_proposed"] >= row["rules_verified"] >= row["rules_selected"] > 0
        assert row["held_out"]["vs_baseline"]["difference"] > 0
    saved = json.loads((tmp_path / "abl" / "priming_ablation.json").read_text())
    assert saved["strategies"]["gold"]["rules_selected"] == report["strategies"]["gold"]["rules_selected"]
    table = (tmp_path / "abl" / "priming_ablation.md").read_text()
    assert "| gold |" in table and "| none |" in table
    assert len(PRIMING_STRATEGIES) == 5


def test_priming_ablation_table_says_unchanged_when_no_rule_was_kept():
    module = load_example("priming_ablation")
    held = {"score": 45.8, "ci": [27.9, 64.9], "vs_baseline": {"difference": 0.0, "ci": [0.0, 0.0], "fixed": 0,
                                                               "broken": 0, "p_two_sided": 1.0}}
    row = {"rules_proposed": 2, "rules_verified": 0, "rules_selected": 0, "selected": [], "confirmation": [None, None],
           "teacher_calls": 8, "seconds": 10.0, "held_out": held}
    report = {"task": "math-basic", "command": "c", "splits": {}, "target": "t", "teacher": "T",
              "baseline": {"score": 45.8, "ci": [27.9, 64.9]}, "strategies": {"none": row}}
    table = module.render(report)
    assert "| none | 2 | 0 | 0 | not run | = baseline (no rule kept: program unchanged) |" in table
    assert "+0.0 [+0.0, +0.0]" not in table


def test_distill_compare_takes_the_rules_of_a_finished_compile_on_the_same_split(tmp_path):
    from cd_dspy.core.result import ConceptDistillationResult

    module = load_example("distill_compare")
    rules = [Rule(id="R1", text=HELPFUL_RULES["units"], predictor="predict"),
             Rule(id="R2", text=HELPFUL_RULES["vans"], predictor="predict")]
    result = ConceptDistillationResult(n_train=8, n_val=12, rules=rules, candidates=[{"rule_ids": ["R2"]}],
                                       settings={"conditional_rules": False})
    (tmp_path / "result.json").write_text(json.dumps(result.to_dict()))
    from bench_lib import load_task

    task = load_task("simulated", 0, {"train": 8, "val": 12, "test": 4})
    args = module.arguments(["--task", "simulated", "--train", "8", "--val", "12", "--test", "4",
                             "--rules-run-dir", str(tmp_path), "--out", str(tmp_path / "out")])
    notes: list[str] = []
    ruled = module.rules_program(args, task, "unused", None, notes)
    assert module.holds_rules(task.make_program(), ruled)
    assert HELPFUL_RULES["vans"] in ruled.predict.signature.instructions
    assert HELPFUL_RULES["units"] not in ruled.predict.signature.instructions
    assert "not confirmed" in notes[0]
    args.val = 16
    with pytest.raises(SystemExit, match="pass --train 8 --val 12"):
        module.rules_program(args, task, "unused", None, [])
    args.val = 12  # a compile that kept no rule and ran no search: no rules, no note listing none
    empty = ConceptDistillationResult(n_train=8, n_val=12, rules=rules, candidates=[], settings={})
    (tmp_path / "result.json").write_text(json.dumps(empty.to_dict()))
    notes = []
    unruled = module.rules_program(args, task, "unused", None, notes)
    assert not module.holds_rules(task.make_program(), unruled) and notes == []


def test_distill_compare_sft_priming_names_known_strategies_other_than_the_main_one(capsys):
    module = load_example("distill_compare")
    base = ["--task", "simulated", "--train", "8", "--val", "4", "--test", "4", "--out", "x", "--priming",
            "ground_truth"]
    assert module.arguments(base + ["--sft-priming", " none, gold "]).sft_priming == ["none", "gold"]
    for bad in ("confidense", "ground_truth"):  # a typo; the main strategy, whose row 'sft' already gives
        with pytest.raises(SystemExit):
            module.arguments(base + ["--sft-priming", f"none,{bad}"])
        assert f"--sft-priming ['{bad}']" in capsys.readouterr().err
    estimate = module.estimate(module.arguments(base + ["--methods", "sft", "--sft-priming", "none,gold",
                                                        "--estimate"]))
    single = module.estimate(module.arguments(base + ["--methods", "sft", "--estimate"]))
    assert estimate["teacher demonstrations"] == 3 * single["teacher demonstrations"]
    assert estimate["held-out scoring"] == 2 * single["held-out scoring"]  # none + sft -> none + 3 SFT rows


def test_distill_compare_pairs_each_sft_variant_against_the_main_sft_row():
    from cd_dspy.distill import pipeline as pl

    module = load_example("distill_compare")
    sft = [1.0] * 6 + [0.0] * 4
    rows = {"none": pl.held_out_row([0.0] * 10), "sft": pl.held_out_row(sft),
            "rules+sft": pl.held_out_row([1.0] * 9 + [0.0]), "sft:none": pl.held_out_row([0.0] + sft[1:])}
    compared = dict(module.sft_comparisons(rows))
    assert list(compared) == ["rules+sft", "sft:none"]
    assert (compared["rules+sft"]["wins"], compared["rules+sft"]["losses"]) == (3, 0)
    assert (compared["sft:none"]["wins"], compared["sft:none"]["losses"]) == (0, 1)
    assert module.sft_comparisons({"none": rows["none"], "rules+sft": rows["rules+sft"]}) == []
    report = {"task": "math-basic", "command": "c", "target": "t", "teacher": "T", "priming": "ground_truth",
              "splits": {"test": 10}, "rows": rows, "data_by_priming": {"none": {}},
              "data": {"records": 9, "accepted": 9, "examples": 10, "rejected": 1, "failed": 0, "seconds": 1.0}}
    report["data_by_priming"]["none"] = dict(report["data"])
    table = module.render(report)
    assert "Paired against target + SFT (ground_truth-primed teacher)" in table
    assert "target + SFT (unprimed teacher) -10.0" in table and "target + CD rules + SFT +30.0" in table
