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

import functools
import logging
import math
import os
import re
import resource
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field

__all__ = ["PRIVATE_DIRS", "SandboxResult", "isolation_info", "run_untrusted"]

logger = logging.getLogger(__name__)
TOKEN_VAR = "CD_SANDBOX_TOKEN"
_NOBODY = 65534
PRIVATE_DIRS = ("/tmp", "/var/tmp", "/dev/shm", "/run/lock")
# Runs as (namespace) root in the new mount namespace before the drop to nobody; "$@" is the rest. The
# working directory (often under /tmp) is bound back in at its own path through /proc/self/cwd.
_MOUNT_SCRIPT = (
    f'set -e; work=$(pwd -P); for d in {" ".join(PRIVATE_DIRS)}; do [ ! -d "$d" ] || mount -t tmpfs'
    ' -o size=64m,nr_inodes=4096,mode=1777,nosuid,nodev cd-sandbox "$d"; done; mkdir -p "$work";'
    ' mount --no-canonicalize --bind /proc/self/cwd "$work"; cd "$work"; exec "$@"'
)
_EXPECTED = {  # mechanism -> what its absence allows the program to do
    "netns": "it can use the network, including services on the host's localhost",
    "pidns": "daemons it starts are killed only by the /proc sweep for its token",
    "mountns": "it can read and write the host's " + ", ".join(PRIVATE_DIRS),
    "uid-drop": "it runs as the calling user and can read, change or delete that user's files",
    "cgroup-pids": "processes are capped only by the per-user RLIMIT_NPROC, shared by concurrent runs",
}
_CGROUP_ROOTS = ("/sys/fs/cgroup/pids", "/sys/fs/cgroup")

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


# --------------------------------------------------------------------------- probing


def _candidate_launchers() -> list[tuple[list[str], list[str]]]:
    unshare = shutil.which("unshare")
    out: list[tuple[list[str], list[str]]] = []
    if unshare:
        ns = [unshare, "--net", "--pid", "--fork", "--kill-child"]
        mnt = ["--mount", "/bin/sh", "-c", _MOUNT_SCRIPT, "cd-sandbox-mount"]
        if os.geteuid() == 0:
            drop = ["--setgid", str(_NOBODY), "--setuid", str(_NOBODY)]
            out.append((ns + mnt + [unshare] + drop, ["mountns", "netns", "pidns", "uid-drop"]))
            out.append((ns + drop, ["netns", "pidns", "uid-drop"]))
            out.append((ns, ["netns", "pidns"]))
        else:
            ns = [unshare, "--user", "--map-root-user", *ns[1:]]
            out.append((ns + mnt, ["userns", "mountns", "netns", "pidns"]))
            out.append((ns, ["userns", "netns", "pidns"]))
        out.append(([unshare, "--net"], ["netns"]))
    out.append(([], []))
    return out


def _candidate_interpreters() -> list[str]:
    seen: list[str] = []
    for p in (sys.executable, shutil.which("python3") or "", "/usr/bin/python3"):
        if p and os.path.exists(p) and os.path.realpath(p) not in [os.path.realpath(s) for s in seen]:
            seen.append(p)
    return seen


@functools.lru_cache(maxsize=1)
def isolation_info() -> dict:
    """Probe once which launcher works here (warns once about what is missing); returns
    {launcher, interpreter, mechanisms, cgroup_root, degraded}."""
    probe = "import socket,os; s=socket.socket(); s.settimeout(1); print(s.connect_ex(('127.0.0.1', 9)))"
    marker = f"/tmp/cd-sandbox-probe-{uuid.uuid4().hex}"  # written inside; must not appear out here
    for prefix, mechs in _candidate_launchers():
        for interp in _candidate_interpreters():
            tmp = tempfile.mkdtemp(prefix="cd-sandbox-probe-")
            code = probe + (f"; open({marker!r}, 'w').close()" if "mountns" in mechs else "")
            try:
                if "uid-drop" in mechs:
                    os.chown(tmp, _NOBODY, _NOBODY)
                r = subprocess.run(
                    [*prefix, interp, "-I", "-S", "-c", code], cwd=tmp, capture_output=True,
                    timeout=15, env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}, start_new_session=True,
                )
            except (OSError, subprocess.SubprocessError):
                continue
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
            if os.path.exists(marker):  # the mount namespace did not hide the host's /tmp
                os.remove(marker)
                continue
            if r.returncode == 0:
                info = {"launcher": prefix, "interpreter": interp, "mechanisms": list(mechs),
                        "cgroup_root": _probe_cgroup()}
                have = set(mechs) | ({"cgroup-pids"} if info["cgroup_root"] else set())
                info["degraded"] = [m for m in _EXPECTED if m not in have]
                if info["degraded"]:
                    why = "" if shutil.which("unshare") else " (`unshare` from util-linux is not on PATH)"
                    logger.warning(
                        "Sandbox isolation is degraded%s; model-written code runs without: %s", why,
                        "; ".join(f"{m} ({_EXPECTED[m]})" for m in info["degraded"]))
                return info
    raise RuntimeError("no Python interpreter could be started for the sandbox")


