"""A score cache and a notice board that several processes and machines share through one database.

`ScoreStore` keeps the (prompt, example) scores of `CachedEvaluator` in a table of an SQLAlchemy
database (the Optuna study's own RDB: PostgreSQL or MySQL across machines, SQLite on one machine),
so no worker pays for a pair another worker already scored. It also holds what the main compile
publishes for its workers (`publish`/`published`), which can be far larger than the study's user
attributes should be (they are read on every poll). Each score is written as soon as it exists.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError, OperationalError, ProgrammingError

logger = logging.getLogger(__name__)

_metadata = sa.MetaData()
SCORES = sa.Table(
    "cd_dspy_scores", _metadata,
    sa.Column("key", sa.String(64), primary_key=True),  # CachedEvaluator's key: prompt, metric, examples
    sa.Column("idx", sa.Integer, primary_key=True),  # the example's index in that example list
    sa.Column("examples", sa.String(64), nullable=False, index=True),  # examples_key, for `forget`
    sa.Column("score", sa.Float, nullable=False),
)
PUBLISHED = sa.Table(
    "cd_dspy_published", _metadata,
    sa.Column("study", sa.String(512), primary_key=True),
    sa.Column("spec", sa.Text, nullable=False),
)


class ScoreStore:
    """Scores and published specs in the database at `url` (tables created on first use)."""

    def __init__(self, url: str):
        self.url = url
        kwargs: dict[str, Any] = {"pool_pre_ping": True}
        if url.startswith("sqlite"):
            kwargs["connect_args"] = {"timeout": 60}  # several local processes wait for SQLite's write lock
        try:
            self.engine = sa.create_engine(url, **kwargs)
        except ImportError as exc:
            raise ImportError(f"the database driver for {url.split('://')[0]!r} is not installed ({exc}); for "
                              "PostgreSQL install cd-dspy's 'scale' extra: pip install 'cd-dspy[scale]'.") from exc
        for attempt in range(3):  # several workers may create the tables at the same moment
            try:
                _metadata.create_all(self.engine, checkfirst=True)
                break
            except (IntegrityError, ProgrammingError, OperationalError):
                if attempt == 2:
                    raise

    def get(self, key: str, indices: Sequence[int]) -> dict[int, float]:
        """The stored scores of `key` at `indices` (those not stored are absent)."""
        if not indices:
            return {}
        query = sa.select(SCORES.c.idx, SCORES.c.score).where(SCORES.c.key == key, SCORES.c.idx.in_(list(indices)))
        with self.engine.connect() as connection:
            return {int(i): float(s) for i, s in connection.execute(query)}

    def put(self, key: str, index: int, score: float, examples: str) -> None:
        """Store one score; a score already stored (by another worker) is kept."""
        try:
            with self.engine.begin() as connection:
                connection.execute(SCORES.insert().values(key=key, idx=index, examples=examples, score=float(score)))
        except IntegrityError:
            pass  # the same deterministic pair, scored twice: the first is kept

    def forget(self, examples: str) -> int:
        """Delete every score of the example list `examples` (a fresh start); how many there were."""
        with self.engine.begin() as connection:
            return connection.execute(SCORES.delete().where(SCORES.c.examples == examples)).rowcount

    def publish(self, study: str, spec: dict[str, Any]) -> None:
        """Replace what the study `study` publishes for its workers."""
        text = json.dumps(spec, sort_keys=True, default=str)
        with self.engine.begin() as connection:
            connection.execute(PUBLISHED.delete().where(PUBLISHED.c.study == study))
            connection.execute(PUBLISHED.insert().values(study=study, spec=text))

    def published(self, study: str) -> dict[str, Any] | None:
        with self.engine.connect() as connection:
            text = connection.execute(sa.select(PUBLISHED.c.spec).where(PUBLISHED.c.study == study)).scalar()
        return json.loads(text) if text is not None else None

    def close(self) -> None:
        self.engine.dispose()


def retrying(make: Any, what: str, seconds: float = 30.0) -> Any:
    """`make()`, retried while several processes race to create the same tables of a fresh database (a
    database error); a malformed URL fails at once."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            return make()
        except (OperationalError, IntegrityError, ProgrammingError) as exc:  # e.g. a table another process created
            if time.monotonic() > deadline:
                raise RuntimeError(f"cannot open {what}: {type(exc).__name__}: {exc}") from exc
            time.sleep(0.5)
