"""The benchmark's `bettertogether` row: DSPy's BetterTogether (prompt -> weights -> prompt) with the teacher program
as its teacher and the weight step trained and served by cd_dspy's LoRA provider. End to end on the tiny random
Qwen2 of test_distill_tiny (its `tiny` fixture) with the scripted solving teacher; it skips with a NOT TESTED
warning where that fixture does (no `distill` extra, llama-cpp-python or conversion scripts)."""

from __future__ import annotations

from conftest import load_example
from test_distill_tiny import tiny  # noqa: F401  (module-scoped fixture: the tiny Qwen2 as HF dir and GGUF)

from cd_dspy.testing.solving_teacher import solving_teacher_lm

bench = load_example("benchmark")
SIM = ["--task", "simulated", "--train", "6", "--val", "3", "--test", "3", "--seed", "0"]


def test_bettertogether_needs_a_local_target(tmp_path):
    data = bench.main([*SIM, "--methods", "bettertogether", "--out", str(tmp_path / "sim")])
    rec = data["methods"]["bettertogether"]
    assert rec["status"] == "error" and "the target must be a local model" in rec["error"]


def test_bettertogether_runs_prompt_weights_prompt_on_a_local_model(tiny, tmp_path):  # noqa: F811
    args = bench.parse_args([*SIM, "--methods", "bettertogether", "--out", str(tmp_path / "tiny"),
                             "--peer-budget", "6"])  # 1 random candidate: 4 programs per prompt step
    runner = bench.Benchmark(args)  # the simulated task's data, metric and program
    runner.args.task, runner.args.target = "tiny", str(tiny.gguf)  # ...with the tiny GGUF as the trained target
    runner.peer_budget = args.peer_budget
    runner.student_settings = {"max_tokens": 12, "grammar": "never", "n_threads": 1, "n_ctx": 1024, "cache": False}
    runner.teacher = solving_teacher_lm()
    rec = runner.run("bettertogether")
    assert rec["status"] == "ok", rec.get("error")
    strategies = {step["strategy"] for step in rec["steps"]}
    assert {"(unoptimized)", "p", "p -> w", "p -> w -> p"} <= strategies, strategies
    trained = [step for step in rec["steps"] if step["strategy"].startswith("p -> w")]
    assert all(step["lora"] and step["lora"].endswith("adapter.gguf") for step in trained)  # served with the LoRA
    assert list((tmp_path / "tiny" / "bettertogether_run").glob("*/adapter.gguf"))  # trained under the run dir
    assert rec["message"].startswith("BetterTogether returned ")
    test_usage = rec["usage"]["test"]  # the tuned model's calls count as the target's (a parse failure adds one)
    assert test_usage["target"]["calls"] >= 3 and test_usage.get("teacher", {}).get("calls", 0) == 0
