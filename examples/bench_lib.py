"""Helpers for examples/benchmark.py and the other example scripts: LMs, tasks, metering, held-out
statistics, budgets, report files (the benchmark's tables and plot: bench_report.py)."""

from __future__ import annotations

import json
import re
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dspy

from cd_dspy.core.result import RoleUsage
from cd_dspy.core.stats import paired_difference, score_interval
from cd_dspy.core.usage import TEACHER, UsageMeter
from cd_dspy.testing.simulated import (
    HARMFUL_RULE,
    HELPFUL_RULES,
    TEMPLATES,
    SimulatedTarget,
    SimulatedTeacher,
    answer_match,
    simulated_splits,
)

SIMULATED = "simulated"


# -- LMs -----------------------------------------------------------------------------------------
def is_local_model(name: str) -> bool:
    """A catalog name or a .gguf file: a model embedded through llama.cpp (`local_lm`)."""
    from cd_dspy.lms import CATALOG

    return name in CATALOG or name.endswith(".gguf") or Path(name).expanduser().is_file()


def make_lm(name: str, role: str) -> dspy.LM:
    """A catalog name or .gguf path (embedded llama.cpp via `local_lm`), else a litellm model string (`dspy.LM`)."""
    from cd_dspy.lms import CATALOG, local_lm

    if is_local_model(name):
        return local_lm(name, role=role)
    if "/" not in name:
        raise ValueError(f"{name!r} is neither a catalog model ({', '.join(sorted(CATALOG))}), a .gguf file, "
                         "nor a litellm 'provider/model' string.")
    return dspy.LM(name, cache=True)


def simulated_lms() -> tuple[dspy.LM, dspy.LM]:
    """Fresh simulated (target, teacher) LMs; cache off, so every call is a real (counted) call."""
    return (dspy.LM("simulated/target", engine=SimulatedTarget(), cache=False),
            dspy.LM("simulated/teacher", engine=BenchTeacher(), cache=False))


_KIND_PATTERNS = {k: re.escape(t).replace(r"\{name\}", r"\w+").replace(r"\{a\}", r"\d+").replace(r"\{b\}", r"\d+")
                  for k, (t, _) in TEMPLATES.items()}


class BenchTeacher(SimulatedTeacher):
    """`SimulatedTeacher` that also solves the task (the ceiling) and answers the peers' prompts.

    CD's requests get the stock script. A task request is solved like a target that knows every helpful
    rule. Any other request (MIPROv2/GEPA/InferRules/SIMBA proposers) gets the knowledge CD's teacher
    offers: the helpful rule of each problem kind named in the request, plus the harmful rule when a
    units problem appears.
    """

    model = "simulated-teacher"

    def respond(self, instructions: str, inputs: dict[str, str], outputs: list[str]) -> dict[str, Any]:
        if "student_attempt" in inputs or "candidate_rules" in inputs or "rules" in outputs:
            return super().respond(instructions, inputs, outputs)
        if "question" in inputs and ("answer" in outputs or "plan" in outputs):
            known = instructions + "\n" + "\n".join(HELPFUL_RULES.values())
            return SimulatedTarget().respond(known, inputs, outputs)
        text = "\n".join(str(v) for v in inputs.values())
        kinds = [k for k, p in _KIND_PATTERNS.items() if k in HELPFUL_RULES and re.search(p, text)]
        advice = "\n".join([HELPFUL_RULES[k] for k in kinds] + ([HARMFUL_RULE] if "units" in kinds else []))
        advice = advice or "Answer the question."
        names = [n.strip(' "') for n in inputs.get("module_names", "").strip("[]").split(",") if n.strip()]
        return {k: ({n: advice for n in names} if k == "module_advice" else
                    "Some problem kinds need care." if k in ("reasoning", "discussion") else advice) for k in outputs}


# -- tasks ---------------------------------------------------------------------------------------
@dataclass
class BenchTask:
    """What the benchmark needs from a task (a `cd_dspy.programs.Task` or the simulated world)."""

    name: str
    make_program: Any
    metric: Any
    metric_with_feedback: Any
    splits: dict[str, list]


