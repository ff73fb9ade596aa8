"""The run directory: every artifact of a compile, written as soon as it exists.

JSON files are replaced atomically (temporary file + `os.replace`), so a killed process never
leaves half a file; JSONL logs are appended one complete, flushed line at a time, and a torn
last line (a kill mid-write) is ignored on read. A rerun with the same directory resumes.

A run directory is cd-dspy's own: its manifest (`.cd-dspy-run.json`) lists every file and folder cd-dspy
wrote there, each recorded before it is created. Only those are ever overwritten or removed (resume=False,
`--fresh`, a phase redone); a file not in the manifest is never touched: writing over one raises
RunDirError, and a non-empty folder without a manifest is refused. A folder without a manifest that holds
our fingerprint.json (a run of a cd-dspy from before manifests; for migrate, compile/fingerprint.json) is
adopted: the artifact names it holds become its manifest. Reading never needs the manifest.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import threading
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

MANIFEST = ".cd-dspy-run.json"
TEMP_SUFFIX = ".cd-dspy.tmp"  # hidden temporary files of our atomic writes: `.NAME.RANDOM.cd-dspy.tmp`
SQLITE_SIDECARS = ("-journal", "-wal", "-shm")
# the files a compile (and `cd-dspy compile`) writes into its run directory, and those migrate adds to its own
COMPILE_FILES = frozenset({
    "fingerprint.json", "progress.json", "result.json", "program.json", "mistakes.json", "rules.json",
    "collect.jsonl", "explanations.jsonl", "verification.jsonl", "evaluations.jsonl", "report.md",
    "test_scores.json", "solutions.jsonl", "refinements.jsonl", "heldout.jsonl",
    "study.db", *(f"study.db{s}" for s in SQLITE_SIDECARS)})
MIGRATE_FILES = frozenset({"compile", "compile_calls.jsonl", "heldout.jsonl", "report.md", "report.html",
                           "report.json", "rulebook.yaml", "plots", "plots/scores.png", "plots/search.png",
                           "plots/rules.png"})
ARTIFACT_NAMES = COMPILE_FILES | MIGRATE_FILES  # what an old run directory is adopted with
FIX = "pass --run-dir / run_dir= an empty or new folder"


class RunDirError(RuntimeError):
    """A run directory that cannot be used as it is."""


def _is_temp(name: str) -> bool:
    """A hidden temporary file of our atomic writes (today's suffix, or `.tmp` after one of our names)."""
    return name.startswith(".") and (name.endswith(TEMP_SUFFIX) or (
        name.endswith(".tmp") and any(name.startswith(f".{a}.") for a in (*ARTIFACT_NAMES, MANIFEST))))


def _atomic_write(target: Path, text: str) -> Path:
    """Replace `target` with `text` through a hidden temporary file in its folder (never half a file)."""
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=TEMP_SUFFIX)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


def is_run_dir(folder: str | os.PathLike) -> bool:
    """Whether `folder` is a cd-dspy run directory: it has a manifest, or it can be adopted (our fingerprint: a
    JSON object of phase keys, not merely a file of that name)."""
    folder = Path(folder)
    return (folder / MANIFEST).is_file() or any(_is_fingerprint(folder / name)
                                                 for name in ("fingerprint.json", "compile/fingerprint.json"))


def _is_fingerprint(path: Path) -> bool:
    """True for a fingerprint.json a compile wrote: {"collect": key, "induce": key, ...} and nothing else."""
    try:
        data = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    return isinstance(data, dict) and bool(data) and set(data) <= {"collect", "induce", "concepts", "select"} \
        and all(isinstance(v, str) for v in data.values())


