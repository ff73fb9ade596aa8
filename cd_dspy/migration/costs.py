"""What a migration costs: dollars where a price is known, else seconds of LM time.

Prices come from a user's price table first ({model: [input $/Mtok, output $/Mtok]}, JSON or YAML), then
from litellm's shipped price map (`litellm.model_cost`, offline). A model with neither (a local GGUF, a
simulated LM) has no price: nothing is invented, and the migration is then costed in seconds of LM time
per request, measured on the held-out runs, with the compile's LM seconds as its one-off cost.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from dspy.utils.callback import BaseCallback

from cd_dspy.core.heldout import RunSummary
from cd_dspy.core.result import RoleUsage
from cd_dspy.core.run_dir import RunDir
from cd_dspy.core.stats import break_even

COMPILE_CALLS_LOG = "compile_calls.jsonl"
USD, SECONDS = "usd", "seconds"


class PriceTableError(ValueError):
    """A price table that cannot be read; the message names the entry and the fix."""


@dataclass(frozen=True)
class Price:
    """Dollars per million input and output tokens, and where the figure came from."""

    input_per_mtok: float
    output_per_mtok: float
    source: str  # "price table" or "litellm"

    def cost(self, prompt_tokens: float, completion_tokens: float) -> float:
        return (prompt_tokens * self.input_per_mtok + completion_tokens * self.output_per_mtok) / 1e6


def load_prices(spec: str | Path | dict | None) -> dict[str, tuple[float, float]]:
    """A price table from a dict or a JSON/YAML file: {model: [input $/Mtok, output $/Mtok]} (or
    {model: {input: .., output: ..}}); model names as the LM's `model` ("openai/gpt-4o-mini") or without
    the provider ("qwen2.5-coder-0.5b")."""
    if spec is None:
        return {}
    if isinstance(spec, dict):
        data, where = spec, "prices"
    else:
        path = Path(spec)
        if not path.is_file():
            raise PriceTableError(f"price table {path} does not exist; pass a JSON or YAML file such as "
                                  '{"openai/gpt-4o-mini": [0.15, 0.6]} ($ per million input and output tokens).')
        text, where = path.read_text(encoding="utf-8"), str(path)
        try:
            if path.suffix.lower() in (".yaml", ".yml"):
                import yaml

                data = yaml.safe_load(text)
            else:
                data = json.loads(text)
        except Exception as exc:  # both parsers name the line
            raise PriceTableError(f"price table {path} is not valid {path.suffix.lstrip('.').upper() or 'JSON'}: "
                                  f"{exc}") from exc
    if not isinstance(data, dict):
        raise PriceTableError(f"{where} must map model names to [input $/Mtok, output $/Mtok], got "
                              f"{type(data).__name__}.")
    return {str(model): _pair(model, value, where) for model, value in data.items()}


def _pair(model: Any, value: Any, where: str) -> tuple[float, float]:
    if isinstance(value, dict) and set(value) == {"input", "output"}:
        value = [value["input"], value["output"]]
    ok = (isinstance(value, list | tuple) and len(value) == 2
          and all(isinstance(v, int | float) and not isinstance(v, bool) and v >= 0 for v in value))
    if not ok:
        raise PriceTableError(f"{where}: the price of {model!r} is {value!r}; write it as [input $/Mtok, output "
                              "$/Mtok] with two non-negative numbers, e.g. [0.15, 0.6].")
    return float(value[0]), float(value[1])


def price_of(model: str, table: dict[str, tuple[float, float]] | None = None) -> Price | None:
    """The price of `model`: the user's table first (by full name, then without the provider), then litellm."""
    names = [model] + ([model.split("/", 1)[1]] if "/" in model else [])
    for name in names:
        if table and name in table:
            return Price(*table[name], source="price table")
    import litellm

    for name in names:
        info = litellm.model_cost.get(name) or {}
        given, taken = info.get("input_cost_per_token"), info.get("output_cost_per_token")
        if isinstance(given, int | float) and isinstance(taken, int | float):
            return Price(given * 1e6, taken * 1e6, source="litellm")
    return None


class CompileClock(BaseCallback):
    """Seconds of every LM call during a compile, by role (the teacher by identity), appended to the run
    directory as each call ends, so an interrupted compile's spent seconds still count after a resume."""

    def __init__(self, run_dir: RunDir, teacher_lm: Any, log_name: str = COMPILE_CALLS_LOG,
                 role_of: Callable[[Any], str] | None = None):
        self.run_dir, self.teacher_id, self.log_name = run_dir, id(teacher_lm), log_name
        self.role_of = role_of  # LM -> "teacher" or "target"; default: the teacher by identity
        self._started: dict[str, tuple[float, str]] = {}
        self._lock = threading.Lock()

    def on_lm_start(self, call_id: str, instance: Any, inputs: dict[str, Any]) -> None:
        role = self.role_of(instance) if self.role_of else "teacher" if id(instance) == self.teacher_id else "target"
        with self._lock:
            self._started[call_id] = (time.perf_counter(), role)

    def on_lm_end(self, call_id: str, outputs: Any, exception: Exception | None = None) -> None:
        with self._lock:
            started, role = self._started.pop(call_id, (None, ""))
        if started is not None:
            self.run_dir.append_jsonl(self.log_name, {"role": role,
                                                      "seconds": round(time.perf_counter() - started, 4)})

    def seconds(self) -> dict[str, float]:
        """LM seconds per role over every run of this compile."""
        totals = {"teacher": 0.0, "target": 0.0}
        for record in self.run_dir.read_jsonl(self.log_name):
            totals[record["role"]] = totals.get(record["role"], 0.0) + float(record["seconds"])
        return totals


