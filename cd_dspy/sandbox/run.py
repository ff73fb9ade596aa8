"""Run untrusted, model-written Python in a contained subprocess.

Containment is done by the OS, not by the Python code that runs:

* ``unshare`` (util-linux) puts the program in a new network namespace (no network, loopback down)
  and a new PID namespace (when the program's PID-1 exits or is killed, the kernel kills every
  process left in it, including ``setsid`` daemons); when running as root the program also drops
  to ``nobody`` (it cannot touch files owned by the caller, nor signal the caller).
* a new mount namespace with fresh, size-capped tmpfs mounts over ``/tmp``, ``/var/tmp``,
  ``/dev/shm`` and ``/run/lock`` (the world-writable places): what the program writes there is
  private to the run and gone when it ends (its working directory is bound back in).
* rlimits (CPU, address space, file size, process count, open files, no core dumps).
* a ``pids`` cgroup capping the number of processes when the host lets us create one.
* a fresh temporary working directory (also ``HOME``/``TMPDIR``), removed afterwards, and a scrubbed
  environment (no API keys).
* output read in chunks with a byte cap (the run is killed when the cap is passed).
* at the end the whole process group gets SIGKILL, the cgroup is emptied, and ``/proc`` is scanned
  for stray processes carrying this run's unique environment token.

The mechanisms are probed once (:func:`isolation_info`) and degrade gracefully but loudly: a WARNING is
logged once naming what is missing and what that allows; each result records the mechanisms in force
(``mechanisms``) and the missing ones (``degraded``). A run passes only when it exits with 0 AND prints a
per-run random sentinel that the harness appends after the code, so ``sys.exit(0)``/``os._exit(0)`` tricks fail.
"""

from __future__ import annotations

import os
import re
import selectors
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field

from cd_dspy.sandbox.isolation import (
    EXPECTED,
    NOBODY,
    PRIVATE_DIRS,
    TOKEN_VAR,
    empty_cgroup,
    isolation_info,
    make_cgroup,
    preexec,
    rlimits,
    sweep_token,
)

__all__ = ["PRIVATE_DIRS", "SandboxResult", "isolation_info", "run_untrusted"]

GUARD_PREAMBLE = """\
import builtins as _b, os as _o, shutil as _s, subprocess as _sp
for _n in ("system", "fork", "forkpty", "kill", "killpg", "remove", "unlink", "rmdir",
           "removedirs", "putenv", "setuid", "execv", "execve", "execvp"):
    if hasattr(_o, _n):
        setattr(_o, _n, None)
_s.rmtree = _s.move = None
_sp.Popen = None
del _b, _o, _s, _sp, _n
"""


@dataclass
class SandboxResult:
    """Outcome of one sandboxed run."""

    passed: bool
    status: str  # "passed" | "failed" | "timeout" | "killed" | "error"
    stdout_tail: str
    stderr_tail: str
    duration_s: float
    returncode: int | None = None
    reason: str = ""
    network_isolation: str = "none"  # "netns" | "none"
    mechanisms: list[str] = field(default_factory=list)
    tmp_isolation: str = "none"  # "mountns" (private /tmp, /var/tmp, /dev/shm, /run/lock) | "none"
    degraded: list[str] = field(default_factory=list)  # expected mechanisms missing in this run


# --------------------------------------------------------------------------- helpers


def _hoist_future(code: str) -> tuple[str, str]:
    lines = code.splitlines()
    fut = [ln for ln in lines if re.match(r"^from __future__ import ", ln)]
    rest = [ln for ln in lines if not re.match(r"^from __future__ import ", ln)]
    return "\n".join(fut), "\n".join(rest)


def _signame(num: int) -> str:
    try:
        return signal.Signals(num).name
    except ValueError:
        return str(num)


def _tail(buf: bytearray) -> str:
    return bytes(buf).decode("utf-8", errors="replace")


# --------------------------------------------------------------------------- main entry


