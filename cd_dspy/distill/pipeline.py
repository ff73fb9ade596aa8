"""The whole path, shared by `cd-dspy distill` and examples/distill_compare.py: primed demonstrations (with the
teacher's log-probabilities for KD), LoRA training with the KD settings chosen on validation data (never on
the test split), conversion to a llama.cpp LoRA, serving through the project's engine, held-out scores."""

from __future__ import annotations

import logging
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import dspy

from cd_dspy.core.stats import comparison_cell, holm_adjusted, paired_difference, score_interval
from cd_dspy.distill.convert import convert_lora
from cd_dspy.distill.data import DistillRecord, generate_distillation_data, write_jsonl
from cd_dspy.distill.logprobs import LlamaScorer, add_teacher_logprobs
from cd_dspy.distill.train import LoraTrainer, TrainReport, TrainSettings, encode_records
from cd_dspy.distill.validate import validate_jsonl

logger = logging.getLogger(__name__)

SELECT_ON = ("metric", "loss")


def build_records(program: dspy.Module, examples: Sequence[dspy.Example], *, teacher_lm: Any, metric: Callable,
                  priming: Any, student_program: dspy.Module | None = None, adapter: Any = None,
                  threshold: float = 1.0, num_threads: int = 1,
                  scorer: LlamaScorer | None = None) -> tuple[list[DistillRecord], dict[str, Any]]:
    """Demonstrations of the primed teacher on `examples` (and, given a `scorer`, its top-k log-probabilities);
    returns the records and a summary with the time taken."""
    started = time.perf_counter()
    data = generate_distillation_data(program, examples, teacher_lm=teacher_lm, metric=metric, priming=priming,
                                      student_program=student_program, adapter=adapter, threshold=threshold,
                                      num_threads=num_threads)
    summary = data.summary()
    if scorer is not None and data.records:
        scored_at = time.perf_counter()
        summary["kd"] = add_teacher_logprobs(data.records, scorer)
        summary["kd"]["seconds"] = round(time.perf_counter() - scored_at, 1)
    summary["seconds"] = round(time.perf_counter() - started, 1)
    return data.records, summary


def teacher_records(program: dspy.Module, examples: Sequence[dspy.Example], *, kd_gguf: str | Path | None = None,
                    kd_top_k: int = 20, kd_n_ctx: int = 2048,
                    **settings: Any) -> tuple[list[DistillRecord], dict[str, Any]]:
    """`build_records`; given `kd_gguf` (the teacher as a local GGUF), with its top-k log-probabilities for KD
    (the scoring model is closed afterwards)."""
    if kd_gguf is None:
        return build_records(program, examples, **settings)
    scorer = LlamaScorer(kd_gguf, top_k=kd_top_k, n_ctx=kd_n_ctx)
    try:
        return build_records(program, examples, scorer=scorer, **settings)
    finally:
        scorer.close()


def save_records(records: Sequence[DistillRecord], path: str | Path) -> dict[str, Any]:
    """Write the records (chat JSONL + sidecar), validate every line, and describe the file."""
    path = write_jsonl(records, path)
    report = validate_jsonl(path)
    return {"path": str(path), "records": report.records, "with_teacher_logprobs": report.with_logprobs}


def serve(target: str, adapter_gguf: str | Path | None = None, **settings: Any) -> dspy.LM:
    """The target as a `dspy.LM` on the project's llama.cpp engine, with the tuned LoRA adapter when given."""
    from cd_dspy.lms import local_lm

    if adapter_gguf is not None:
        settings["lora_path"] = str(adapter_gguf)
    return local_lm(target, role="target", **settings)


def train_adapter(trainer: LoraTrainer, records: Sequence[DistillRecord], settings: TrainSettings,
                  directory: str | Path) -> tuple[TrainReport, Path]:
    """Train from the adapter's initial weights, save it to `directory/adapter`, convert it to
    `directory/adapter.gguf` (llama.cpp); the report's `extra` holds the conversion time."""
    directory = Path(directory)
    report = trainer.train(records, settings, adapter_dir=directory / "adapter")
    started = time.perf_counter()
    gguf = convert_lora(directory / "adapter", directory / "adapter.gguf")
    report.extra["convert_seconds"] = round(time.perf_counter() - started, 1)
    return report, gguf


def scores_on(program: dspy.Module, lm: Any, examples: Sequence[dspy.Example], metric: Callable) -> list[float]:
    """The metric's per-example scores of a copy of `program` running on `lm` (a failure scores 0)."""
    from cd_dspy.core.scoring import per_example_scores

    program = program.deepcopy()
    program.set_lm(lm)
    return per_example_scores(program, list(examples), metric, 1)


def val_loss_scorer(trainer: LoraTrainer, val_records: Sequence[DistillRecord],
                    max_length: int = 2048) -> Callable[[TrainReport, Path], float]:
    """Score a trained candidate by minus its cross-entropy on the validation records' teacher replies
    (a proxy: it is blind to the task metric and favours small alpha)."""
    encoded, _ = encode_records(val_records, trainer.tokenizer, mode="sft", max_length=max_length)
    if not encoded:
        raise ValueError("no validation record to score the KD settings on; give a larger --val or use "
                         "--select-on metric.")
    return lambda report, gguf: -trainer.loss(encoded, TrainSettings(mode="sft"))