def migration_costs(*, models: dict[str, str], runs: dict[str, RunSummary], compile_usage: dict[str, RoleUsage],
                    compile_seconds: dict[str, float], table: dict[str, tuple[float, float]] | None) -> dict[str, Any]:
    """Per-request cost of each held-out run, the compile's cost and the break-even point, in dollars when
    every LM involved has a price, else in seconds of LM time. `models` maps source/target/teacher to the
    LMs' model names; `runs` maps source/target_before/target_after (and any other run of the target: a lever's,
    `cd_dspy.migration.levers`) to their summaries."""
    prices = {role: price_of(name, table) for role, name in models.items()}
    teacher_used = compile_usage.get("teacher", RoleUsage()).calls > 0
    needed = ["source", "target"] + (["teacher"] if teacher_used else [])
    missing = sorted({models[r] for r in needed if prices[r] is None})
    unit = SECONDS if missing else USD
    per_request: dict[str, float | None] = {}
    run_rows: dict[str, dict[str, Any]] = {}
    for run, summary in runs.items():
        price = prices["source" if run == "source" else "target"]  # every other run is the target's
        given, taken = summary.prompt_tokens_per_request or 0.0, summary.completion_tokens_per_request or 0.0
        row = {**summary.to_dict(), "usd_per_request": price.cost(given, taken) if price and summary.measured else None,
               "tokens_per_request": given + taken if summary.measured else None}
        run_rows[run] = row
        per_request[run] = row["usd_per_request"] if unit == USD else summary.mean_lm_seconds
    compile_rows = role_rows(compile_usage, compile_seconds, prices)
    total = sum((r["usd"] or 0.0) if unit == USD else r["seconds"] for r in compile_rows.values())
    source, after = per_request.get("source"), per_request.get("target_after")
    known = source is not None and after is not None
    return {"unit": unit, "missing_prices": missing,
            "prices": {role: (vars(p) if p else None) for role, p in prices.items()},
            "runs": run_rows, "per_request": per_request, "compile": {**compile_rows, "total": total},
            "cost_ratio": after / source if known and source else None,
            "break_even": break_even(total, source, after) if known else None, "measured": known}


def role_rows(usage: dict[str, RoleUsage], seconds: dict[str, float],
              prices: dict[str, Price | None]) -> dict[str, dict[str, Any]]:
    """Calls, tokens, dollars (None without a price) and LM seconds of a one-time job's teacher and target calls;
    `prices` maps teacher/target to the price of the LM that played the role."""
    rows = {}
    for role in ("teacher", "target"):
        used, price = usage.get(role, RoleUsage()), prices.get(role)
        rows[role] = {"calls": used.calls, "cached_calls": used.cached_calls, "prompt_tokens": used.prompt_tokens,
                      "completion_tokens": used.completion_tokens,
                      "usd": price.cost(used.prompt_tokens, used.completion_tokens) if price else None,
                      "seconds": round(seconds.get(role, 0.0), 3)}
    return rows


def one_time_cost(usage: dict[str, RoleUsage], seconds: dict[str, float], models: dict[str, str], *, unit: str,
                  table: dict[str, tuple[float, float]] | None, train_seconds: float = 0.0) -> dict[str, Any]:
    """What a lever costs once (`levers`): its compile's calls by role (`models` maps teacher/target to the
    model that played the role), their dollars or LM seconds, and the training time of a weight update. `total` is
    in `unit`: dollars leave the training time out (a local CPU run has no price), seconds add it."""
    rows = role_rows(usage, seconds, {role: price_of(name, table) for role, name in models.items()})
    if unit == USD:
        total = sum(r["usd"] or 0.0 for r in rows.values())
    else:
        total = sum(r["seconds"] for r in rows.values()) + train_seconds
    return {"roles": rows, "calls": sum(r["calls"] for r in rows.values()),
            "tokens": sum(r["prompt_tokens"] + r["completion_tokens"] for r in rows.values()),
            "train_seconds": round(train_seconds, 3), "total": total, "unit": unit}


class PromptCounts:
    """Prompt tokens per LM call of each held-out program, counted on the request itself (`usage.PromptTokenCounter`:
    demonstrations and rules included, DSPy's cache hits too), kept in `levers/prompt_tokens.json` by program key
    so a rerun that repeats no call still knows them."""

    NAME = "levers/prompt_tokens.json"

    def __init__(self, run_dir: RunDir):
        self.run_dir = run_dir
        self.data: dict[str, dict[str, int]] = run_dir.read_json(self.NAME) if run_dir.exists(self.NAME) else {}

    @contextmanager
    def counting(self, key: str) -> Iterator[None]:
        """Count the prompt tokens of every LM call made inside (stored under `key`, a program key)."""
        import dspy

        from cd_dspy.core.usage import PromptTokenCounter

        counter = PromptTokenCounter()
        try:
            with dspy.context(callbacks=[*dspy.settings.get("callbacks", []), counter]):
                yield
        finally:
            counts = [c for role in counter.counts.values() for c in role]
            if counts:
                entry = self.data.setdefault(key, {"tokens": 0, "calls": 0})
                entry["tokens"] += sum(counts)
                entry["calls"] += len(counts)
                self.run_dir.write_json(self.NAME, self.data)

    def per_request(self, key: str, summary: RunSummary) -> RunSummary:
        """`summary` with its prompt tokens per request counted on the requests (per call × calls per request),
        where they were counted, DSPy's cache hits included (the requests' cost stays unmeasured then); unchanged
        otherwise."""
        entry = self.data.get(key)
        if not entry or not entry["calls"] or not summary.n:
            return summary
        calls = (summary.calls + summary.cached_calls) / summary.n
        return replace(summary, prompt_tokens_per_request=entry["tokens"] / entry["calls"] * calls)