def _probe_cgroup() -> str | None:
    for root in _CGROUP_ROOTS:
        if not os.path.exists(os.path.join(root, "cgroup.procs")):
            continue
        if root == "/sys/fs/cgroup":
            ctl = os.path.join(root, "cgroup.controllers")
            if not os.path.exists(ctl) or "pids" not in open(ctl).read().split():
                continue
        test = os.path.join(root, f"cd-sandbox-probe-{uuid.uuid4().hex[:8]}")
        try:
            os.mkdir(test)
            with open(os.path.join(test, "pids.max"), "w") as f:
                f.write("8")
            os.rmdir(test)
            return root
        except OSError:
            try:
                os.rmdir(test)
            except OSError:
                pass
    return None


# --------------------------------------------------------------------------- helpers


def _hoist_future(code: str) -> tuple[str, str]:
    lines = code.splitlines()
    fut = [ln for ln in lines if re.match(r"^from __future__ import ", ln)]
    rest = [ln for ln in lines if not re.match(r"^from __future__ import ", ln)]
    return "\n".join(fut), "\n".join(rest)


def _make_cgroup(root: str | None, token: str, max_procs: int) -> str | None:
    if root is None:
        return None
    path = os.path.join(root, f"cd-sandbox-{token}")
    try:
        os.mkdir(path)
        with open(os.path.join(path, "pids.max"), "w") as f:
            f.write(str(max_procs))
        return path
    except OSError:
        return None


def _empty_cgroup(path: str | None) -> None:
    if not path:
        return
    for _ in range(50):
        try:
            pids = [int(p) for p in open(os.path.join(path, "cgroup.procs")).read().split()]
        except OSError:
            pids = []
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        try:
            os.rmdir(path)
            return
        except OSError:
            time.sleep(0.02)


def _sweep_token(token: str) -> int:
    """SIGKILL every process whose environment carries this run's token; returns how many."""
    needle = f"{TOKEN_VAR}={token}".encode()
    killed = 0
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == os.getpid():
            continue
        try:
            with open(f"/proc/{name}/environ", "rb") as f:
                env = f.read()
        except OSError:
            continue
        if needle in env:
            try:
                os.kill(int(name), signal.SIGKILL)
                killed += 1
            except OSError:
                pass
    return killed


def _preexec(limits: dict[int, int], cgroup_procs: str | None):
    def fn() -> None:  # runs in the forked child before exec: C-level calls only
        if cgroup_procs:
            try:
                fd = os.open(cgroup_procs, os.O_WRONLY)
                os.write(fd, b"0")
                os.close(fd)
            except OSError:
                pass
        for res, val in limits.items():
            try:
                resource.setrlimit(res, (val, val))
            except (ValueError, OSError):
                pass

    return fn


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
            os.chown(p, _NOBODY, _NOBODY)
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": home, "TMPDIR": tmp,
           TOKEN_VAR: token}
    cgroup = _make_cgroup(info["cgroup_root"], token, max_procs)
    if cgroup:
        mechs.append("cgroup-pids")
    degraded = [m for m in _EXPECTED if m not in mechs]
    cpu = math.ceil(timeout_s) + 1
    limits = {
        resource.RLIMIT_CPU: cpu,
        resource.RLIMIT_AS: memory_mb * 1024 * 1024,
        resource.RLIMIT_FSIZE: max_file_mb * 1024 * 1024,
        # per-user count (shared by concurrent runs); the per-run cap is the cgroup when there is one
        resource.RLIMIT_NPROC: max_procs if cgroup is None else max(16 * max_procs, 1024),
        resource.RLIMIT_NOFILE: max_open_files,
        resource.RLIMIT_CORE: 0,
    }
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
            preexec_fn=_preexec(limits, os.path.join(cgroup, "cgroup.procs") if cgroup else None),
        )
    except OSError as e:
        _empty_cgroup(cgroup)
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
        _empty_cgroup(cgroup)
        swept = _sweep_token(token)
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
