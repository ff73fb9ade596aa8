"""Live progress: a line per phase and tqdm bars for the long loops; `enabled=False` silences all."""

from __future__ import annotations

import logging
import sys
import time
from contextlib import contextmanager

from tqdm.auto import tqdm

logger = logging.getLogger("cd_dspy")
IN_RESULT = "cd_dspy_in_result"  # set on a log record whose warning the result's `warnings` also keep


def log_result_warning(text: str) -> None:
    """Log a warning that the result keeps too (`result.warnings`), once: a library user gets it from logging;
    the CLI, which prints the result's warnings in its summary, leaves these records off its console."""
    logger.warning("Concept Distillation: %s", text, extra={IN_RESULT: True})


class Progress:
    """Shows which phase runs and how far the loops inside it are."""

    def __init__(self, enabled: bool = True):
        self.enabled = enabled
        self._bars: list[tqdm] = []

    @contextmanager
    def phase(self, name: str, seconds: dict[str, float]):
        """Time a phase into `seconds[name]` and announce it."""
        if self.enabled:
            tqdm.write(f"[cd-dspy] phase: {name}", file=sys.stderr)
        started = time.perf_counter()
        try:
            yield
        finally:
            seconds[name] = round(seconds.get(name, 0.0) + time.perf_counter() - started, 3)
            logger.info("Phase %s took %.1f s.", name, seconds[name])

    def note(self, text: str) -> None:
        """One line of news (what a phase found), shown above any bar."""
        if self.enabled:
            tqdm.write(f"[cd-dspy] {text}", file=sys.stderr)

    def bar(self, description: str, total: int, initial: int = 0) -> tqdm:
        bar = tqdm(total=total, initial=initial, desc=description, disable=not self.enabled, leave=False,
                   file=sys.stderr, dynamic_ncols=True)
        self._bars.append(bar)
        return bar

    def close(self) -> None:
        for bar in self._bars:
            bar.close()
        self._bars.clear()