def run_untrusted(
    code: str,
    *,
    timeout_s: float = 5.0,
    memory_mb: int = 512,
    max_output_bytes: int = 1_000_000,
    tail_bytes: int = 8_192,
    max_file_mb: int = 16,
    max_procs: int = 64,
    max_open_files: int = 128,
    require_sentinel: bool = True,
    guard: bool = False,
) -> SandboxResult:
    """Run ``code`` as a Python program in a contained subprocess; never raises for bad code.

    ``passed`` is True only for exit status 0 plus the harness's sentinel (when ``require_sentinel``).
    ``guard`` prepends a small in-process guard that disables dangerous functions (defence in depth
    only; the OS limits are the containment).
    """
    if timeout_s <= 0 or memory_mb <= 0 or max_output_bytes <= 0:
        raise ValueError("timeout_s, memory_mb and max_output_bytes must be positive")
    info = isolation_info()
    mechs = list(info["mechanisms"]) + ["rlimits", "proc-sweep"]
    token = uuid.uuid4().hex
    sentinel = f"CD_SANDBOX_OK_{uuid.uuid4().hex}"
    future, body = _hoist_future(code)
    program = "\n".join(
        p for p in (future, GUARD_PREAMBLE if guard else "", body,
                    f"\n__import__('os').write(1, b'\\n{sentinel}\\n')\n" if require_sentinel else "") if p
    )

    workdir = tempfile.mkdtemp(prefix="cd-sandbox-")
    home, tmp = os.path.join(workdir, "home"), os.path.join(workdir, "tmp")
    os.mkdir(home)
    os.mkdir(tmp)
    if "uid-drop" in mechs:
        for p in (workdir, home, tmp):
            os.chown(p, NOBODY, NOBODY)
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": home, "TMPDIR": tmp,
           TOKEN_VAR: token}
    cgroup = make_cgroup(info["cgroup_root"], token, max_procs)
    if cgroup:
        mechs.append("cgroup-pids")
    degraded = [m for m in EXPECTED if m not in mechs]
    limits = rlimits(timeout_s=timeout_s, memory_mb=memory_mb, max_file_mb=max_file_mb, max_procs=max_procs,
                     max_open_files=max_open_files, cgroup=cgroup)
    argv = [*info["launcher"], info["interpreter"], "-I", "-S", "-"]
    if "pidns" in mechs:  # a tiny shell is PID 1, so the program keeps normal signal semantics
        argv = [*info["launcher"], "/bin/sh", "-c", '"$0" -I -S -; exit $?', info["interpreter"]]
    net = "netns" if "netns" in mechs else "none"
    iso = {"tmp_isolation": "mountns" if "mountns" in mechs else "none", "degraded": degraded}
    start = time.monotonic()
    try:
        proc = subprocess.Popen(
            argv, cwd=workdir, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, start_new_session=True, close_fds=True,
            preexec_fn=preexec(limits, os.path.join(cgroup, "cgroup.procs") if cgroup else None),
        )
    except OSError as e:
        empty_cgroup(cgroup)
        shutil.rmtree(workdir, ignore_errors=True)
        return SandboxResult(False, "error", "", "", time.monotonic() - start, None,
                             f"could not start the sandbox: {e}", net, mechs, **iso)

    def feed() -> None:
        try:
            proc.stdin.write(program.encode())
            proc.stdin.close()
        except OSError:
            pass

    threading.Thread(target=feed, daemon=True).start()
    out, err = bytearray(), bytearray()
    total, status, reason = 0, None, ""
    deadline = start + timeout_s
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ, out)
    sel.register(proc.stderr, selectors.EVENT_READ, err)
    exited_at: float | None = None
    try:
        while sel.get_map():
            now = time.monotonic()
            if now >= deadline:
                status, reason = "timeout", f"wall-clock timeout after {timeout_s:g}s"
                break
            if proc.poll() is not None:
                exited_at = exited_at or now
                if now - exited_at > 0.5:  # a leaked child holds the pipe open
                    break
            for key, _ in sel.select(timeout=min(0.05, max(0.0, deadline - now))):
                chunk = os.read(key.fd, 65536)
                if not chunk:
                    sel.unregister(key.fileobj)
                    continue
                total += len(chunk)
                buf = key.data
                buf += chunk
                if len(buf) > tail_bytes + len(sentinel) + 2:
                    del buf[: len(buf) - tail_bytes - len(sentinel) - 2]
            if total > max_output_bytes:
                status, reason = "killed", f"output exceeded {max_output_bytes} bytes"
                break
    finally:
        sel.close()
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except OSError:
            pass
        empty_cgroup(cgroup)
        swept = sweep_token(token)
        try:
            rc = proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            rc = None
        for s in (proc.stdout, proc.stderr):
            s.close()
        shutil.rmtree(workdir, ignore_errors=True)
    duration = time.monotonic() - start
    if swept:
        reason = (reason + f"; killed {swept} stray process(es)").lstrip("; ")
    stdout = _tail(out)
    ok_mark = sentinel in stdout
    stdout = stdout.replace(f"\n{sentinel}\n", "").replace(sentinel, "")[-tail_bytes:]
    stderr = _tail(err)[-tail_bytes:]
    if status is None:
        if rc == 0 and (ok_mark or not require_sentinel):
            status = "passed"
        elif rc is not None and (rc < 0 or ("pidns" in mechs and rc > 128)):
            status, reason = "killed", f"killed by signal {_signame(-rc if rc < 0 else rc - 128)}"
        elif rc == 0:
            status, reason = "failed", "exited 0 before the harness sentinel was printed"
        else:
            status, reason = "failed", f"exit status {rc}"
    return SandboxResult(status == "passed", status, stdout, stderr, duration, rc, reason, net, mechs, **iso)
