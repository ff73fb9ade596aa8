"""The embedded engine against raw llama.cpp: prefill and decode speed, prefix reuse, calls per minute.

    python examples/bench_engine.py --llama-bench PATH/llama-bench --calls examples/results/calls/bench_calls.json

Three levels, same model, same 2 threads, cache off:
- raw llama.cpp: `llama-bench` built from the llama.cpp sources vendored in the installed
  llama-cpp-python (prompt processing of 512 tokens, generation of 128; flash attention off and on);
- llama-cpp-python's `Llama` called directly, and `dspy.LM` over the project's `LlamaCppEngine`,
  alternating on the same prompts (their per-prompt medians);
- end to end: the main job's calls per minute measured by examples/bench_calls.py, against the
  calls per minute raw llama.cpp's rates would allow for the same prompt and output tokens (a cold
  prompt every call: an upper bound on prefill cost, so the ratio can exceed 100% when llama.cpp's
  prefix reuse saves prefill).
Writes examples/results/engine.json and engine.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import time
from pathlib import Path

import dspy
from dspy.lm15 import Config, Message, Request

from cd_dspy.lms import LlamaCppEngine, ensure_model, local_lm

RESULTS = Path(__file__).parent / "results"
SYSTEM = "You are a patient teacher. " + " ".join(
    f"Guideline {i}: explain each step of the reasoning in plain words and check it." for i in range(25)
)
TOPICS = ["how binary search works", "why the sky is blue", "how a hash map handles collisions",
          "what recursion is", "how compound interest grows"]


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


def bench_raw(llama_bench: str, model: str, threads: int, repeats: int) -> dict:
    """llama-bench's prompt-processing (512) and generation (128) tokens/s, flash attention off and on."""
    out = subprocess.run([llama_bench, "-m", str(ensure_model(model)), "-p", "512", "-n", "128", "-t", str(threads),
                          "-r", str(repeats), "-fa", "0,1", "-o", "json"], capture_output=True, text=True, check=True)
    rows = json.loads(out.stdout)
    result = {}
    for r in rows:
        kind = "prefill_tps" if r["n_prompt"] else "decode_tps"
        result.setdefault(f"flash_attn_{int(r['flash_attn'])}", {})[kind] = r["avg_ts"]
    result["build_commit"] = rows[0]["build_commit"]
    return result


def end_to_end(calls_json: Path, raw: dict) -> dict:
    """Measured calls/min per configuration of bench_calls.py vs the raw llama.cpp bound for its tokens."""
    calls = json.loads(calls_json.read_text())
    pp, tg = raw["flash_attn_0"]["prefill_tps"], raw["flash_attn_0"]["decode_tps"]
    out = {"source": str(calls_json), "command": calls["command"], "configs": {}}
    for name, c in calls["configs"].items():
        bound = 60 / (c["prompt_tokens_per_call"] / pp + c["output_tokens_per_call"] / tg)
        out["configs"][name] = {"calls_per_minute": c["calls_per_minute"], "raw_bound_calls_per_minute": bound,
                                "ratio": c["calls_per_minute"] / bound, "prompt_tokens": c["prompt_tokens_per_call"],
                                "output_tokens": c["output_tokens_per_call"]}
    return out


def write_md(res: dict, path: Path) -> None:
    lines = [f"# Embedded engine vs raw llama.cpp ({res['model']}, {res['cpu_threads']} threads, cache off)", "",
             f"Command: `{res['command']}`. Load average at start {res['loadavg_start'][0]:.1f}, at end "
             f"{res['loadavg_end'][0]:.1f} (2 cores: a load above 2 means other work shared them).", ""]
    raw = res.get("raw")
    if raw:
        lines += [f"## Raw llama.cpp (`llama-bench`, build {raw['build_commit']}, pp512 / tg128)", "",
                  "| flash attention | prefill tok/s | decode tok/s |", "|---|---|---|"]
        lines += [f"| {k[-1]} | {v['prefill_tps']:.1f} | {v['decode_tps']:.1f} |" for k, v in raw.items()
                  if k.startswith("flash_attn")]
    tp = res["throughput"]["median"]
    lines += ["", f"## llama-cpp-python and dspy.LM (5 prompts x {res['throughput']['repeats']} alternating runs, "
              "medians)", "", "| metric | raw llama.cpp | llama_cpp.Llama | dspy.LM + LlamaCppEngine | engine / Llama "
              "| engine / raw llama.cpp |", "|---|---|---|---|---|---|"]
    for k in ("prefill_tps", "decode_tps"):
        r = raw["flash_attn_0"][k] if raw else float("nan")
        lines.append(f"| {k} | {r:.1f} | {tp[k]['raw']:.1f} | {tp[k]['dspy']:.1f} | {tp[k]['ratio']:.0%} "
                     f"| {tp[k]['dspy'] / r:.0%} |")
    kv = res["prefix_reuse"]
    lines += ["", f"KV prefix reuse: {kv['prompt_tokens']}-token prompt, cold {kv['cold_s']:.2f}s, next call "
              f"with the same prefix {kv['shared_prefix_s']:.2f}s ({kv['speedup']:.0f}x; automatic in "
              "llama_cpp.Llama, and the evaluations of one trial share their instruction prefix).", ""]
    e2e = res.get("end_to_end")
    if e2e:
        lines += ["## End to end: the main job's target calls", "", f"From `{e2e['command']}`.", "",
                  "| configuration | prompt / output tokens per call | calls/min measured | raw llama.cpp bound "
                  "| measured / bound |", "|---|---|---|---|---|"]
        for name, c in e2e["configs"].items():
            lines.append(f"| {name} | {c['prompt_tokens']:.0f} / {c['output_tokens']:.0f} | "
                         f"{c['calls_per_minute']:.1f} | {c['raw_bound_calls_per_minute']:.1f} | {c['ratio']:.0%} |")
    path.write_text("\n".join(lines) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="qwen2.5-coder-0.5b")
    ap.add_argument("--llama-bench", help="path to llama-bench built from the vendored llama.cpp sources")
    ap.add_argument("--calls", type=Path, help="bench_calls.json of examples/bench_calls.py (end-to-end ratios)")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    lm = local_lm(args.model, cache=False, max_tokens=128)
    threads = lm.engine.n_threads or os.cpu_count()
    res = {"model": args.model, "cpu_threads": threads, "platform": platform.platform(),
           "command": "python examples/bench_engine.py" + (" --llama-bench llama-bench" if args.llama_bench else "")
           + (f" --calls {args.calls}" if args.calls else ""),
           "started": time.strftime("%Y-%m-%d %H:%M:%S"), "loadavg_start": os.getloadavg()}
    if args.llama_bench:
        print("raw llama.cpp:", flush=True)
        res["raw"] = bench_raw(args.llama_bench, args.model, threads, args.repeats)
    print("throughput:", flush=True)
    res["throughput"] = bench_throughput(lm, max_tokens=128, repeats=args.repeats)
    res["prefix_reuse"] = bench_prefix_reuse(lm)
    if args.calls and "raw" in res:
        res["end_to_end"] = end_to_end(args.calls, res["raw"])
    res["finished"], res["loadavg_end"] = time.strftime("%Y-%m-%d %H:%M:%S"), os.getloadavg()
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "engine.json").write_text(json.dumps(res, indent=2))
    write_md(res, RESULTS / "engine.md")
    print((RESULTS / "engine.md").read_text())


if __name__ == "__main__":
    main()
