"""The run directory: every artifact of a compile, written as soon as it exists.

JSON files are replaced atomically (temporary file + `os.replace`), so a killed process never
leaves half a file; JSONL logs are appended one complete, flushed line at a time, and a torn
last line (a kill mid-write) is ignored on read. A rerun with the same directory resumes.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)


class RunDirError(RuntimeError):
    """A run directory that cannot be used as it is."""


class RunDir:
    """Reads and writes the artifacts of one compile under `path` (or nowhere, if `path` is None)."""

    def __init__(self, path: str | os.PathLike | None):
        self.path = Path(path) if path is not None else None
        self._lock = threading.Lock()
        if self.path is None:
            return
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            probe = self.path / ".write-test"
            probe.write_text("ok")
            probe.unlink()
        except OSError as exc:
            raise RunDirError(
                f"run_dir {str(self.path)!r} is not a writable directory ({exc.strerror or exc}); "
                "pass a directory you can write to, or run_dir=None to keep nothing on disk."
            ) from exc

    @property
    def enabled(self) -> bool:
        return self.path is not None

    def file(self, name: str) -> Path | None:
        return self.path / name if self.path is not None else None

    def exists(self, name: str) -> bool:
        return self.path is not None and (self.path / name).exists()

    def write_json(self, name: str, data: Any) -> None:
        """Atomically replace `name` with `data` as JSON."""
        if self.path is None:
            return
        target = self.path / name
        fd, tmp = tempfile.mkstemp(dir=self.path, prefix=f".{name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                json.dump(data, handle, indent=2, ensure_ascii=False, default=str)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def read_json(self, name: str) -> Any:
        """Read `name`, or raise RunDirError naming the corrupt file and the fix."""
        assert self.path is not None
        target = self.path / name
        try:
            return json.loads(target.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise RunDirError(
                f"{target} is unreadable or corrupt ({exc}); delete it (that phase will be redone) "
                "or use a fresh run_dir."
            ) from exc

    def append_jsonl(self, name: str, record: dict[str, Any]) -> None:
        """Append one complete line; safe from several threads."""
        if self.path is None:
            return
        line = json.dumps(record, ensure_ascii=False, default=str) + "\n"
        with self._lock, open(self.path / name, "a", encoding="utf-8") as handle:
            handle.write(line)
            handle.flush()
            os.fsync(handle.fileno())

    def read_jsonl(self, name: str) -> list[dict[str, Any]]:
        """All complete records of `name`; a torn or corrupt line is skipped with a warning."""
        if self.path is None or not (self.path / name).exists():
            return []
        records = []
        for number, line in enumerate((self.path / name).read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                logger.warning("Skipping a torn line %d in %s (an interrupted write).", number, name)
        return records

    def refresh(self, keys: dict[str, str], artifacts: dict[str, Sequence[str]], *, resume: bool) -> list[str]:
        """Keep the finished work whose inputs are unchanged; return the phases to redo.

        `keys` maps each phase, in order, to the key of its inputs; `artifacts` maps it to its files. The
        first phase whose key changed and every phase after it lose their files. resume=False starts over.
        """
        if self.path is None:
            return list(keys)
        name = "fingerprint.json"
        if not resume:
            for child in self.path.iterdir():
                if child.is_file():
                    child.unlink()
        previous = self.read_json(name) if self.exists(name) else {}
        phases = list(keys)
        changed = next((i for i, phase in enumerate(phases) if previous.get(phase) != keys[phase]), len(phases))
        redo = phases[changed:]
        stale = [f for phase in redo for f in artifacts.get(phase, ()) if self.exists(f)]
        if stale:
            logger.info("Run dir %s: the inputs of %s changed; redoing from there (removing %s).", self.path,
                        redo[0], ", ".join(stale))
        for file in stale:
            self.file(file).unlink()
        self.write_json(name, keys)
        return redo
