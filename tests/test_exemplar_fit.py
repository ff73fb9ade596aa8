"""examples/exemplar_fit.py: each demo becomes its zero-shot prompt and the reply the adapter would write."""

from __future__ import annotations

import math

import dspy
from conftest import load_example

fit = load_example("exemplar_fit")


def test_each_demo_becomes_a_zero_shot_prompt_and_its_adapter_reply():
    program = dspy.ChainOfThought("question -> answer: float")
    program.predict.demos = [dspy.Example(question="What is 2 + 3?", reasoning="2 + 3 = 5.", answer=5.0)]
    turns = fit.exemplar_turns(program, dspy.ChatAdapter())
    assert len(turns) == 1 and turns[0]["inputs"] == {"question": "What is 2 + 3?"}
    assert "2 + 3 = 5." in turns[0]["reply"] and "[[ ## answer ## ]]" in turns[0]["reply"]
    assert "2 + 3 = 5." not in "".join(m["content"] for m in turns[0]["messages"])  # the prompt has no demo
    assert turns[0]["messages"][-1]["content"].count("What is 2 + 3?") == 1


def test_fit_row_reports_mean_log_probability_and_perplexity():
    row = fit.fit_row([-1.0, -3.0])
    assert row == {"tokens": 2, "mean_logprob": -2.0, "perplexity": round(math.exp(2.0), 3)}