def _sim_feedback(example, pred, trace=None) -> dspy.Prediction:
    ok = answer_match(example, pred, trace)
    got = getattr(pred, "answer", None)
    return dspy.Prediction(score=float(ok), feedback="correct" if ok else f"expected {example.answer:g}, got {got}")


def _sim_metric(example, pred, trace=None) -> float:
    return float(answer_match(example, pred, trace))


# The label fields every method may see: what the metric reads. Anything else a loader keeps (a math
# problem's `kind`, HumanEval's canonical solution) is dropped, so no method learns from a field the others lack.
METRIC_FIELDS = {"humaneval": ("entry_point", "test")}


def shared_fields(examples: list[dspy.Example], task: str) -> list[dspy.Example]:
    """The examples with only their inputs and the fields the task's metric reads."""
    keep = METRIC_FIELDS.get(task, ("answer",))
    return [dspy.Example(**{k: e[k] for k in (*e.inputs().keys(), *keep)}).with_inputs(*e.inputs().keys())
            for e in examples]


def load_task(name: str, seed: int, sizes: dict[str, int]) -> BenchTask:
    """The task `name` with its train/val/test splits of the given sizes (only shared fields kept)."""
    if name == SIMULATED:
        train, val, test = simulated_splits(sizes["train"], sizes["val"], sizes["test"], seed=seed)
        task = BenchTask(name, lambda: dspy.ChainOfThought("question -> answer: float"), _sim_metric,
                         _sim_feedback, {"train": train, "val": val, "test": test})
    else:
        from cd_dspy.programs import get_task

        spec = get_task(name)
        task = BenchTask(name, spec.make_program, spec.metric, spec.metric_with_feedback or spec.metric,
                         spec.load_splits(seed=seed, sizes=sizes))
    task.splits = {k: shared_fields(v, name) for k, v in task.splits.items()}
    task.make_program = _with_own_signatures(task.make_program)
    return task


def _with_own_signatures(make_program: Any) -> Any:
    """`make_program`, each program with signature classes of its own. A program built from a Signature class
    shares that class with every other instance, and a peer that assigns `predictor.signature.instructions`
    (DSPy 3.4's InferRules does) would change the instructions of every later method's program."""
    def make() -> dspy.Module:
        program = make_program()
        for _, predictor in program.named_predictors():
            predictor.signature = predictor.signature.with_instructions(predictor.signature.instructions)
        return program

    return make


def gepa_metric(metric):
    """Adapt `metric(example, pred, trace)` to GEPA's `(gold, pred, trace, pred_name, pred_trace)`."""
    def wrapped(gold, pred, trace=None, pred_name=None, pred_trace=None):
        out = metric(gold, pred, trace)
        if isinstance(out, dspy.Prediction):
            return dspy.Prediction(score=float(out.score), feedback=getattr(out, "feedback", None))
        return float(out)

    return wrapped


# -- metering ------------------------------------------------------------------------------------
class BenchMeter(UsageMeter):
    """`UsageMeter` that also counts copies of the teacher LM (`lm.copy(...)`, as InferRules makes) as teacher."""

    def __init__(self, teacher_lm: Any, target_lm: Any):
        super().__init__(teacher_lm)
        t_model, s_model = getattr(teacher_lm, "model", None), getattr(target_lm, "model", None)
        self.teacher_model = t_model if t_model != s_model else None

    def role_of(self, lm: Any) -> str:
        if self.teacher_model is not None and getattr(lm, "model", None) == self.teacher_model:
            return TEACHER
        return super().role_of(lm)


def tokens_since(lm: dspy.LM, start: int) -> tuple[int, int]:
    """(prompt, output) tokens of the calls `lm` recorded in its history after entry `start`."""
    usage = [h.get("usage") or {} for h in lm.history[start:]]
    return (sum(u.get("prompt_tokens") or u.get("input_tokens") or 0 for u in usage),
            sum(u.get("completion_tokens") or u.get("output_tokens") or 0 for u in usage))


def usage_dict(usage: dict[str, RoleUsage]) -> dict[str, dict[str, Any]]:
    return {role: u.to_dict() for role, u in usage.items()}


