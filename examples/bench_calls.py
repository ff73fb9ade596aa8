"""The main job's target calls under several engine/adapter configurations, side by side in one run.

The questions are taken in blocks of --block; each configuration answers a whole block before the
next one does, the order of configurations rotating per block. Inside a block consecutive calls share
their instruction prefix, which llama.cpp keeps warm, as the evaluations of one trial do in a compile;
the first call of a block pays the cold prompt, for every configuration alike. Reports wall time per
call, calls per minute, the speed-up over the first configuration, parse failures, and accuracy with a
paired sign test against the first configuration.

    python examples/bench_calls.py --task math-basic --n 40 --out examples/results/calls

Configurations (--configs, the first is the reference):
  json-grammar     JSONAdapter, JSON schema grammar on every call (the engine's old default)
  json-on-failure  JSONAdapter, free sampling, the grammar only to redo a reply that does not parse
  chat             ChatAdapter (DSPy's default; its JSON fallback runs only on a parse failure)
  chat-fa          chat with llama.cpp's flash attention
"""

from __future__ import annotations

import argparse
import sys
import time

import dspy
from bench_lib import tokens_since, write_report

from cd_dspy.core.stats import paired_difference, score_interval
from cd_dspy.programs import get_task, make_adapter

CONFIGS = {
    "json-grammar": ("json", {"grammar": "always"}),
    "json-on-failure": ("json", {"grammar": "on_failure"}),
    "chat": ("chat", {}),
    "chat-fa": ("chat", {"flash_attn": True}),
}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", default="math-basic")
    parser.add_argument("--model", default="qwen2.5-coder-0.5b")
    parser.add_argument("--n", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--configs", default="json-grammar,json-on-failure,chat")
    parser.add_argument("--block", type=int, default=5, help="questions per configuration before switching")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    names = args.configs.split(",")
    if unknown := sorted(set(names) - set(CONFIGS)):
        parser.error(f"unknown configurations {unknown}; choose from {sorted(CONFIGS)}")

    from cd_dspy.lms import local_lm

    task = get_task(args.task)
    # Training questions: tuning the engine never looks at a test problem.
    *questions, warmup = task.load_splits(seed=args.seed, sizes={"train": args.n + 1, "val": 0, "test": 0})["train"]
    lms = {name: local_lm(args.model, role="target", cache=False, **CONFIGS[name][1]) for name in names}
    seconds = dict.fromkeys(names, 0.0)
    failures = dict.fromkeys(names, 0)
    tokens = dict.fromkeys(names, 0)
    prompt_tokens = dict.fromkeys(names, 0)
    scores: dict[str, list[float]] = {name: [] for name in names}

    def answer(name: str, example: dspy.Example) -> dspy.Prediction:
        program = task.make_program()
        program.set_lm(lms[name])
        with dspy.context(adapter=make_adapter(CONFIGS[name][0])):
            return program(**example.inputs())

    for name in names:  # untimed: loads the model (and flash attention's copy) before any call is timed
        try:
            answer(name, warmup)
        except Exception:  # noqa: BLE001 - a warm-up reply that does not parse still warmed the model
            pass
    blocks = [questions[i:i + args.block] for i in range(0, len(questions), args.block)]
    for b, block in enumerate(blocks):
        for name, example in ((n, e) for n in names[b % len(names):] + names[:b % len(names)] for e in block):
            history = len(lms[name].history)
            started = time.perf_counter()
            try:
                prediction = answer(name, example)
                scores[name].append(float(task.metric(example, prediction)))
            except Exception:  # an unparseable reply: what a configuration is judged on
                failures[name] += 1
                scores[name].append(0.0)
            seconds[name] += time.perf_counter() - started
            used = tokens_since(lms[name], history)
            prompt_tokens[name] += used[0]
            tokens[name] += used[1]
        done = sum(len(x) for x in blocks[:b + 1])
        print(f"{done}/{len(questions)} " + " ".join(f"{n}={seconds[n] / done:.2f}s" for n in names), flush=True)
    n, ref = len(questions), names[0]
    report = {"command": "python examples/bench_calls.py " + " ".join(argv or sys.argv[1:]), "n": n,
              "task": args.task, "model": args.model, "reference": ref, "configs": {}}
    for name in names:
        cmp = paired_difference(scores[name], scores[ref])
        report["configs"][name] = {
            "adapter": CONFIGS[name][0], "engine": CONFIGS[name][1], "seconds": round(seconds[name], 1),
            "seconds_per_call": round(seconds[name] / n, 2), "calls_per_minute": round(60 * n / seconds[name], 2),
            "speedup": round(seconds[ref] / seconds[name], 2), "parse_failures": failures[name],
            "output_tokens_per_call": round(tokens[name] / n, 1),
            "prompt_tokens_per_call": round(prompt_tokens[name] / n, 1),
            "accuracy": 100 * sum(scores[name]) / n, "accuracy_interval": list(score_interval(scores[name])),
            "vs_reference": {"difference": cmp.difference, "wins": cmp.wins, "losses": cmp.losses,
                             "p_two_sided": cmp.p_two_sided},
            "engine_stats": dict(lms[name].engine.stats)}
    return write_report(args.out, "bench_calls", report, render)


def render(report: dict) -> str:
    lines = [f"# Main-job target calls side by side: {report['task']}, {report['model']}, {report['n']} training "
             "questions", "", f"Command: `{report['command']}`", "",
             "| configuration | s/call | calls/min | speed-up | parse failures | output tokens/call "
             f"| accuracy [95% CI] | vs {report['reference']} (paired) |", "|---|---|---|---|---|---|---|---|"]
    for name, m in report["configs"].items():
        low, high = m["accuracy_interval"]
        vs = m["vs_reference"]
        paired = "reference" if name == report["reference"] else \
            f"{vs['difference']:+.1f} ({vs['wins']} better, {vs['losses']} worse, p={vs['p_two_sided']:.2f})"
        lines.append(f"| {name} | {m['seconds_per_call']} | {m['calls_per_minute']} | {m['speedup']}x "
                     f"| {m['parse_failures']} / {report['n']} | {m['output_tokens_per_call']} "
                     f"| {m['accuracy']:.1f} [{low:.1f}, {high:.1f}] | {paired} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
