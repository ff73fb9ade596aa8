"""Helpers for examples/benchmark.py: LMs, the simulated task, metering, bootstrap CIs, budgets and reports."""

from __future__ import annotations

import json
import random
import re
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dspy

from cd_dspy.result import RoleUsage
from cd_dspy.simulated import (
    HARMFUL_RULE,
    HELPFUL_RULES,
    TEMPLATES,
    SimulatedTarget,
    SimulatedTeacher,
    answer_match,
    simulated_splits,
)
from cd_dspy.usage import TEACHER, UsageMeter

SIMULATED = "simulated"


# -- LMs -----------------------------------------------------------------------------------------
def make_lm(name: str, role: str) -> dspy.LM:
    """A catalog name or .gguf path (embedded llama.cpp via `local_lm`), else a litellm model string (`dspy.LM`)."""
    from cd_dspy.lms import CATALOG, local_lm

    if name in CATALOG or name.endswith(".gguf") or Path(name).expanduser().is_file():
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


def load_task(name: str, seed: int, sizes: dict[str, int]) -> BenchTask:
    """The task `name` with its train/val/test splits of the given sizes."""
    if name == SIMULATED:
        train, val, test = simulated_splits(sizes["train"], sizes["val"], sizes["test"], seed=seed)
        return BenchTask(name, lambda: dspy.ChainOfThought("question -> answer: float"), _sim_metric, _sim_feedback,
                         {"train": train, "val": val, "test": test})
    from cd_dspy.programs import get_task

    task = get_task(name)
    return BenchTask(name, task.make_program, task.metric, task.metric_with_feedback or task.metric,
                     task.load_splits(seed=seed, sizes=sizes))


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


def usage_dict(usage: dict[str, RoleUsage]) -> dict[str, dict[str, Any]]:
    return {role: u.to_dict() for role, u in usage.items()}


# -- statistics ----------------------------------------------------------------------------------
def bootstrap_ci(scores: list[float], n_resamples: int = 1000, seed: int = 0,
                 level: float = 0.95) -> tuple[float, float, float]:
    """(mean, low, high): percentile bootstrap CI of the mean, resampling per-example scores (seeded)."""
    if not scores:
        return float("nan"), float("nan"), float("nan")
    rng, n = random.Random(seed), len(scores)
    means = sorted(statistics.fmean(rng.choices(scores, k=n)) for _ in range(n_resamples))
    alpha = (1 - level) / 2
    lo = means[int(alpha * (n_resamples - 1))]
    hi = means[int(round((1 - alpha) * (n_resamples - 1)))]
    return statistics.fmean(scores), lo, hi