def val_metric_scorer(program: dspy.Module, target: str, val_examples: Sequence[dspy.Example], metric: Callable,
                      **lm_settings: Any) -> Callable[[TrainReport, Path], float]:
    """Score a trained candidate by the task metric of the tuned target on the validation examples."""
    if not val_examples:
        raise ValueError("no validation examples to choose the KD settings on; give --val > 0.")
    return lambda report, gguf: statistics.fmean(scores_on(program, serve(target, gguf, **lm_settings),
                                                           val_examples, metric))


def choose_kd(trainer: LoraTrainer, records: Sequence[DistillRecord], settings: TrainSettings,
              grid: Sequence[tuple[float, float]], directory: str | Path,
              score: Callable[[TrainReport, Path], float]) -> tuple[TrainReport, Path, list[dict[str, Any]]]:
    """Train one KD adapter per (alpha, temperature) of `grid` and keep the best by `score` on validation
    data (higher is better; the first in grid order on ties). Returns its report, its GGUF and the table."""
    if not grid:
        raise ValueError("the KD grid is empty; give at least one alpha:temperature pair.")
    table, best = [], None
    for number, (alpha, temperature) in enumerate(grid):
        candidate = replace(settings, mode="kd", kd_alpha=alpha, kd_temperature=temperature)
        report, gguf = train_adapter(trainer, records, candidate, Path(directory) / f"kd-{number}")
        value = float(score(report, gguf))
        table.append({"alpha": alpha, "temperature": temperature, "validation": value,
                      "train_seconds": report.seconds, "loss_after": report.loss_after})
        logger.info("Distill: KD alpha %.2f T %.2f -> validation %.4f", alpha, temperature, value)
        if best is None or value > best[0]:
            best = (value, report, gguf)
    _, report, gguf = best
    report.extra["kd_grid"] = table
    return report, gguf, table


def parse_grid(text: str) -> list[tuple[float, float]]:
    """'0.5:1,0.5:2,0.9:2' -> [(0.5, 1.0), (0.5, 2.0), (0.9, 2.0)] (alpha:temperature pairs)."""
    pairs = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        alpha, _, temperature = item.partition(":")
        try:
            pairs.append((float(alpha), float(temperature)))
        except ValueError:
            raise ValueError(f"bad KD grid item {item!r}: write alpha:temperature pairs, e.g. '0.5:1,0.9:2'.") \
                from None
        if not 0 <= pairs[-1][0] <= 1 or pairs[-1][1] <= 0:
            raise ValueError(f"bad KD grid item {item!r}: alpha lies in [0, 1] and the temperature is > 0.")
    if not pairs:
        raise ValueError(f"empty KD grid {text!r}: write alpha:temperature pairs, e.g. '0.5:1,0.9:2'.")
    return pairs


def held_out_rows(variants: Sequence[tuple[str, dspy.Module, Path | None, TrainReport | None]], target: str,
                  examples: Sequence[dspy.Example], metric: Callable, **lm_settings: Any) -> dict[str, dict[str, Any]]:
    """Score each (name, program, adapter GGUF or None, its training report or None) served on `target`, in
    order: rows of `held_out_row`, each later one compared with the first (the baseline)."""
    rows: dict[str, dict[str, Any]] = {}
    baseline = None
    for name, program, adapter, report in variants:
        started = time.perf_counter()
        scores = scores_on(program, serve(target, adapter, **lm_settings), examples, metric)
        rows[name] = held_out_row(scores, baseline, eval_seconds=round(time.perf_counter() - started, 1),
                                  train=report.to_dict() if report is not None else None)
        baseline = baseline or scores
    add_holm(rows)
    return rows


def add_holm(rows: dict[str, dict[str, Any]]) -> None:
    """Give each row's comparison with the baseline its Holm-adjusted p when there are several comparisons."""
    compared = [row["vs_baseline"] for row in rows.values() if row.get("vs_baseline")]
    if len(compared) > 1:
        for vs, p in zip(compared, holm_adjusted([vs["p_two_sided"] for vs in compared]), strict=True):
            vs["p_holm"] = p


def held_out_row(scores: Sequence[float], baseline: Sequence[float] | None = None, **extra: Any) -> dict[str, Any]:
    """A row of a comparison: the mean score (0-100) with its 95% interval and, given the baseline's scores on
    the same examples, the paired difference, its interval and the sign test."""
    low, high = score_interval(scores)
    row: dict[str, Any] = {"score": 100 * statistics.fmean(scores) if scores else float("nan"), "low": low,
                           "high": high, "n": len(scores), "scores": list(scores), **extra}
    if baseline is not None:
        row["vs_baseline"] = paired_difference(scores, baseline).to_dict()
    return row


def format_row(name: str, row: dict[str, Any]) -> str:
    """One Markdown table row: name, score [interval], difference vs baseline, time, memory."""
    vs = row.get("vs_baseline")
    diff = comparison_cell(vs) if vs else ""
    train = row.get("train") or {}
    cost = f"{train['seconds']:.0f} s, {train['steps']} steps, peak {train['peak_rss_mb']:.0f} MB" if train else ""
    seconds = row.get("eval_seconds", 0)
    timing = "cached" if row.get("n") and seconds < 1 else f"{seconds:.0f} s"  # n calls in < 1 s: DSPy's cache
    return f"| {name} | {row['score']:.1f} [{row['low']:.1f}, {row['high']:.1f}] | {diff} | {cost} | {timing} |"


TABLE_HEADER = ("| model | held-out score [95% CI] | vs no help [95% CI], fixed/broken, sign test p | training "
                "(time, steps, peak memory) | evaluation time (cached: answers from DSPy's cache) |\n"
                "|---|---|---|---|---|")
