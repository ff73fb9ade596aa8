"""The failure model: which LM failures stop a compile, and which are scored as failed examples.

* **Fatal** — the LM cannot answer at all: bad credentials, a model or endpoint that does not
  exist, a server that refuses the connection, a model that is not installed, or every call of a
  phase failing. The compile stops with `LMUnavailableError`, naming the role, the LM and the
  cause, and persists nothing of the failed step as finished work; a rerun after the fix resumes.
* **Per example** — a timeout, a rate limit that outlasted the LM's own retries, an unparseable
  reply: the example is scored as a failure (0, the same in collect and select), logged in one
  WARNING line, and counted per role and kind in the result.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

FATAL_ERRORS = frozenset({
    "AuthenticationError", "PermissionDeniedError", "NotFoundError", "APIConnectionError",
    "ConnectionError", "ConnectionRefusedError", "ModelNotInstalledError", "PaymentRequiredError",
    "BudgetExceededError", "ModelNotMappedError", "UnsupportedParamsError",
})
KINDS = {"Timeout": "timeout", "TimeoutError": "timeout", "RateLimitError": "rate_limit",
         "AdapterParseError": "unparseable", "JSONDecodeError": "unparseable"}


class LMUnavailableError(RuntimeError):
    """An LM failed in a way that retrying cannot fix; the compile stops and stores nothing of the step."""

    def __init__(self, role: str, lm: object, cause: BaseException | str):
        name = getattr(lm, "model", None) or str(lm)
        if not isinstance(cause, str):  # name the link of the chain that made it fatal
            cause = next((err for err in _chain(cause) if _names_of(err) & FATAL_ERRORS), cause)
        detail = cause if isinstance(cause, str) else f"{type(cause).__name__}: {cause}"
        super().__init__(f"The {role} LM {name!r} is unavailable ({detail}). Nothing of this step was stored as "
                         "finished work: fix the cause (server, credentials, model name) and rerun with the same "
                         "run_dir to resume.")
        self.role, self.lm_name, self.cause = role, name, cause


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def _names_of(exc: BaseException) -> set[str]:
    return {cls.__name__ for cls in type(exc).__mro__}


def _names(exc: BaseException) -> set[str]:
    return {name for err in _chain(exc) for name in _names_of(err)}


def is_fatal(exc: BaseException) -> bool:
    """True for failures no retry can fix (see the module doc)."""
    return bool(_names(exc) & FATAL_ERRORS)


def failure_kind(exc: BaseException) -> str:
    """A short name for a per-example failure: timeout, rate_limit, unparseable or error."""
    names = _names(exc)
    return next((kind for name, kind in KINDS.items() if name in names), "error")


DSPY_EXAMPLE_ERRORS = ("Error for", "Failed to run or to evaluate")


class _Demote(logging.Filter):
    """Turns DSPy's per-example ERROR records (the whole example and LM reply) into DEBUG ones."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.ERROR and str(record.msg).startswith(DSPY_EXAMPLE_ERRORS):
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
            return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)
        return True


EXAMPLE_ERRORS_LOGGER = "cd_dspy.example_errors"  # cd-dspy's own per-example error dumps (DEBUG)
DSPY_EXAMPLE_LOGGERS = ("dspy.utils.parallelizer", "dspy.evaluate.evaluate", "dspy.teleprompt.bootstrap_trace",
                        EXAMPLE_ERRORS_LOGGER)


@contextmanager
def quiet_example_errors():
    """While a compile runs, DSPy's per-example error dumps go to DEBUG; cd-dspy logs one WARNING line
    per failed example (its index) and counts failures per role and kind in the result."""
    demote = _Demote()
    loggers = [logging.getLogger(name) for name in DSPY_EXAMPLE_LOGGERS]
    for logger in loggers:
        logger.addFilter(demote)
    try:
        yield
    finally:
        for logger in loggers:
            logger.removeFilter(demote)
