"""Per-role LM accounting (target vs teacher) and hard budgets.

DSPy tells a callback when any LM call starts and ends, and tells `settings.usage_tracker` the
usage of every call that was not a cache hit. `UsageMeter` is both: the callback notes which role's
LM is calling (by LM identity), the tracker attributes the billed usage to that role. Each call
reserves its place in the budget when it starts (calls in flight on other threads count), so a cap
is exact with any number of threads; a call that would exceed a cap is refused before it reaches
the model. Failed calls are counted per role and kind, and the first fatal one is kept so the
optimizer can stop loudly (`cd_dspy.core.failures`).
"""

from __future__ import annotations

import threading
from typing import Any

from dspy.utils.callback import BaseCallback

from cd_dspy.config import Budget
from cd_dspy.core.failures import LMUnavailableError, failure_kind, is_fatal
from cd_dspy.core.result import RoleUsage

TARGET, TEACHER = "target", "teacher"


class BudgetExhausted(BaseException):
    """Raised inside an LM call that a budget cap does not allow.

    A BaseException on purpose, like KeyboardInterrupt: DSPy logs and swallows `Exception`s raised by
    callbacks, and its adapters retry a failed call with another format; neither may turn a refused
    call into a spent one. The optimizer catches it at each phase and stops with the best program so far.
    """


class UsageMeter(BaseCallback):
    """Counts LM calls and tokens per role and enforces a `Budget`."""

    def __init__(self, teacher_lm: Any = None, budget: Budget | None = None):
        self.teacher_ids = {id(teacher_lm)} if teacher_lm is not None else set()
        self.budget = budget or Budget()
        self.usage = {TARGET: RoleUsage(), TEACHER: RoleUsage()}
        self.exhausted: str | None = None
        self.refused = 0  # calls refused by a cap (a batch that saw one holds failures that are not real)
        self.fatal: tuple[str, Any, BaseException] | None = None  # (role, LM, exception) of the first fatal call
        self._in_flight = {TARGET: 0, TEACHER: 0}
        self._lm_errors = {TARGET: 0, TEACHER: 0}  # calls that raised (not refused ones)
        self._billed: set[str] = set()  # call ids that reached the model (not cache hits)
        self._costed: set[str] = set()  # history entries whose cost is counted
        self._calls: dict[str, Any] = {}  # call id -> (LM, its history length at the start)
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._closed: str | None = None
        self._local = threading.local()

    # DSPy copies the usage tracker into worker threads; the meter must stay one shared object.
    def __deepcopy__(self, memo: dict) -> UsageMeter:
        return self

    def role_of(self, lm: Any) -> str:
        return TEACHER if id(lm) in self.teacher_ids else TARGET

    # -- DSPy callback -------------------------------------------------------------------------
    def on_lm_start(self, call_id: str, instance: Any, inputs: dict[str, Any]) -> None:
        role = self.role_of(instance)
        self._local.role, self._local.call_id = role, call_id
        with self._lock:
            reason = self._closed or self._over_budget(role)
            if reason:
                self.exhausted = self.exhausted or reason
                self.refused += 1
            else:
                self._in_flight[role] += 1  # reserved until the call ends
                self._calls[call_id] = (instance, len(getattr(instance, "history", None) or ()))
        if reason:
            raise BudgetExhausted(reason)

    def on_lm_end(self, call_id: str, outputs: Any, exception: Exception | None = None) -> None:
        """Release the call's reservation, count a cache hit or a failure, and add the call's cost."""
        with self._lock:
            if call_id not in self._calls:
                return  # a call this meter refused
            instance, start = self._calls[call_id]
        role = self.role_of(instance)
        history = getattr(instance, "history", None)
        # Another thread's call on the same LM may have added entries too: each is counted once.
        for entry in list(history[max(0, min(start, len(history)) - 64):]) if isinstance(history, list) else ():
            cost, uid = (entry.get("cost"), entry.get("uuid")) if isinstance(entry, dict) else (None, None)
            if uid is None or not isinstance(cost, int | float) or cost <= 0:
                continue
            with self._lock:
                if uid not in self._costed:
                    self._costed.add(uid)
                    self.usage[role].cost_usd += float(cost)
        with self._lock:  # counted in full before the call stops being in flight (close() waits for that)
            del self._calls[call_id]
            if call_id in self._billed:
                self._billed.discard(call_id)  # its reservation was turned into a billed call already
            else:
                self._in_flight[role] -= 1
                if exception is None:
                    self.usage[role].cached_calls += 1
            if exception is not None and not isinstance(exception, BudgetExhausted):
                failures = self.usage[role].failures
                kind = failure_kind(exception)
                failures[kind] = failures.get(kind, 0) + 1
                self._lm_errors[role] += 1
                if is_fatal(exception) and self.fatal is None:
                    self.fatal = (role, instance, exception)
            self._idle.notify_all()

    def close(self, timeout: float = 600.0) -> None:
        """Refuse every further call, then wait (up to `timeout` s) for the calls still in flight on other
        threads: when a compile returns or raises, none of its LM calls is still running or counting."""
        with self._lock:
            self._closed = self._closed or "the compile has ended"
            self._idle.wait_for(lambda: not self._calls, timeout=timeout)

    def raise_if_fatal(self) -> None:
        """Raise `LMUnavailableError` if any call so far failed fatally."""
        if self.fatal is not None:
            role, lm, exc = self.fatal
            raise LMUnavailableError(role, lm, exc)

    def lm_errors(self, role: str) -> int:
        """How many calls of `role` have raised so far."""
        with self._lock:
            return self._lm_errors[role]

    def count_failure(self, role: str, kind: str) -> None:
        """Count a per-example failure found after the call (e.g. an unparseable reply)."""
        with self._lock:
            failures = self.usage[role].failures
            failures[kind] = failures.get(kind, 0) + 1

    # -- DSPy usage tracker (called only for calls that were not cache hits) --------------------
    def add_usage(self, model: str, usage: dict[str, Any] | None) -> None:
        role = getattr(self._local, "role", TARGET)
        usage = dict(usage or {})
        with self._lock:
            call_id = getattr(self._local, "call_id", None)
            if call_id in self._calls and call_id not in self._billed:
                self._billed.add(call_id)
                self._in_flight[role] -= 1  # the reservation becomes the billed call: counted once
            record = self.usage[role]
            record.calls += 1
            record.prompt_tokens += int(usage.get("prompt_tokens") or usage.get("input_tokens") or 0)
            record.completion_tokens += int(usage.get("completion_tokens") or usage.get("output_tokens") or 0)
            # cost is read from the LM's history entry in on_lm_end (DSPy prices calls there, not in usage)

    def add_calls(self, role: str, calls: int, prompt_tokens: int = 0, completion_tokens: int = 0) -> None:
        """Count calls made elsewhere (worker processes, `cd_dspy.scale.workers`) once they are reported."""
        with self._lock:
            record = self.usage[role]
            record.calls += calls
            record.prompt_tokens += prompt_tokens
            record.completion_tokens += completion_tokens

    def add_cost(self, role: str, cost_usd: float) -> None:
        with self._lock:
            self.usage[role].cost_usd += cost_usd

    def _over_budget(self, role: str) -> str | None:
        b, u, flying = self.budget, self.usage, self._in_flight
        if role == TARGET and b.max_target_calls is not None and u[TARGET].calls + flying[TARGET] >= b.max_target_calls:
            return f"target call budget reached ({b.max_target_calls} calls)"
        if (role == TEACHER and b.max_teacher_calls is not None
                and u[TEACHER].calls + flying[TEACHER] >= b.max_teacher_calls):
            return f"teacher call budget reached ({b.max_teacher_calls} calls)"
        tokens = sum(r.prompt_tokens + r.completion_tokens for r in u.values())
        if b.max_tokens is not None and tokens >= b.max_tokens:
            return f"token budget reached ({b.max_tokens} tokens)"
        cost = sum(r.cost_usd for r in u.values())
        if b.max_cost_usd is not None and cost >= b.max_cost_usd:
            return f"cost budget reached (${b.max_cost_usd:.2f})"
        return None

    def snapshot(self) -> dict[str, RoleUsage]:
        with self._lock:
            return {role: RoleUsage.from_dict(u.to_dict()) for role, u in self.usage.items()}

    def restore(self, usage: dict[str, RoleUsage]) -> None:
        """Start from the usage of an earlier, interrupted run of the same compile."""
        with self._lock:
            for role, record in usage.items():
                self.usage[role] = RoleUsage.from_dict(record.to_dict())


