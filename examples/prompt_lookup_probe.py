"""Does prompt-lookup speculative decoding make the target's calls faster? A probe of the one decoding-side
lever left after the engine reached 95% of raw llama.cpp (README, "How fast").

llama-cpp-python ships `LlamaPromptLookupDecoding`: draft tokens are copied from earlier in the prompt and
verified in one batch, so replies that repeat their prompt (a function's signature, a question's numbers)
could decode several tokens per step. The probe sends each task's real first requests (the task's program
and adapter, formatted by DSPy, no demos) to the 0.5B target with the engine's sampling settings (greedy,
repeat penalty 1.1), once plainly and once per draft length, and reports seconds per call, output tokens per
second, how many replies are identical to the plain ones, and any error.

    python examples/prompt_lookup_probe.py --tasks math-basic:12,humaneval:8 --out examples/results/prompt_lookup
"""

from __future__ import annotations

import argparse
import time

from bench_lib import write_report

from cd_dspy.lms import LlamaCppEngine
from cd_dspy.programs import get_task, make_adapter


def requests(task_name: str, n: int) -> list[list[dict]]:
    """The chat messages the task's first predictor sends for its first `n` training examples."""
    task = get_task(task_name)
    train = task.load_splits(seed=0, sizes={"train": n, "val": 0, "test": 0})["train"]
    _, predictor = task.make_program().named_predictors()[0]
    adapter = make_adapter(task.adapter)
    return [adapter.format(predictor.signature, demos=[], inputs=dict(ex.inputs())) for ex in train]


def run_config(engine: LlamaCppEngine, messages: list[list[dict]], draft: int | None, max_tokens: int) -> dict:
    """The requests on a model of its own, loaded as `engine` loads it, sampled with `engine`'s settings."""
    from llama_cpp import Llama
    from llama_cpp.llama_speculative import LlamaPromptLookupDecoding

    extra = {"draft_model": LlamaPromptLookupDecoding(num_pred_tokens=draft)} if draft else {}
    llm = Llama(model_path=engine.model_path, n_ctx=engine.n_ctx, n_threads=2, verbose=False, **extra)
    sampling = {"temperature": 0.0, "repeat_penalty": engine.repeat_penalty, "top_k": engine.top_k,
                "top_p": engine.top_p}
    llm.create_chat_completion(messages=messages[0], max_tokens=8, **sampling)  # warm-up, untimed
    replies, tokens, start = [], 0, time.perf_counter()
    try:
        for m in messages:
            r = llm.create_chat_completion(messages=m, max_tokens=max_tokens, **sampling)
            replies.append(r["choices"][0]["message"]["content"])
            tokens += r["usage"]["completion_tokens"]
    except Exception as exc:  # noqa: BLE001 - a crash is a finding of this probe, reported in its table
        return {"error": f"{type(exc).__name__}: {exc}"[:200], "calls_done": len(replies)}
    seconds = time.perf_counter() - start
    return {"replies": replies, "s_per_call": seconds / len(messages), "out_tok_per_s": tokens / seconds}


def render(report: dict) -> str:
    lines = ["# Prompt-lookup speculative decoding on the 0.5B target", "",
             "| task | decoding | s/call | output tok/s | speed-up | replies identical to plain |",
             "|---|---|---|---|---|---|"]
    for task, rows in report["tasks"].items():
        plain = rows["plain"]
        for name, row in rows.items():
            if "error" in row:
                lines.append(f"| {task} | {name} | crashed after {row['calls_done']} calls: {row['error']} | | | |")
                continue
            same = sum(a == b for a, b in zip(row["replies"], plain["replies"], strict=True))
            lines.append(f"| {task} | {name} | {row['s_per_call']:.2f} | {row['out_tok_per_s']:.1f} "
                         f"| {plain['s_per_call'] / row['s_per_call']:.2f}x | {same}/{len(plain['replies'])} |")
    return "\n".join(lines + ["", f"Command: `{report['command']}`", ""])


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", default="math-basic:12,humaneval:8", help="task:n pairs, comma-separated")
    parser.add_argument("--drafts", default="10,4", help="draft lengths (num_pred_tokens) to try")
    parser.add_argument("--max-tokens", type=int, default=320)
    parser.add_argument("--out", default="examples/results/prompt_lookup")
    args = parser.parse_args(argv)
    engine = LlamaCppEngine("qwen2.5-coder-0.5b")
    report = {"command": "python examples/prompt_lookup_probe.py " + " ".join(argv or []), "tasks": {}}
    for spec in args.tasks.split(","):
        task, n = spec.split(":")
        messages = requests(task, int(n))
        rows = report["tasks"][task] = {"plain": run_config(engine, messages, None, args.max_tokens)}
        for draft in (int(d) for d in args.drafts.split(",")):
            name = f"prompt lookup, {draft} draft tokens"
            rows[name] = run_config(engine, messages, draft, args.max_tokens)
            print(f"[prompt lookup] {task}: {name} done", flush=True)
    return write_report(args.out, "prompt_lookup", report, render)


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])
