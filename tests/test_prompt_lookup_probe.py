"""examples/prompt_lookup_probe.py without a model: the requests it sends are the tasks' real DSPy messages, and
its table computes speed-ups and identical replies against the plain run and reports a crash as a crash."""

from __future__ import annotations

from conftest import load_example

probe = load_example("prompt_lookup_probe")


def test_requests_are_the_tasks_formatted_messages():
    math, code = probe.requests("math-basic", 3), probe.requests("humaneval", 2)
    assert len(math) == 3 and len(code) == 2
    assert all(m[-1]["role"] == "user" for m in math + code)
    assert "question" in math[0][-1]["content"] and "def " in code[0][-1]["content"]
    assert len({m[-1]["content"] for m in math}) == 3  # one request per example


def test_table_reports_speed_up_identical_replies_and_crashes():
    rows = {"plain": {"replies": ["a", "b"], "s_per_call": 4.0, "out_tok_per_s": 25.0},
            "prompt lookup, 10 draft tokens": {"replies": ["a", "c"], "s_per_call": 8.0, "out_tok_per_s": 12.5},
            "prompt lookup, 4 draft tokens": {"error": "ValueError: could not broadcast", "calls_done": 1}}
    table = probe.render({"command": "python examples/prompt_lookup_probe.py", "tasks": {"humaneval": rows}})
    assert "| humaneval | plain | 4.00 | 25.0 | 1.00x | 2/2 |" in table
    assert "| humaneval | prompt lookup, 10 draft tokens | 8.00 | 12.5 | 0.50x | 1/2 |" in table
    assert "crashed after 1 calls: ValueError: could not broadcast" in table