def prompt_tokens(lm: Any, messages: list[dict[str, Any]]) -> int | None:
    """Prompt tokens of one request of `lm`: exact for an in-process engine that can count them
    (`LlamaCppEngine.prompt_tokens`), litellm's count for an API model (its own tokenizer where litellm knows the
    model, else an approximation), None for another in-process engine or when counting fails."""
    engine = getattr(lm, "engine", None)
    try:
        if callable(getattr(engine, "prompt_tokens", None)):
            return engine.prompt_tokens(messages)
        if engine is not None and not isinstance(engine, str):  # another in-process engine: no tokenizer known
            return None
        import litellm

        return int(litellm.token_counter(model=getattr(lm, "model", ""), messages=messages))
    except Exception:  # a model without a chat template, an unknown message shape: no count rather than a wrong one
        return None


class PromptTokenCounter(BaseCallback):
    """Counts the prompt tokens of every LM request, DSPy cache hits included: what a user pays per request
    (demonstrations and rules make prompts longer). `per_call(role)` is the mean over the calls seen."""

    def __init__(self, teacher_lm: Any = None):
        self.teacher_ids = {id(teacher_lm)} if teacher_lm is not None else set()
        self.counts: dict[str, list[int]] = {TARGET: [], TEACHER: []}
        self.uncounted = 0
        self._lock = threading.Lock()

    def __deepcopy__(self, memo: dict) -> PromptTokenCounter:  # one shared counter across DSPy's threads
        return self

    def on_lm_start(self, call_id: str, instance: Any, inputs: dict[str, Any]) -> None:
        messages = inputs.get("messages") or [{"role": "user", "content": inputs.get("prompt") or ""}]
        count = prompt_tokens(instance, messages)
        role = TEACHER if id(instance) in self.teacher_ids else TARGET
        with self._lock:
            if count is None:
                self.uncounted += 1
            else:
                self.counts[role].append(count)

    def per_call(self, role: str = TARGET) -> float | None:
        counts = self.counts[role]
        return sum(counts) / len(counts) if counts else None
