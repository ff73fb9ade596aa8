"""Distillation data: a primed teacher runs the program on training examples, and every predictor call of the
traces the metric accepts becomes one chat record, in the format DSPy's BootstrapFinetune writes.

A record has two views of the same call. The *student's view* (`messages`, exported) is what the target will
see when it serves the program: the predictor's own instructions (with the CD rules when a compiled program
is given as `student_program`), the user message, and the teacher's reply as the assistant message. The
*teacher's view* (`teacher_messages`, kept in the sidecar file) holds the primed instructions the teacher
answered under; white-box KD scores the teacher's reply there (`cd_dspy.distill.logprobs`).

Files: `train.jsonl` holds one `{"messages": [system, user, assistant]}` per line (exactly what DSPy's
`validate_data_format(..., "chat")` accepts, so any chat fine-tuning service takes it); `train.meta.jsonl`
holds, line for line, the example index, predictor, score, teacher's view and (for KD) the teacher's top-k
log-probabilities.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import dspy
from dspy.utils.parallelizer import ParallelExecutor

from cd_dspy.core.evaluation import ScoredMetric
from cd_dspy.core.priming import Priming, priming_name
from cd_dspy.core.run_dir import jsonable
from cd_dspy.phases.integrate import RulePredict, render_instructions
from cd_dspy.phases.solve import teacher_trace

logger = logging.getLogger(__name__)

ROLES = ("system", "user", "assistant")


@dataclass
class DistillRecord:
    """One predictor call of an accepted trace, in the student's and the teacher's view."""

    messages: list[dict[str, str]]  # system, user (student's view) and the teacher's reply as assistant
    teacher_messages: list[dict[str, str]]  # system, user as the (primed) teacher saw them
    example_index: int
    predictor: str
    score: float
    inputs: dict[str, Any] = field(default_factory=dict)  # the predictor call's inputs and outputs
    outputs: dict[str, Any] = field(default_factory=dict)
    teacher_logprobs: dict[str, Any] | None = None  # cd_dspy.distill.logprobs.TokenLogprobs.to_dict()

    def meta(self, line: int) -> dict[str, Any]:
        """The sidecar line for this record (`line` is its 0-based line in the JSONL)."""
        out = {"line": line, "example_index": self.example_index, "predictor": self.predictor, "score": self.score,
               "inputs": jsonable(self.inputs), "outputs": jsonable(self.outputs),
               "teacher_messages": self.teacher_messages}
        if self.teacher_logprobs is not None:
            out["teacher_logprobs"] = self.teacher_logprobs
        return out


@dataclass
class DistillData:
    """The records and what happened to each training example."""

    records: list[DistillRecord]
    priming: str
    examples: int
    accepted: int  # examples whose teacher trace the metric accepted
    rejected: int  # examples the metric rejected (dropped)
    failed: int  # examples the teacher could not answer (errors, unparseable replies; dropped)
    per_predictor: dict[str, int] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        return {"priming": self.priming, "examples": self.examples, "accepted": self.accepted,
                "rejected": self.rejected, "failed": self.failed, "records": len(self.records),
                "per_predictor": dict(self.per_predictor)}


def chat_messages(adapter: Any, signature: type[dspy.Signature], demos: Sequence[Any], inputs: dict[str, Any],
                  outputs: dict[str, Any] | None = None) -> list[dict[str, str]]:
    """The adapter's system and user messages for `inputs` and, given `outputs`, the assistant's reply.

    This is DSPy's `ChatAdapter.format_finetune_data` (which `JSONAdapter` leaves unimplemented) for any
    adapter: `adapter.format(...)` plus `adapter.format_assistant_message_content(...)`."""
    messages = [{"role": m["role"], "content": m["content"]} for m in adapter.format(signature, list(demos), inputs)]
    if outputs is not None:
        messages.append({"role": "assistant", "content": adapter.format_assistant_message_content(signature, outputs)})
    return messages


def student_signature(predictor: dspy.Predict, inputs: dict[str, Any]) -> type[dspy.Signature]:
    """The signature the predictor shows for `inputs`: a `RulePredict` adds only the rules that apply."""
    if isinstance(predictor, RulePredict) and predictor.conditional_rules:
        rules = predictor.active_rules(inputs)
        return predictor.signature.with_instructions(render_instructions(predictor.signature.instructions, rules))
    return predictor.signature


def _check_structure(program: dspy.Module, student: dspy.Module) -> None:
    ours = [name for name, _ in program.named_predictors()]
    theirs = [name for name, _ in student.named_predictors()]
    if ours != theirs:
        raise ValueError(f"student_program has the predictors {theirs}, the program {ours}: pass the compiled "
                         "version of the same program (e.g. CD's run_dir/program.json loaded into it).")


def generate_distillation_data(program: dspy.Module, trainset: Sequence[dspy.Example], *, teacher_lm: Any,
                               metric: Any, priming: Priming = "ground_truth",
                               student_program: dspy.Module | None = None, adapter: Any = None,
                               threshold: float = 1.0, num_threads: int = 1,
                               exclude_demos: bool = False) -> DistillData:
    """Run the primed teacher on every training example and keep the calls of the traces `metric` accepts.

    program: the DSPy program to distil (every predictor gets records).
    teacher_lm: the LM that writes the demonstrations, under `priming` (`cd_dspy.core.priming`).
    metric: `metric(example, prediction, trace)`; a trace is kept when its score is >= `threshold`.
    student_program: the program whose instructions the student is trained with, e.g. CD's compiled
        program (its rules then sit in the system prompt); default `program`.
    adapter: the DSPy adapter the student will be served with (default: DSPy's, else ChatAdapter).
    """
    if not isinstance(program, dspy.Module):
        raise TypeError(f"program must be a dspy.Module, got {type(program).__name__}.")
    if not trainset:
        raise ValueError("trainset is empty: distillation needs training examples with labels.")
    if teacher_lm is None:
        raise ValueError("teacher_lm is required: the LM that writes the demonstrations.")
    student = student_program if student_program is not None else program
    _check_structure(program, student)
    adapter = adapter or dspy.settings.adapter or dspy.ChatAdapter()
    scored = ScoredMetric(metric)
    name = priming_name(priming)
    errors: list[str] = []

    def run(pair: tuple[int, dspy.Example]) -> tuple[int, float | None, list[DistillRecord]]:
        index, example = pair
        try:
            prediction, trace, calls = teacher_trace(program, example, teacher_lm=teacher_lm, priming=priming,
                                                     adapter=adapter)
        except Exception as exc:  # an unparseable or failed teacher reply: the example gives no record
            logger.warning("Distill: the teacher failed on training example %d (%s: %s).", index,
                           type(exc).__name__, exc)
            errors.append(f"{type(exc).__name__}: {exc}")
            return index, None, []
        score = scored(example, prediction, trace)
        if score < threshold:
            return index, score, []
        students = dict(student.named_predictors())
        records = []
        for pred_name, predictor, inputs, out in calls:
            mine = students[pred_name]
            demos = [] if exclude_demos else mine.demos
            records.append(DistillRecord(
                messages=chat_messages(adapter, student_signature(mine, inputs), demos, inputs, out),
                teacher_messages=chat_messages(adapter, predictor.signature, demos, inputs),
                example_index=index, predictor=pred_name, score=score, inputs=dict(inputs), outputs=out))
        return index, score, records

    executor = ParallelExecutor(num_threads=num_threads, disable_progress_bar=True, max_errors=len(trainset) + 1)
    results = executor.execute(run, list(enumerate(trainset)))
    scored.raise_if_failed()
    records = [r for _, _, recs in sorted(results, key=lambda x: x[0]) for r in recs]
    failed = sum(score is None for _, score, _ in results)
    if failed == len(trainset):
        raise RuntimeError(f"the teacher failed on all {failed} training examples; the last error: {errors[-1]}")
    accepted = sum(score is not None and score >= threshold for _, score, _ in results)
    data = DistillData(records, name, len(trainset), accepted, len(trainset) - accepted - failed, failed,
                       dict(Counter(r.predictor for r in records)))
    logger.info("Distill: %s", data.summary())
    return data


def with_student_view(records: Sequence[DistillRecord], student_program: dspy.Module, adapter: Any = None,
                      exclude_demos: bool = False) -> list[DistillRecord]:
    """The same teacher calls shown under `student_program`'s instructions, e.g. with CD's rules in the system
    prompt; no LM call. The records are formatted anew with `adapter` (default DSPy's); a record whose reply
    text changes with it loses its teacher log-probabilities (they belong to the old reply's tokens)."""
    adapter = adapter or dspy.settings.adapter or dspy.ChatAdapter()
    predictors = dict(student_program.named_predictors())
    out = []
    for record in records:
        if record.predictor not in predictors:
            raise ValueError(f"student_program has no predictor {record.predictor!r}; pass the compiled version of "
                             "the program the records came from.")
        mine = predictors[record.predictor]
        messages = chat_messages(adapter, student_signature(mine, record.inputs), [] if exclude_demos else mine.demos,
                                 record.inputs, record.outputs)
        same = messages[-1]["content"] == record.messages[-1]["content"]
        out.append(replace(record, messages=messages, teacher_logprobs=record.teacher_logprobs if same else None))
    return out


def meta_path(path: str | Path) -> Path:
    """The sidecar of a JSONL file: `train.jsonl` -> `train.meta.jsonl`."""
    path = Path(path)
    return path.with_name(path.name.removesuffix(".jsonl") + ".meta.jsonl")


def write_jsonl(records: Sequence[DistillRecord], path: str | Path) -> Path:
    """Write the records as chat JSONL (`path`) and their sidecar (`meta_path(path)`); return `path`."""
    if not records:
        raise ValueError("no records to write: the teacher's traces were all rejected or failed. Check the metric, "
                         "the teacher and the priming (see DistillData.summary()).")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as chat, open(meta_path(path), "w", encoding="utf-8") as side:
        for line, record in enumerate(records):
            chat.write(json.dumps({"messages": record.messages}, ensure_ascii=False) + "\n")
            side.write(json.dumps(record.meta(line), ensure_ascii=False) + "\n")
    return path


def read_jsonl(path: str | Path) -> list[DistillRecord]:
    """Read records written by `write_jsonl` (validate them first with `validate_jsonl`)."""
    path = Path(path)
    chats = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    side = meta_path(path)
    metas = [json.loads(line) for line in side.read_text(encoding="utf-8").splitlines() if line.strip()] \
        if side.exists() else [{} for _ in chats]
    return [DistillRecord(messages=c["messages"], teacher_messages=m.get("teacher_messages") or c["messages"][:-1],
                          example_index=m.get("example_index", -1), predictor=m.get("predictor", ""),
                          score=m.get("score", 1.0), inputs=m.get("inputs", {}), outputs=m.get("outputs", {}),
                          teacher_logprobs=m.get("teacher_logprobs"))
            for c, m in zip(chats, metas, strict=True)]
