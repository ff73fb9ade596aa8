"""Harness ablation: how much of the target's score is the model and how much is our program/adapter.

For one task, run the same problems through several ways of asking (adapter, with or without
reasoning, plain chat with the code/number extracted, more output tokens) and report per variant:
score with a 95% interval, parse failures, truncated replies, seconds per call. Problems come from
the benchmark's *training* split (HumanEval: the first N of the seed-0 shuffle; math-basic: the
seed-0 train split), so choosing the harness never looks at a test problem.

Usage:
  python examples/harness_ablation.py --task humaneval --n 40 --out examples/results/harness_humaneval
  python examples/harness_ablation.py --task math-basic --n 60 --out examples/results/harness_math_basic
Rows are appended to <out>.jsonl as they finish, so an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path

import dspy
from bench_lib import tokens_since
from dspy.utils.exceptions import AdapterParseError

from cd_dspy.core.stats import paired_difference, score_interval
from cd_dspy.lms import local_lm
from cd_dspy.programs import get_task, make_adapter
from cd_dspy.programs.humaneval import WriteFunction, extract_code, humaneval_metric_with_feedback
from cd_dspy.programs.math_word import SolveWordProblem, numeric_match, parse_number

PLAIN_CODE = ("Complete the following Python function. Return the whole function in a ```python code block.\n\n"
              "{prompt}")
PLAIN_MATH = "Solve the following math word problem. End your reply with 'Answer: <number>'.\n\n{question}"
PLAIN_MATH_STEPS = ("Solve the following math word problem step by step. End your reply with 'Answer: <number>'.\n\n"
                    "{question}")


def _variants(task: str) -> dict[str, tuple[Callable[[], dspy.Module] | str, str, int]]:
    """name -> (program factory or 'plain', adapter, max_tokens)."""
    sig = WriteFunction if task == "humaneval" else SolveWordProblem
    return {
        "json-cot": (lambda: dspy.ChainOfThought(sig), "json", 320),
        "json-cot-1024": (lambda: dspy.ChainOfThought(sig), "json", 1024),
        "json-predict": (lambda: dspy.Predict(sig), "json", 320),
        "chat-cot": (lambda: dspy.ChainOfThought(sig), "chat", 320),
        "chat-cot-1024": (lambda: dspy.ChainOfThought(sig), "chat", 1024),
        "chat-predict": (lambda: dspy.Predict(sig), "chat", 320),
        "plain-chat": ("plain", "-", 512),
        **({"plain-chat-steps": ("plain-steps", "-", 512)} if task != "humaneval" else {}),
        # the built-in program (CodeGenerator under PlainChatAdapter): plain-chat's request through DSPy
        **({"builtin-plain": (lambda: get_task(task).make_program(), "plain", 512)} if task == "humaneval" else {}),
    }


def _last_output_tokens(lm: dspy.LM, start: int) -> int:
    """Output tokens of the last call after history entry `start` (0 when none was made)."""
    return tokens_since(lm, len(lm.history) - 1)[1] if len(lm.history) > start else 0


def run_one(task: str, variant, example, lm: dspy.LM) -> dict:
    """One problem through one variant: score, parse failure, output tokens, seconds, cache hit."""
    factory, adapter, max_tokens = variant
    row = {"parse_failure": False, "error": None}
    start = time.perf_counter()
    n_hist = len(lm.history)
    try:
        if isinstance(factory, str):
            template = PLAIN_CODE if task == "humaneval" else PLAIN_MATH_STEPS if factory == "plain-steps" \
                else PLAIN_MATH
            text = template.format(**example.inputs())
            reply = lm(messages=[{"role": "user", "content": text}], max_tokens=max_tokens)[0]
            reply = reply["text"] if isinstance(reply, dict) else reply
            pred = dspy.Prediction(code=extract_code(reply, example.get("entry_point"))) if task == "humaneval" \
                else dspy.Prediction(answer=parse_number(reply.split("Answer:")[-1]))
        else:
            with dspy.context(lm=lm, adapter=make_adapter(adapter)):
                lm.kwargs["max_tokens"] = max_tokens
                pred = factory()(**example.inputs())
    except AdapterParseError as e:
        pred, row["parse_failure"] = None, True
        row["error"] = str(e)[:200]
    row["seconds"] = round(time.perf_counter() - start, 2)
    row["output_tokens"] = _last_output_tokens(lm, n_hist)
    row["truncated"] = row["output_tokens"] >= max_tokens
    row["output"] = str(pred.get("code") if task == "humaneval" else pred.get("answer"))[:3000] if pred else None
    if pred is None:
        row["score"] = 0.0
    elif task == "humaneval":
        row["score"] = float(humaneval_metric_with_feedback(example, pred).score)
    else:
        row["score"] = float(numeric_match(example, pred))
    return row


def problems(task: str, n: int) -> list:
    if task == "humaneval":
        from cd_dspy.programs.humaneval import load_humaneval

        return load_humaneval(seed=0, n_train=n, n_val=0, n_test=0)["train"]
    return get_task(task).load_splits(seed=0, sizes={"train": n, "val": 0, "test": 0})["train"]


TODAY = {"humaneval": "builtin-plain is today's (CodeGenerator under PlainChatAdapter)",
         "math-basic": "chat-cot is today's (MathSolver: chain of thought under ChatAdapter)"}


def summarise(task: str, n: int, rows: list[dict], model: str) -> dict:
    """Per variant: its score on the problems it finished; paired columns on the problems both variants finished."""
    names = list(dict.fromkeys(r["variant"] for r in rows))
    by = {v: {r["index"]: r for r in rows if r["variant"] == v} for v in names}
    out = {"task": task, "n": n, "model": model, "variants": {}}
    for v, mine in by.items():
        rs = [mine[i] for i in sorted(mine)]
        scores = [r["score"] for r in rs]
        entry = {"n": len(rs), "score": 100 * sum(scores) / len(scores), "interval": list(score_interval(scores)),
                 "parse_failures": sum(r["parse_failure"] for r in rs), "truncated": sum(r["truncated"] for r in rs),
                 "mean_output_tokens": sum(r["output_tokens"] for r in rs) / len(rs),
                 "seconds_per_call": sum(r["seconds"] for r in rs) / len(rs)}  # the LM's cache is off
        for key, ref in (("vs_plain_chat", "plain-chat"), ("vs_json_cot", "json-cot")):
            common = sorted(set(mine) & set(by.get(ref, {})))
            if ref != v and common:
                cmp = paired_difference([mine[i]["score"] for i in common], [by[ref][i]["score"] for i in common])
                entry[key] = {"n": len(common), "difference": cmp.difference, "p_value": cmp.p_two_sided,
                              "wins": cmp.wins, "losses": cmp.losses}
        out["variants"][v] = entry
    return out


def write_markdown(summary: dict, path: Path, command: str) -> None:
    unfinished = [v for v, e in summary["variants"].items() if e["n"] < summary["n"]]
    lines = [f"# Harness ablation: {summary['task']}, {summary['model']}, the first {summary['n']} training problems",
             "",
             *([f"**PARTIAL**: {', '.join(unfinished)} did not finish all {summary['n']} problems (column "
                "'problems'); rerun the command without --summarise-only to go on (finished rows are kept).", ""]
               if unfinished else []),
             f"Command: `{command}`", "",
             "Each variant is scored on the problems it finished (the first ones, in order). Paired columns: "
             "difference in points on the problems both variants finished (their number first), problems "
             "better/worse, exact two-sided sign test. json-cot is the built-in program's old harness (JSONAdapter, "
             "chain of thought); " + TODAY[summary["task"]] + ". "
             "Seconds per call were measured while other jobs shared the 2 cores: compare them only roughly "
             "(examples/bench_calls.py times configurations side by side).", "",
             "| variant | problems | score % | 95% interval | parse failures | truncated | mean output tokens | s/call "
             "| vs plain chat (paired) | vs json-cot (paired) |", "|---|---|---|---|---|---|---|---|---|---|"]

    def paired(vs: dict | None, name: str, ref: str) -> str:
        if vs:
            return (f"n={vs['n']}: {vs['difference']:+.1f} pts ({vs['wins']} better, {vs['losses']} worse, "
                    f"p={vs['p_value']:.3f})")
        return "reference" if name == ref else "-"

    for v, e in summary["variants"].items():
        lines.append(f"| {v} | {e['n']} | {e['score']:.1f} | [{e['interval'][0]:.1f}, {e['interval'][1]:.1f}] | "
                     f"{e['parse_failures']} | {e['truncated']} | {e['mean_output_tokens']:.0f} | "
                     f"{e['seconds_per_call']:.1f} | "
                     f"{paired(e.get('vs_plain_chat'), v, 'plain-chat')} | "
                     f"{paired(e.get('vs_json_cot'), v, 'json-cot')} |")
    path.write_text("\n".join(lines) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--task", choices=["humaneval", "math-basic"], required=True)
    ap.add_argument("--n", type=int, default=40)
    ap.add_argument("--model", default="qwen2.5-coder-0.5b")
    ap.add_argument("--variants", default=None, help="comma-separated subset of the variants")
    ap.add_argument("--out", required=True, help="output prefix (writes .jsonl, .json, .md)")
    ap.add_argument("--summarise-only", action="store_true",
                    help="run nothing: summarise what the chosen variants have finished (marked PARTIAL)")
    args = ap.parse_args()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    variants = _variants(args.task)
    chosen = args.variants.split(",") if args.variants else list(variants)
    unknown = set(chosen) - set(variants)
    if unknown:
        raise SystemExit(f"unknown variants {sorted(unknown)}; choose from {sorted(variants)}")
    log = out.with_suffix(".jsonl")
    done = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    seen = {(r["variant"], r["index"]) for r in done}
    lm = local_lm(args.model, role="target", cache=False)  # every call real: timings are honest
    exs = problems(args.task, args.n)
    with log.open("a") as f:
        for v in ([] if args.summarise_only else chosen):
            for i, ex in enumerate(exs):
                if (v, i) in seen:
                    continue
                row = {"variant": v, "index": i, **run_one(args.task, variants[v], ex, lm)}
                f.write(json.dumps(row) + "\n")
                f.flush()
                done.append(row)
                print(f"{v} {i}: score={row['score']} {row['seconds']}s tokens={row['output_tokens']}", flush=True)
    rows = [r for r in done if r["variant"] in chosen and r["index"] < args.n]
    summary = summarise(args.task, args.n, rows, args.model)
    summary["partial"] = any(e["n"] < args.n for e in summary["variants"].values())
    out.with_suffix(".json").write_text(json.dumps(summary, indent=2))
    command = f"python examples/harness_ablation.py --task {args.task} --n {args.n} --out {args.out}" + \
        (f" --variants {args.variants}" if args.variants else "")
    if summary["partial"]:
        command += " --summarise-only"
    write_markdown(summary, out.with_suffix(".md"), command)
    print(out.with_suffix(".md").read_text())


if __name__ == "__main__":
    main()