def add_usage(a: dict[str, dict], b: dict[str, dict]) -> dict[str, dict]:
    """Two `usage_dict`s summed per role (numbers added; failure counts merged)."""
    out = {}
    for role in sorted(set(a) | set(b)):
        x, y = a.get(role, {}), b.get(role, {})
        out[role] = {k: (x.get(k, 0) + y.get(k, 0)) if k != "failures" else
                     {f: x.get(k, {}).get(f, 0) + y.get(k, {}).get(f, 0) for f in {**x.get(k, {}), **y.get(k, {})}}
                     for k in {**x, **y}}
    return out


def calls_made(rec: dict, phase: str, role: str) -> int:
    """LM requests (cache misses + DSPy cache hits): independent of which method warmed the cache first."""
    u = rec.get("usage", {}).get(phase, {}).get(role, {})
    return int(u.get("calls", 0)) + int(u.get("cached_calls", 0))


# -- statistics ----------------------------------------------------------------------------------
def held_out_record(scores: list[float], baseline: list[float] | None) -> dict:
    """Held-out score with its 95% interval (Wilson for 0/1 scores) and, given the baseline's scores on the
    same problems, the paired difference with its interval and the exact sign test (McNemar for 0/1)."""
    lo, hi = score_interval(scores)
    rec: dict[str, Any] = {"score": 100 * statistics.fmean(scores) if scores else float("nan"), "ci": [lo, hi],
                           "n": len(scores), "scores": scores}
    if baseline is not None and len(baseline) == len(scores) and scores:
        c = paired_difference(scores, baseline)
        rec["vs_baseline"] = {"difference": c.difference, "ci": [c.low, c.high], "fixed": c.wins, "broken": c.losses,
                              "p_two_sided": c.p_two_sided, "p_greater": c.p_greater}
    return rec


def sft_row(args: Any, test: list[dspy.Example], baseline_scores: list[float] | None) -> dict:
    """The weights row: a LoRA SFT adapter's held-out scores as examples/distill_compare.py measured them on the
    same split (its `--sft-row`, by default the main SFT adapter), checked to be the same task, models and test
    problems (its unaided target scored exactly as `baseline_scores`); compile-time cost = the teacher's data
    calls and the training time."""
    if not args.sft_results:
        raise ValueError("sft_lora needs --sft-results: the distill_compare.json of examples/distill_compare.py run "
                         "on the same task, split and models.")
    path = Path(args.sft_results)
    data = json.loads(path.read_text())
    same = {"task": args.task, "target": args.target, "teacher": args.teacher}
    if {k: data.get(k) for k in same} != same or data.get("splits", {}).get("test") != len(test):
        raise ValueError(f"{path} was measured on {data.get('task')} / {data.get('target')} / {data.get('teacher')}, "
                         f"splits {data.get('splits')}: not this benchmark's task, models and test size.")
    if args.sft_row not in data["rows"]:
        raise ValueError(f"{path} has no row {args.sft_row!r}; it has {', '.join(data['rows'])}.")
    if baseline_scores is None or data["rows"].get("none", {}).get("scores") != baseline_scores:
        raise ValueError(f"{path}: its unaided target ('none' row) did not score exactly as this benchmark's baseline "
                         "on the test problems (or the baseline has not run): not the same problems or settings.")
    row = data["rows"][args.sft_row]
    teacher_calls = int(data.get("data", {}).get("examples", 0))  # the teacher answered each training example
    train_seconds = float(row.get("train", {}).get("seconds", 0.0))
    return {"imported": {"scores": row["scores"], "seconds": {"compile": train_seconds,
                                                             "test": float(row.get("eval_seconds", 0.0))}},
            "usage": {"teacher": {"calls": teacher_calls}},  # the compile's usage, per role
            "source": {"file": str(path), "row": args.sft_row, "command": data.get("command"),
                       "train": row.get("train", {}).get("settings"), "records": row.get("train", {}).get("records")},
            "message": f"measured by examples/distill_compare.py ({path}, row {args.sft_row!r}); not rerun here"}


