"""The OS side of `cd_dspy.sandbox.run`: which containment this host allows, and setting it up per run.

`isolation_info` probes once which `unshare` launcher works here (network, PID and mount namespaces,
the drop to ``nobody``) and whether a ``pids`` cgroup can be made, and warns once about what is
missing; per run, `make_cgroup`/`empty_cgroup` cap and kill its processes, `rlimits` and `preexec`
set its resource limits, and `sweep_token` kills strays that carry its token.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid

logger = logging.getLogger("cd_dspy.sandbox.run")  # the sandbox's warnings, under the name users filter on
TOKEN_VAR = "CD_SANDBOX_TOKEN"
NOBODY = 65534
PRIVATE_DIRS = ("/tmp", "/var/tmp", "/dev/shm", "/run/lock")
# Runs as (namespace) root in the new mount namespace before the drop to nobody; "$@" is the rest. The
# working directory (often under /tmp) is bound back in at its own path through /proc/self/cwd.
_MOUNT_SCRIPT = (
    f'set -e; work=$(pwd -P); for d in {" ".join(PRIVATE_DIRS)}; do [ ! -d "$d" ] || mount -t tmpfs'
    ' -o size=64m,nr_inodes=4096,mode=1777,nosuid,nodev cd-sandbox "$d"; done; mkdir -p "$work";'
    ' mount --no-canonicalize --bind /proc/self/cwd "$work"; cd "$work"; exec "$@"'
)
EXPECTED = {  # mechanism -> what its absence allows the program to do
    "netns": "it can use the network, including services on the host's localhost",
    "pidns": "daemons it starts are killed only by the /proc sweep for its token",
    "mountns": "it can read and write the host's " + ", ".join(PRIVATE_DIRS),
    "uid-drop": "it runs as the calling user and can read, change or delete that user's files",
    "cgroup-pids": "processes are capped only by the per-user RLIMIT_NPROC, shared by concurrent runs",
}
_CGROUP_ROOTS = ("/sys/fs/cgroup/pids", "/sys/fs/cgroup")


# --------------------------------------------------------------------------- probing


def _candidate_launchers() -> list[tuple[list[str], list[str]]]:
    unshare = shutil.which("unshare")
    out: list[tuple[list[str], list[str]]] = []
    if unshare:
        ns = [unshare, "--net", "--pid", "--fork", "--kill-child"]
        mnt = ["--mount", "/bin/sh", "-c", _MOUNT_SCRIPT, "cd-sandbox-mount"]
        if os.geteuid() == 0:
            drop = ["--setgid", str(NOBODY), "--setuid", str(NOBODY)]
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
                    os.chown(tmp, NOBODY, NOBODY)
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
                info["degraded"] = [m for m in EXPECTED if m not in have]
                if info["degraded"]:
                    why = "" if shutil.which("unshare") else " (`unshare` from util-linux is not on PATH)"
                    logger.warning(
                        "Sandbox isolation is degraded%s; model-written code runs without: %s", why,
                        "; ".join(f"{m} ({EXPECTED[m]})" for m in info["degraded"]))
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


# --------------------------------------------------------------------------- per run


def make_cgroup(root: str | None, token: str, max_procs: int) -> str | None:
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


def empty_cgroup(path: str | None) -> None:
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


def sweep_token(token: str) -> int:
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


def preexec(limits: dict[int, int], cgroup_procs: str | None):
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


def rlimits(*, timeout_s: float, memory_mb: int, max_file_mb: int, max_procs: int, max_open_files: int,
            cgroup: str | None) -> dict[int, int]:
    """The resource limits of one run (set in the child by `preexec`)."""
    return {
        resource.RLIMIT_CPU: math.ceil(timeout_s) + 1,
        resource.RLIMIT_AS: memory_mb * 1024 * 1024,
        resource.RLIMIT_FSIZE: max_file_mb * 1024 * 1024,
        # per-user count (shared by concurrent runs); the per-run cap is the cgroup when there is one
        resource.RLIMIT_NPROC: max_procs if cgroup is None else max(16 * max_procs, 1024),
        resource.RLIMIT_NOFILE: max_open_files,
        resource.RLIMIT_CORE: 0,
    }
