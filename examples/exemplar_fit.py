"""How natural each worked exemplar of saved programs is to the target: the target's mean log-probability per token
of the exemplar's reply, written as the task's adapter writes it, after the zero-shot prompt for the exemplar's own
question. A probe for choosing among verified solutions, no generation (one prefill per exemplar):

    python examples/exemplar_fit.py --load cd=examples/results/bench_math_basic/cd_exemplars_run/program.json \\
        --load bootstrap_fewshot=examples/results/bench_math_basic/bfs_then_cd_run/program.json \\
        --out examples/results/exemplar_fit_math_basic.json
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import sys
from pathlib import Path
from typing import Any

import dspy

from cd_dspy.lms import ensure_model
from cd_dspy.phases.integrate import load_program
from cd_dspy.programs import get_task, make_adapter


def exemplar_turns(program: dspy.Module, adapter: dspy.Adapter) -> list[dict[str, Any]]:
    """Per demo of each predictor: its question's zero-shot prompt (messages) and its reply as the adapter writes
    it."""
    turns = []
    for name, predictor in program.named_predictors():
        signature = predictor.signature
        for demo in predictor.demos:
            inputs = {k: demo[k] for k in signature.input_fields}
            outputs = {k: demo[k] for k in signature.output_fields if k in demo}
            turns.append({"predictor": name, "inputs": inputs,
                          "messages": adapter.format(signature, demos=[], inputs=inputs),
                          "reply": adapter.format_assistant_message_content(signature, outputs)})
    return turns


def fit_row(token_logprobs: list[float]) -> dict[str, float]:
    """Tokens, mean log-probability per token and perplexity of one reply."""
    mean = sum(token_logprobs) / len(token_logprobs)
    return {"tokens": len(token_logprobs), "mean_logprob": round(mean, 4), "perplexity": round(math.exp(-mean), 3)}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--load", action="append", required=True, metavar="NAME=PATH", help="a saved program (repeatable)")
    p.add_argument("--task", default="math-basic")
    p.add_argument("--target", default="qwen2.5-coder-0.5b")
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    from cd_dspy.distill.logprobs import LlamaScorer

    task = get_task(args.task)
    scorer = LlamaScorer(ensure_model(args.target), top_k=1, n_ctx=2048)
    rows = []
    for spec in args.load:
        name, _, path = spec.partition("=")
        program = load_program(task.make_program(), path, allow_unsafe_lm_state=True)
        for turn in exemplar_turns(program, make_adapter(task.adapter)):
            fit = fit_row(scorer.score(turn["messages"], turn["reply"]).token_logprobs)
            rows.append({"program": name, "predictor": turn["predictor"], "inputs": turn["inputs"], **fit})
            print(f"{name}: {fit}  {json.dumps(turn['inputs'])[:70]}")
    command = shlex.join(["python", "examples/exemplar_fit.py", *(argv or sys.argv[1:])])
    Path(args.out).write_text(json.dumps({"target": args.target, "rows": rows, "command": command}, indent=2) + "\n")


if __name__ == "__main__":
    main()