def write_file(path: str | os.PathLike, text: str, *, overwrite: bool = False) -> Path:
    """Write `text` to `path` atomically, never over a file cd-dspy did not write: in a run directory the
    manifest decides; elsewhere an existing file is replaced only with `overwrite=True` (`--force`)."""
    target = Path(path)
    if is_run_dir(target.parent):
        return RunDir(target.parent).write_text(target.name, text, overwrite=overwrite)
    if target.exists() and not overwrite:
        raise RunDirError(f"{target} already exists and cd-dspy will not overwrite a file it did not write; "
                          "choose another file, or pass --force (overwrite=True) to replace it.")
    target.parent.mkdir(parents=True, exist_ok=True)
    return _atomic_write(target, text)


class RunDir:
    """Reads and writes the artifacts of one compile under `path` (or nowhere, if `path` is None)."""

    def __init__(self, path: str | os.PathLike | None):
        self.path = Path(path) if path is not None else None
        self._lock = threading.Lock()
        self._manifest_lock = threading.RLock()
        self._owned: set[str] | None = None  # the manifest's names, once claimed
        if self.path is None:
            return
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            fd, probe = tempfile.mkstemp(dir=self.path, prefix=".write-test.", suffix=TEMP_SUFFIX)
            os.close(fd)
            os.unlink(probe)
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

    # -- ownership -------------------------------------------------------------------------------
    def claim(self, adopt: Iterable[str] = ()) -> None:
        """Make sure the directory is cd-dspy's (write its manifest if it is new, empty or adoptable), or raise
        RunDirError naming the folder and the fix; called before the first write. An adopted directory's
        manifest lists the ARTIFACT_NAMES and the names in `adopt` (a compile's phase files) it holds."""
        if self.path is None or self._owned is not None:
            return
        with self._manifest_lock:
            if self._owned is not None:
                return
            if (self.path / MANIFEST).exists():
                self._owned = self._read_manifest()
                return
            present = sorted(child.name for child in self.path.iterdir() if not _is_temp(child.name))
            if present and not is_run_dir(self.path):
                shown = ", ".join(present[:5]) + (f" and {len(present) - 5} more" if len(present) > 5 else "")
                raise RunDirError(f"{self.path} is not empty and is not a cd-dspy run directory (no {MANIFEST}; it "
                                  f"holds {shown}); cd-dspy never overwrites or deletes files it did not write: "
                                  f"{FIX}.")
            adopted = {name for name in ARTIFACT_NAMES.union(adopt) if os.path.lexists(self.path / name)}
            if adopted:
                logger.info("Run dir %s: a run directory without a manifest; adopting %s.", self.path,
                            ", ".join(sorted(adopted)))
            self._write_manifest(adopted)

    def own(self, name: str, *, overwrite: bool = False) -> Path | None:
        """The path of `name`, recorded in the manifest before it is created (its folders too). Raises
        RunDirError if a file of that name exists that cd-dspy did not write (unless `overwrite`)."""
        if self.path is None:
            return None
        if Path(name).is_absolute() or ".." in Path(name).parts:
            raise ValueError(f"{name!r} is not a name inside the run directory.")
        self.claim()
        parent = name.rpartition("/")[0]
        if name not in self._owned:
            with self._manifest_lock:
                if parent:
                    self.own(parent)
                if name not in self._owned:
                    if os.path.lexists(self.path / name) and not overwrite:
                        self.check_free([name])
                    self._write_manifest(self._read_manifest() | self._owned | {name})
        if parent:
            (self.path / parent).mkdir(parents=True, exist_ok=True)
        return self.path / name

    def check_free(self, names: Iterable[str]) -> None:
        """Raise RunDirError if any of `names` exists here and cd-dspy did not write it (before any work)."""
        if self.path is None:
            return
        self.claim()
        foreign = sorted(n for n in names if n not in self._owned and os.path.lexists(self.path / n))
        if foreign:
            raise RunDirError(f"{', '.join(str(self.path / n) for n in foreign)} "
                              f"{'exists' if len(foreign) == 1 else 'exist'} in {self.path} but cd-dspy did not "
                              f"write {'it' if len(foreign) == 1 else 'them'} (not in its {MANIFEST}); cd-dspy "
                              f"never overwrites or deletes a file it did not write: move "
                              f"{'it' if len(foreign) == 1 else 'them'} out, or {FIX}.")

    def sqlite_url(self, name: str = "study.db") -> str | None:
        """The SQLite URL of `name` here (it and the journal files SQLite keeps beside it are ours); None
        without a directory."""
        if self.path is None:
            return None
        for sidecar in SQLITE_SIDECARS:
            self.own(name + sidecar)
        return f"sqlite:///{self.own(name)}"

    def _read_manifest(self) -> set[str]:
        target = self.path / MANIFEST
        if not target.exists():
            return set()
        try:
            files = json.loads(target.read_text(encoding="utf-8"))["files"]
            if not isinstance(files, list) or not all(isinstance(f, str) for f in files):
                raise TypeError("'files' is not a list of names")
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise RunDirError(f"{target}, the list of the files cd-dspy wrote in {self.path}, is unreadable or "
                              f"corrupt ({exc}); {FIX} (or move your own files out of it and delete it).") from exc
        return set(files)

    def _write_manifest(self, names: Iterable[str]) -> None:
        self._owned = set(names)
        _atomic_write(self.path / MANIFEST, json.dumps(
            {"about": "the files and folders cd-dspy wrote in this run directory: only these are ever overwritten "
                      "or removed by it", "files": sorted(self._owned)}, indent=2) + "\n")

    def _remove_owned(self) -> None:
        """Remove every file cd-dspy wrote here (and its folders, when nothing else is left in them)."""
        kept = set()
        for name in sorted(self._owned, key=lambda n: n.count("/"), reverse=True):
            target = self.path / name
            if target.is_dir() and not target.is_symlink():
                try:
                    target.rmdir()
                except OSError:  # something we did not write is inside: keep it (and the folder)
                    kept.add(name)
            else:
                target.unlink(missing_ok=True)
        for child in self.path.iterdir():
            if _is_temp(child.name) and child.is_file():
                child.unlink(missing_ok=True)
        self._write_manifest(kept)

    # -- reading and writing ---------------------------------------------------------------------
    def write_text(self, name: str, text: str, *, overwrite: bool = False) -> Path | None:
        """Atomically replace `name` (a file cd-dspy wrote, or a new one) with `text`."""
        if self.path is None:
            return None
        return _atomic_write(self.own(name, overwrite=overwrite), text)

    def write_json(self, name: str, data: Any) -> None:
        """Atomically replace `name` with `data` as JSON."""
        self.write_text(name, json.dumps(data, indent=2, ensure_ascii=False, default=str))

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
        target = self.own(name)
        with self._lock, open(target, "a", encoding="utf-8") as handle:
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
        first phase whose key changed and every phase after it lose their files. resume=False starts over:
        every file cd-dspy wrote here is removed (and only those: see the module's docstring). A file named
        like one of ours that cd-dspy did not write is refused (RunDirError) before any work starts.
        """
        if self.path is None:
            return list(keys)
        name = "fingerprint.json"
        self.claim(adopt=[f for files in artifacts.values() for f in files])
        if not resume:
            self._remove_owned()
        self.check_free(COMPILE_FILES.union(*artifacts.values()))
        previous = self.read_json(name) if self.exists(name) else {}
        phases = list(keys)
        changed = next((i for i, phase in enumerate(phases) if previous.get(phase) != keys[phase]), len(phases))
        redo = phases[changed:]
        stale = [f for phase in redo for f in artifacts.get(phase, ()) if self.exists(f)]
        if stale:
            logger.info("Run dir %s: the inputs of %s changed; redoing from there (removing %s).", self.path,
                        redo[0], ", ".join(stale))
        for file in stale:  # check_free above: each one is ours
            self.file(file).unlink()
        self.write_json(name, keys)
        return redo


def jsonable(value: Any) -> Any:
    """`value` if JSON can hold it, else its string form."""
    try:
        json.dumps(value)
        return value
    except (TypeError, ValueError):
        if isinstance(value, dict):
            return {str(k): jsonable(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [jsonable(v) for v in value]
        return str(value)
