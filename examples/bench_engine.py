"""Benchmark the local llama.cpp engine: throughput through dspy.LM vs raw llama.cpp, and parse failures.

Usage: python examples/bench_engine.py [--n 50] [--model qwen2.5-coder-0.5b] [--arms chat,json,json_nogrammar]
Writes examples/results/engine.json and examples/results/engine.md. Caching is off, so numbers are real.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import time
from pathlib import Path

import dspy
from dspy.lm15 import Config, Message, Request
from dspy.utils.exceptions import AdapterParseError

from cd_dspy.lms import LlamaCppEngine, local_lm

RESULTS = Path(__file__).parent / "results"
SYSTEM = "You are a patient teacher. " + " ".join(
    f"Guideline {i}: explain each step of the reasoning in plain words and check it." for i in range(25)
)
TOPICS = ["how binary search works", "why the sky is blue", "how a hash map handles collisions",
          "what recursion is", "how compound interest grows"]


class NoGrammarEngine(LlamaCppEngine):
    """Same engine without response_format support: JSONAdapter only asks for JSON in the prompt."""

    supports_response_schema = False
    supported_params = frozenset({"temperature", "max_tokens", "stop", "seed"})


def _timed(fn):
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def bench_throughput(lm: dspy.LM, max_tokens: int, repeats: int = 3) -> dict:
    """Prefill and decode tokens/s per prompt: dspy.LM (our engine, cache off) vs raw llama.cpp.

    Raw and dspy.LM calls alternate (order flipped each repeat) on the same Llama; per-prompt medians.
    """
    eng: LlamaCppEngine = lm.engine
    llama = eng.llama
    raw_kw = {"temperature": 0.0, "top_k": eng.top_k, "top_p": eng.top_p,
              "repeat_penalty": eng.repeat_penalty, "seed": eng.seed}
    rows = []
    for topic in TOPICS:
        user = f"Explain {topic} in detail, step by step."
        msgs = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}]

        def raw(n, msgs=msgs):
            llama.reset()  # no KV reuse: measure a full prefill
            o = llama.create_chat_completion(messages=msgs, max_tokens=n, **raw_kw)
            usage, text = o["usage"], o["choices"][0]["message"]["content"]
            return usage["prompt_tokens"], usage["completion_tokens"], text

        def via_dspy(n, user=user):
            llama.reset()
            req = Request(model=lm.model, system=SYSTEM, messages=(Message.user(user),),
                          config=Config(max_tokens=n, temperature=0.0))
            o = lm(req)
            return o.usage.input_tokens, o.usage.output_tokens, o.text

        samples: dict[str, list] = {"raw": [], "dspy": []}
        for r in range(repeats):
            order = (("raw", raw), ("dspy", via_dspy)) if r % 2 == 0 else (("dspy", via_dspy), ("raw", raw))
            for name, fn in order:
                t1, (p_tok, _, _) = _timed(lambda fn=fn: fn(1))
                tn, (_, c_tok, text) = _timed(lambda fn=fn: fn(max_tokens))
                samples[name].append({"prompt_tokens": p_tok, "completion_tokens": c_tok,
                                      "prefill_tps": p_tok / t1,
                                      "decode_tps": (c_tok - 1) / max(tn - t1, 1e-9), "text_head": text[:60]})
        row: dict = {"topic": topic}
        for name, ss in samples.items():
            row[name] = {**ss[0], "prefill_tps": statistics.median(x["prefill_tps"] for x in ss),
                         "decode_tps": statistics.median(x["decode_tps"] for x in ss)}
        row["same_output"] = row["raw"]["text_head"] == row["dspy"]["text_head"]
        rows.append(row)
        raw_tps, dspy_tps = row["raw"]["decode_tps"], row["dspy"]["decode_tps"]
        print(f"  {topic}: decode tok/s raw {raw_tps:.1f} / dspy {dspy_tps:.1f}", flush=True)

    def med(side, key):
        return statistics.median(r[side][key] for r in rows)

    summary = {k: {"raw": med("raw", k), "dspy": med("dspy", k),
                   "ratio": statistics.median(r["dspy"][k] / r["raw"][k] for r in rows)}
               for k in ("prefill_tps", "decode_tps")}
    return {"per_prompt": rows, "median": summary, "max_tokens": max_tokens, "repeats": repeats}


def bench_prefix_reuse(lm: dspy.LM) -> dict:
    """Time a shared-prefix call after a cold one (llama.cpp keeps the last call's tokens in its KV cache)."""
    llama = lm.engine.llama
    msgs = lambda q: [{"role": "system", "content": SYSTEM}, {"role": "user", "content": q}]  # noqa: E731
    llama.reset()
    cold, out = _timed(lambda: llama.create_chat_completion(messages=msgs("What is 2+2?"), max_tokens=1))
    warm, _ = _timed(lambda: llama.create_chat_completion(messages=msgs("What is 3+5?"), max_tokens=1))
    return {"prompt_tokens": out["usage"]["prompt_tokens"], "cold_s": cold, "shared_prefix_s": warm,
            "speedup": cold / warm}


def make_questions(n: int, seed: int = 0) -> list[tuple[str, float]]:
    """Simple generated arithmetic word problems with their answers."""
    rng = random.Random(seed)
    names = ["Ann", "Ben", "Cara", "Dev", "Eli", "Fay", "Gus", "Hana"]
    items = ["apples", "pencils", "stickers", "marbles", "books", "cookies"]
    out = []
    for _ in range(n):
        who, what = rng.choice(names), rng.choice(items)
        a, b, c = rng.randint(3, 40), rng.randint(2, 9), rng.randint(1, 20)
        kind = rng.randrange(4)
        if kind == 0:
            q = f"{who} has {a} {what} and buys {b} bags with {c} {what} each. How many {what} now?"
            ans = a + b * c
        elif kind == 1:
            q = f"{who} has {a + c} {what}, gives away {c}, then doubles the rest. How many {what}?"
            ans = 2 * a
        elif kind == 2:
            q, ans = f"{b} friends share {a * b} {what} equally. How many {what} does each friend get?", a
        else:
            q = f"A box holds {b} {what}. {who} fills {a} boxes and loses {c} {what}. How many are left?"
            ans = a * b - c
        out.append((q, float(ans)))
    return out


def bench_parse(lm: dspy.LM, arm: str, questions: list[tuple[str, float]]) -> dict:
    """Run ChainOfThought on each question with one adapter; count parse failures, truncations, accuracy."""
    adapter = (dspy.ChatAdapter(use_json_adapter_fallback=False) if arm == "chat" else dspy.JSONAdapter())
    program = dspy.ChainOfThought("question -> answer: float")
    fails = errors = correct = truncated = 0
    times = []
    for q, gold in questions:
        n_hist = len(lm.history)
        t = time.perf_counter()
        try:
            with dspy.context(lm=lm, adapter=adapter):
                pred = program(question=q)
            correct += abs(float(pred.answer) - gold) < 1e-6
        except AdapterParseError:
            fails += 1
        except Exception as exc:  # noqa: BLE001 - recorded, not fatal
            errors += 1
            print(f"    error: {type(exc).__name__}: {str(exc)[:120]}")
        times.append(time.perf_counter() - t)
        truncated += any(getattr(h.get("response"), "finish_reason", None) == "length"
                         for h in lm.history[n_hist:])
    n = len(questions)
    print(f"  {arm}: parse failures {fails}/{n}, correct {correct}/{n}, mean {statistics.mean(times):.1f}s")
    return {"n": n, "parse_failures": fails, "parse_failure_rate": fails / n, "other_errors": errors,
            "correct": correct, "accuracy": correct / n, "truncated": truncated,
            "mean_s": statistics.mean(times)}


def write_md(res: dict, path: Path) -> None:
    tp, lines = res["throughput"]["median"], []
    rep = res["throughput"].get("repeats", 1)
    lines += [f"# Local engine benchmark ({res['model']}, {res['cpu_threads']} threads, cache off)", "",
              f"Machine load average at start {res['loadavg_start'][0]:.1f}, end {res['loadavg_end'][0]:.1f} "
              "(shared cores: throughput is noisy).", "",
              f"## Throughput: dspy.LM + LlamaCppEngine vs raw llama_cpp (5 prompts x {rep} alternating "
              "runs, medians)", "",
              "| metric | raw tok/s | dspy.LM tok/s | ratio |", "|---|---|---|---|"]
    for k in ("prefill_tps", "decode_tps"):
        lines.append(f"| {k} | {tp[k]['raw']:.1f} | {tp[k]['dspy']:.1f} | {tp[k]['ratio']:.0%} |")
    kv = res["prefix_reuse"]
    lines += ["", f"KV prefix reuse: {kv['prompt_tokens']}-token prompt, cold {kv['cold_s']:.2f}s, next call "
              f"with the same prefix {kv['shared_prefix_s']:.2f}s ({kv['speedup']:.0f}x; automatic in "
              "llama_cpp.Llama).", "",
              "## Parse failures: ChainOfThought('question -> answer: float'), generated arithmetic", "",
              "| adapter | n | parse failures | rate | other errors | truncated | accuracy | mean s/call |",
              "|---|---|---|---|---|---|---|---|"]
    labels = {"chat": "ChatAdapter (no JSON fallback)", "json": "JSONAdapter + grammar",
              "json_nogrammar": "JSONAdapter, prompt only"}
    for arm, r in res["parse"].items():
        lines.append(f"| {labels.get(arm, arm)} | {r['n']} | {r['parse_failures']} "
                     f"| {r['parse_failure_rate']:.0%} | {r['other_errors']} | {r['truncated']} "
                     f"| {r['accuracy']:.0%} | {r['mean_s']:.1f} |")
    path.write_text("\n".join(lines) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", default="qwen2.5-coder-0.5b")
    ap.add_argument("--n", type=int, default=50)
    ap.add_argument("--max-tokens", type=int, default=256)
    ap.add_argument("--arms", default="chat,json")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--skip-throughput", action="store_true")
    ap.add_argument("--skip-parse", action="store_true",
                    help="re-measure throughput only (merged into json)")
    args = ap.parse_args()
    lm = local_lm(args.model, cache=False, max_tokens=args.max_tokens)
    res = {"model": args.model, "cpu_threads": lm.engine.n_threads or os.cpu_count(),
           "platform": platform.platform(), "started": time.strftime("%Y-%m-%d %H:%M:%S"),
           "loadavg_start": os.getloadavg()}
    if args.skip_parse and (RESULTS / "engine.json").is_file():
        res = {**json.loads((RESULTS / "engine.json").read_text()), **res}
    if not args.skip_throughput:
        print("throughput:", flush=True)
        res["throughput"] = bench_throughput(lm, max_tokens=128, repeats=args.repeats)
        res["prefix_reuse"] = bench_prefix_reuse(lm)
    questions = make_questions(args.n)
    res.setdefault("parse", {})
    for arm in ([] if args.skip_parse else args.arms.split(",")):
        arm_lm = lm
        if arm == "json_nogrammar":
            arm_lm = dspy.LM(lm.model, engine=NoGrammarEngine(args.model), cache=False, temperature=0.0,
                             max_tokens=args.max_tokens)
        res["parse"][arm] = bench_parse(arm_lm, arm, questions)
        RESULTS.mkdir(parents=True, exist_ok=True)
        (RESULTS / "engine.json").write_text(json.dumps(res, indent=2))
    res["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
    res["loadavg_end"] = os.getloadavg()
    (RESULTS / "engine.json").write_text(json.dumps(res, indent=2))
    if "throughput" in res:
        write_md(res, RESULTS / "engine.md")
    print(f"wrote {RESULTS / 'engine.json'}")


if __name__ == "__main__":
    main()