# -- budgets -------------------------------------------------------------------------------------
def val_evals(trials: int) -> int:
    """Valset evaluations CD makes at most: `trials` (baseline included) + backward-elimination refinement."""
    return trials + max(2, trials // 2)


def target_budget(n_train: int, n_val: int, trials: int) -> int:
    """A planning estimate of CD's target calls (collect on train + `val_evals(trials)` subsets on val).

    The benchmark matches peers to CD's *measured* compile calls when CD has run (see `measured_budget`)."""
    return n_train + val_evals(trials) * n_val


def measured_budget(methods: dict[str, dict]) -> int | None:
    """CD's measured compile-time target calls (cache hits included), or None before CD has run: the `cd` row, or
    `cd_exemplars` (the default carrier measured under its own name)."""
    rec = methods.get("cd") or methods.get("cd_exemplars")
    return calls_made(rec, "compile", "target") if rec and rec.get("status") == "ok" else None


# BootstrapFinetune's train_kwargs in the bettertogether row: the sft_lora row's LoRA settings
# (examples/results/distill_compare_math_basic: 1 epoch, lr 1e-3, the project's default rank and targets).
BETTERTOGETHER_TRAIN = {"epochs": 1, "lr": 1e-3}

# Methods renamed when the demonstration rows came in: the old names were instruction-only runs.
RENAMED = {"inferrules": "inferrules_instr", "miprov2": "miprov2_instr", "simba": "simba_instr"}

# What each method changes in the program (the table's "carrier" column).
CARRIERS = {"baseline": "none", "teacher": "none (the teacher runs)", "cd": "exemplars (CD's default)",
            "cd_rules": "rules (CD)", "cd_exemplars": "exemplars (CD, the default)",
            "cd_both": "rules + exemplars (CD)", "inferrules_instr": "instructions",
            "miprov2_instr": "instructions", "simba_instr": "instructions", "gepa": "instructions",
            "bootstrap_fewshot": "demos", "bootstrap_rs": "demos", "miprov2_demos": "instructions + demos",
            "simba_demos": "instructions + demos", "sft_lora": "weights",
            "bfs_then_cd": "demos, then CD's concepts", "bettertogether": "demos + weights (LoRA)"}
# Carriers whose program is the base program with other instructions (no demos, no weights): what --count-prompts
# can rebuild from a row's recorded instructions.
INSTRUCTION_ONLY = ("none", "instructions", "rules (CD)")
# Rows also compared with another row on the same problems (the recipe against its first step alone).
REFERENCES = {"bfs_then_cd": "bootstrap_fewshot"}


def peer_configs(n_train: int, n_val: int, budget: int, threads: int, seed: int) -> dict[str, dict]:
    """Constructor/compile settings per peer: DSPy's defaults, with the size knob of the peers that have one
    (candidates, trials, steps, metric calls) set to about `budget` target calls. `changed` says what differs
    from DSPy's defaults and why."""
    evals = max(2, round(budget / max(1, n_val)))  # full-valset evaluations the budget buys
    n_all = n_train + n_val  # SIMBA has no valset: it gets train+val as its trainset
    bsize, nc = max(1, min(n_all, 8)), 2
    per_step = bsize * (2 * nc + 1)  # nc sampled trajectories + (nc+1) candidates, each on a minibatch
    final = (nc + 1) * n_all  # SIMBA's closing evaluation of up to nc+1 winners on its trainset
    mipro_trials = max(1, evals - 1)
    random_programs = max(1, evals - 3)  # random search also scores zero-shot, labeled-only and unshuffled
    no_demos = {"max_bootstrapped_demos": 0, "max_labeled_demos": 0}
    random_search = {"max_bootstrapped_demos": 4, "max_labeled_demos": 16, "num_candidate_programs": random_programs,
                     "num_threads": threads}
    simba = {"bsize": bsize, "num_candidates": nc, "num_threads": threads,
             "max_steps": max(1, round((budget - final) / per_step))}
    simba_budget = f"max_steps x {per_step} + {final} final target calls ~ {budget}"
    mipro_init = {"auto": None, "seed": seed, "num_candidates": max(2, round(mipro_trials / 1.5)),
                  "num_threads": threads}
    mipro_compile = {"num_trials": mipro_trials, "minibatch": False}
    mipro_budget = (f"(1 default + {mipro_trials} trials) x {n_val} val = {evals * n_val} target calls "
                    "+ bootstrap runs on train for the proposer")
    budgeted = "sized to the target-call budget: "
    return {
        "bootstrap_fewshot": {"init": {"max_bootstrapped_demos": 4, "max_labeled_demos": 0},
                              "budget": "none: the teacher runs the program on train until 4 traces pass the metric",
                              "changed": "max_labeled_demos 0 (default 16): the two-line recipe of DSPy's docs "
                                         "with a teacher, 4 bootstrapped demonstrations"},
        "bootstrap_rs": {"init": random_search,
                         "budget": f"(3 fixed + {random_programs} random candidates) x {n_val} val target calls",
                         "changed": budgeted + f"num_candidate_programs {random_programs} (default 16)"},
        "miprov2_demos": {"init": mipro_init, "compile": mipro_compile, "budget": mipro_budget,
                          "changed": budgeted + f"auto None, num_trials {mipro_trials}, minibatch off (val "
                                                f"{n_val} ~ its minibatch of 35); demos at defaults (4 + 4)"},
        "simba_demos": {"init": simba, "budget": simba_budget,
                        "changed": budgeted + f"bsize {bsize}, num_candidates {nc}, max_steps; max_demos default 4"},
        "inferrules_instr": {"init": {"num_candidates": evals, "num_rules": 5, **no_demos, "num_threads": threads},
                             "budget": f"{evals} rule candidates x {n_val} val = {evals * n_val} target calls",
                             "changed": budgeted + "num_candidates; demos off (instruction-only)"},
        "simba_instr": {"init": {**simba, "max_demos": 0}, "budget": simba_budget,
                        "changed": budgeted + "as simba_demos; max_demos 0 (instruction-only)"},
        "miprov2_instr": {"init": {**no_demos, **mipro_init}, "compile": mipro_compile, "budget": mipro_budget,
                          "changed": budgeted + "as miprov2_demos; demos off (instruction-only, zero-shot)"},
        "bettertogether": {"init": {"p": random_search,
                                    "w": {"num_threads": threads, "train_kwargs": dict(BETTERTOGETHER_TRAIN)}},
                           "compile": {"strategy": "p -> w -> p", "seed": seed, "num_threads": threads},
                           "budget": f"2 prompt steps x (3 fixed + {random_programs} random candidates) x {n_val} "
                                     f"val + 4 x {n_val} val (BetterTogether scores each step) target calls, the "
                                     "teacher's traces on train, one LoRA training on the CPU",
                           "changed": f"p = bootstrap_rs's setting (num_candidate_programs {random_programs}, "
                                      "default 16), run twice; w = BootstrapFinetune through cd_dspy's "
                                      "LocalLoraProvider (LoRA on the CPU, the sft_lora row's 1 epoch at lr 1e-3); "
                                      "the teacher reaches p as teacher_settings, w as the teacher program"},
        "gepa": {"init": {"max_metric_calls": budget, "reflection_minibatch_size": 3, "num_threads": threads,
                          "seed": seed, "track_stats": False},
                 "budget": f"max_metric_calls = {budget}", "changed": budgeted + "max_metric_calls (instructions "
                                                                       "only, as GEPA always is)"},
    }


def with_ext(out: Path, ext: str) -> Path:
    return out.parent / (out.name + ext)


def split_arguments(parser, run_dir: bool = True) -> None:
    """The arguments that name a task split (and the run dir of a finished compile on it)."""
    parser.add_argument("--task", default="math-basic")
    if run_dir:
        parser.add_argument("--run-dir", required=True)
    parser.add_argument("--train", type=int, required=True)
    parser.add_argument("--val", type=int, required=True)
    parser.add_argument("--test", type=int, required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--target", default="qwen2.5-coder-0.5b")


def write_report(out, stem: str, report: dict, render) -> dict:
    """Write `report` as `out/stem.json` and, rendered, `out/stem.md`; print the Markdown."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stem}.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / f"{stem}.md").write_text(render(report))
    print(render(report))
    return report