# -- budgets -------------------------------------------------------------------------------------
def val_evals(trials: int) -> int:
    """Valset evaluations CD makes at most: `trials` (baseline included) + backward-elimination refinement."""
    return trials + max(2, trials // 2)


def target_budget(n_train: int, n_val: int, trials: int) -> int:
    """CD's target-LM program calls at most: collect on train + `val_evals(trials)` subsets on val."""
    return n_train + val_evals(trials) * n_val


def peer_configs(n_train: int, n_val: int, trials: int, threads: int, seed: int) -> dict[str, dict]:
    """Constructor/compile settings per peer, sized to roughly `target_budget` target calls."""
    budget, evals = target_budget(n_train, n_val, trials), val_evals(trials)
    n_all = n_train + n_val  # SIMBA has no valset: it gets train+val as its trainset
    bsize, nc = max(1, min(n_all, 8)), 2
    per_step = bsize * (2 * nc + 1)  # nc sampled trajectories + (nc+1) candidates, each on a minibatch
    final = (nc + 1) * n_all  # SIMBA's closing evaluation of up to nc+1 winners on its trainset
    mipro_trials = max(1, evals - 1)
    return {
        "inferrules": {"init": {"num_candidates": evals, "num_rules": 5, "max_bootstrapped_demos": 0,
                                "max_labeled_demos": 0, "num_threads": threads},
                       "budget": f"{evals} rule candidates x {n_val} val = {evals * n_val} target calls"},
        "simba": {"init": {"bsize": bsize, "num_candidates": nc, "max_demos": 0, "num_threads": threads,
                           "max_steps": max(1, round((budget - final) / per_step))},
                  "budget": f"max_steps x {per_step} + {final} final target calls ~ {budget}"},
        "miprov2": {"init": {"max_bootstrapped_demos": 0, "max_labeled_demos": 0, "auto": None, "seed": seed,
                             "num_candidates": max(2, round(mipro_trials / 1.5)), "num_threads": threads},
                    "compile": {"num_trials": mipro_trials, "minibatch": False},
                    "budget": f"(1 default + {mipro_trials} trials) x {n_val} val = {evals * n_val} target calls "
                              "+ bootstrap runs on train for the proposer"},
        "gepa": {"init": {"max_metric_calls": budget, "reflection_minibatch_size": 3, "num_threads": threads,
                          "seed": seed, "track_stats": False},
                 "budget": f"max_metric_calls = {budget}"},
    }


# -- reports -------------------------------------------------------------------------------------
def _calls(rec: dict, phase: str, role: str) -> int:
    """LM requests (cache misses + DSPy cache hits): independent of which method warmed the cache first."""
    u = rec.get("usage", {}).get(phase, {}).get(role, {})
    return int(u.get("calls", 0)) + int(u.get("cached_calls", 0))


def _tokens(rec: dict, phase: str) -> int:
    return sum(int(u.get("prompt_tokens", 0)) + int(u.get("completion_tokens", 0))
               for u in rec.get("usage", {}).get(phase, {}).values())


def total_calls(rec: dict) -> int:
    return sum(_calls(rec, p, r) for p in ("compile", "test") for r in ("target", "teacher"))


def gap_closed(methods: dict[str, dict]) -> float | None:
    """(cd - baseline) / (teacher - baseline) on test scores, or None if undefined."""
    try:
        cd, base, top = (methods[m]["test"]["score"] for m in ("cd", "baseline", "teacher"))
    except (KeyError, TypeError):
        return None
    return None if top == base else (cd - base) / (top - base)


def write_markdown(data: dict, path: Path) -> None:
    s = data["settings"]
    lines = [f"# Benchmark: {s['task']} — target `{s['target']}`, teacher `{s['teacher']}`", "",
             f"Splits: train {data['splits']['train']}, val {data['splits']['val']}, test {data['splits']['test']}; "
             f"trials {s['trials']}; seed {s['seed']}. Scores in %. Calls are LM requests (DSPy cache hits included); "
             "tokens are counted for cache misses only.", "",
             "| method | test score [95% CI] | target calls (compile/test) | teacher calls (compile/test) "
             "| tokens (compile/test) | wall time |", "|---|---|---|---|---|---|"]
    for name, rec in data["methods"].items():
        if rec.get("status") != "ok":
            lines.append(f"| {name} | error: {str(rec.get('error', ''))[:80].replace('|', '/')} | | | | "
                         f"{rec.get('seconds', {}).get('total', 0):.0f}s |")
            continue
        t = rec["test"]
        lines.append(f"| {name} | {t['score']:.1f} [{t['ci'][0]:.1f}, {t['ci'][1]:.1f}] "
                     f"| {_calls(rec, 'compile', 'target')} / {_calls(rec, 'test', 'target')} "
                     f"| {_calls(rec, 'compile', 'teacher')} / {_calls(rec, 'test', 'teacher')} "
                     f"| {_tokens(rec, 'compile')} / {_tokens(rec, 'test')} | {rec['seconds']['total']:.1f}s |")
    gap = gap_closed(data["methods"])
    lines += ["", f"CD closes {gap:.0%} of the target→teacher gap on test: (cd − baseline) / (teacher − baseline)."
              if gap is not None else "Gap closed by CD: n/a (needs baseline, cd and teacher with different scores)."]
    lines += ["", "Command: `" + data["command"] + "`", ""]
    path.write_text("\n".join(lines))


def write_plot(data: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    ok = [(name, rec) for name, rec in data["methods"].items() if rec.get("status") == "ok"]
    for i, (name, rec) in enumerate(ok):
        x, t = total_calls(rec), rec["test"]
        ax.errorbar([x], [t["score"]], yerr=[[t["score"] - t["ci"][0]], [t["ci"][1] - t["score"]]], fmt="o",
                    capsize=4)
        ax.annotate(name, (x, t["score"]), textcoords="offset points", xytext=(6, 6 if i % 2 == 0 else -14))
    ax.set_ylim(-5, 108)
    ax.margins(x=0.15)
    ax.set_xlabel("total LM calls (target + teacher, compile + test)")
    ax.set_ylabel("test score (%) with 95% bootstrap CI")
    ax.set_title(f"{data['settings']['task']}: {data['settings']['target']} / {data['settings']['teacher']}")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def save_all(data: dict, out: Path) -> None:
    """Write <out>.json, <out>.md and <out>.png."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = with_ext(out, ".json.tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str))
    tmp.replace(with_ext(out, ".json"))
    write_markdown(data, with_ext(out, ".md"))
    write_plot(data, with_ext(out, ".png"))


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
    import json
    from pathlib import Path

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stem}.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / f"{stem}.md").write_text(render(report))
    print(render(report))
    return report
