"""Local `cd-dspy worker` processes for tests and benchmarks: started here, each ready when it returns."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cd_dspy.scale.workers import WorkerError


def start_local_workers(storage: str, study: str, n: int, out_dir: Path, *, wait: float = 120.0,
                        envs: Sequence[dict[str, str]] | None = None,
                        ready_timeout: float = 120.0) -> list[tuple[subprocess.Popen, Path]]:
    """Start `n` `cd-dspy worker` processes here (output in `out_dir`/workerI.out, or workerI-K.out where that
    file exists: no file is overwritten; `envs[i]` added to the i-th one's environment) and return once each is
    looking for the study: (process, output file) pairs."""
    procs = []
    for i in range(n):
        cmd = [sys.executable, "-m", "cd_dspy.cli.main", "-v", "worker", "--storage", storage, "--study", study,
               "--wait", str(wait)]
        env = {**os.environ, **(envs[i] if envs else {})}
        out, handle = _new_file(Path(out_dir), f"worker{i}", ".out")
        with handle:
            procs.append((subprocess.Popen(cmd, env=env, stdout=handle, stderr=subprocess.STDOUT), out))
    deadline = time.monotonic() + ready_timeout
    for proc, out in procs:
        while "Worker: looking for" not in out.read_text():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise WorkerError(f"worker {out.name} did not start: {out.read_text()[-2000:]}")
            time.sleep(0.1)
    return procs


def _new_file(folder: Path, stem: str, suffix: str) -> tuple[Path, Any]:
    """(path, handle) of a file created here that did not exist: `stem+suffix`, else `stem-1+suffix`, ..."""
    for number in range(10_000):
        path = folder / f"{stem}{f'-{number}' if number else ''}{suffix}"
        try:
            return path, open(path, "x")  # exclusive: never an existing file
        except FileExistsError:
            continue
    raise WorkerError(f"{folder} holds {stem}{suffix} and 9999 numbered copies; pass an empty out_dir.")
