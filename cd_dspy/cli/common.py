"""What the `cd-dspy` commands share: the compile settings' flags, the console, and held-out scoring.

* `add_cd_arguments` / `cd_settings`: one definition of the `ConceptDistillation` flags of `compile` and
  `migrate`. A flag left out passes None (or the constructor's default) on, so `--auto` decides `--trials`,
  `--max-mistakes` and `--max-rules` unless they are given (`cd_dspy.config.AUTO_PRESETS`).
* `console_logging`: every warning once, one line each; DSPy's per-example error dumps (the whole example
  and LM reply) stay off the console unless `-v`; the result's warnings are left to the command's summary.
* `failures_line`: the one line naming the examples whose run failed (`core.scoring`).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from cd_dspy.config import AUTO_PRESETS, CARRIERS
from cd_dspy.core.failures import DSPY_EXAMPLE_LOGGERS, quiet_example_errors
from cd_dspy.core.progress import IN_RESULT
from cd_dspy.core.scoring import ExampleScores

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

DEFAULT_AUTO = "light"  # the constructor's default preset, and the main job's

# (flag, ConceptDistillation argument, type, default, help)
CD_FLAGS: tuple[tuple[str, str, type, Any, str], ...] = (
    ("--trials", "num_trials", int, None, "Optuna trials of the rule-subset search (default: the --auto preset's)"),
    ("--max-mistakes", "max_mistakes", int, None, "mistakes the teacher explains (default: the --auto preset's)"),
    ("--max-rules", "max_rules", int, None, "rules kept per predictor (default: the --auto preset's)"),
    ("--minibatch", "minibatch_size", int, None, "score search trials in minibatches of this size, with pruning"),
    ("--priming", "priming", str, "gold", "teacher priming: gold (the gold answer shown), ground_truth, teacher, "
     "confidence, none, or a sentence of your own (cd_dspy.core.priming)"),
    ("--carrier", "carrier", str, "exemplars", "what a concept carries to the target: exemplars (default: the "
     "teacher's checked solutions of its mistakes, as demos), rules or both"),
    ("--samples-per-mistake", "samples_per_mistake", int, 1, "teacher explanations per mistake"),
    ("--verify-correct", "verify_correct", int, 8,
     "correctly answered training examples each rule is tried on (verification)"),
    ("--rounds", "rounds", int, 0, "refinement rounds: a rule that fails verification goes back to the teacher "
     "with what it did not fix and what it broke, for one revised rule"),
    ("--confirm-fraction", "confirm_fraction", float, 0.5, "share of the valset kept from the search to confirm "
     "its result"),
    ("--max-target-calls", "max_target_calls", int, None, "cap on the compile's target calls"),
    ("--max-teacher-calls", "max_teacher_calls", int, None, "cap on the compile's teacher calls"),
    ("--rulebook", "rulebook", str, None, "a YAML rulebook: pinned rules always on, dropped never, free searched"),
)


def _presets_help() -> str:
    return "; ".join(f"{name}: {p.num_trials} trials, {p.max_mistakes} mistakes, {p.max_rules} rules"
                     for name, p in AUTO_PRESETS.items())


def add_cd_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the compile settings (`--auto`, `--trials`, ..., `--no-verify`, `--quiet`) to a subcommand's parser."""
    parser.add_argument("--auto", choices=list(AUTO_PRESETS), default=DEFAULT_AUTO,
                        help=f"preset of the sizes below (default {DEFAULT_AUTO}; {_presets_help()})")
    for flag, dest, kind, default, text in CD_FLAGS:
        choices = CARRIERS if dest == "carrier" else None
        parser.add_argument(flag, dest=dest, type=kind, default=default, help=text, choices=choices)
    parser.add_argument("--no-verify", action="store_true", help="skip the verification of each rule")
    parser.add_argument("--conditional-rules", action="store_true",
                        help="show each rule only to inputs that meet its 'When ...' condition")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def cd_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The `ConceptDistillation` keyword arguments the flags of `add_cd_arguments` give (progress excepted)."""
    settings = {dest: getattr(args, dest) for _, dest, *_ in CD_FLAGS}
    return {"auto": args.auto, **settings, "verify": not args.no_verify, "conditional_rules": args.conditional_rules}


# --- the console ------------------------------------------------------------------------------

class _CurrentStderr:
    """Writes to whatever `sys.stderr` is at the time of the call (a redirect, pytest's capture)."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


def _not_in_result(record: logging.LogRecord) -> bool:
    return not getattr(record, IN_RESULT, False)


class _OneLine(logging.Formatter):
    """A record in one line of at most `LINE` characters: an exception quoted in a warning (an unparseable
    reply's error holds the whole reply) or a traceback stays off the console; `-v` shows them whole."""

    LINE = 600

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        first, _, rest = text.partition("\n")
        if rest.strip() or len(first) > self.LINE:
            return f"{first[: self.LINE].rstrip()} [cut; -v shows it whole]"
        return first


@contextmanager
def console_logging(verbose: bool = False) -> Iterator[None]:
    """The CLI's console log on stderr while a command runs: WARNING records (INFO with `verbose`) of every
    logger, one line each, except the warnings the result keeps (the command prints those in its summary,
    once). DSPy's per-example error dumps go to DEBUG (`failures.quiet_example_errors`); `verbose` shows
    them, and every record whole."""
    handler = logging.StreamHandler(_CurrentStderr())
    handler.setFormatter(logging.Formatter(LOG_FORMAT) if verbose else _OneLine(LOG_FORMAT))
    handler.addFilter(_not_in_result)
    root, dspy_logger = logging.getLogger(), logging.getLogger("dspy")
    dumps = [logging.getLogger(name) for name in DSPY_EXAMPLE_LOGGERS]
    saved = [(logger, logger.level) for logger in (root, dspy_logger, *dumps)]
    root.setLevel(logging.INFO if verbose else logging.WARNING)
    dspy_logger.setLevel(logging.INFO if verbose else logging.ERROR)
    for logger in dumps:
        logger.setLevel(logging.DEBUG if verbose else logging.NOTSET)
    root.addHandler(handler)
    try:
        with quiet_example_errors():
            yield
    finally:
        root.removeHandler(handler)
        for logger, level in saved:
            logger.setLevel(level)


def failures_line(runs: dict[str, ExampleScores]) -> str | None:
    """One line naming the failed examples of each run (None when none failed)."""
    parts = [f"{name} {len(run.failed)} of {len(run.scores)} (example{'s' * (len(run.failed) > 1)} "
             f"{', '.join(map(str, run.failed))})" for name, run in runs.items() if run.failed]
    if not parts:
        return None
    return (f"failed runs (scored 0): {'; '.join(parts)}; rerun with -v to see DSPy's error and the LM's reply "
            "for each")
