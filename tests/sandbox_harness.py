"""The sandbox tests' harness: hostile-program runner, process probes, what the machine can isolate,
and directories a sandboxed program could reach."""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import tempfile
import textwrap
import warnings

import pytest

from cd_dspy.sandbox.run import TOKEN_VAR, SandboxResult, run_untrusted

T = 1.5  # sandbox timeout used for hostile programs
SLACK = 4.0  # allowed overhead on top of the timeout

PRINT_TOKEN = f"import os\nprint('TOKEN=' + os.environ['{TOKEN_VAR}'], flush=True)\n"


def run(code: str, **kw) -> SandboxResult:
    kw.setdefault("timeout_s", T)
    res = run_untrusted(textwrap.dedent(code), **kw)
    assert res.duration_s < kw["timeout_s"] + SLACK, res
    return res


def token_of(res: SandboxResult) -> str:
    for line in res.stdout_tail.splitlines():
        if line.startswith("TOKEN="):
            return line[len("TOKEN="):]
    raise AssertionError(f"no token printed: {res}")


def alive_with_token(token: str) -> list[int]:
    needle = f"{TOKEN_VAR}={token}".encode()
    pids = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/environ", "rb") as f:
                    if needle in f.read():
                        pids.append(int(name))
            except OSError:
                pass
    return pids


@functools.cache
def machine_lacks(mech: str) -> str:
    """Why this machine cannot provide ``mech`` at all ("" when it can), whatever the sandbox chose."""
    unshare = shutil.which("unshare")
    if unshare is None:
        return "`unshare` (util-linux) is not on PATH"
    if mech == "uid-drop" and os.geteuid() != 0:
        return "not running as root"
    user = [] if os.geteuid() == 0 else ["--user", "--map-root-user"]
    args = {"netns": [*user, "--net", "true"],
            "mountns": [*user, "--mount", "/bin/sh", "-c", "mount -t tmpfs cd-probe /tmp"],
            "uid-drop": ["--setgid", "65534", "--setuid", "65534", "true"]}[mech]
    try:
        r = subprocess.run([unshare, *args], capture_output=True, text=True, timeout=15)
    except (OSError, subprocess.SubprocessError) as e:
        return f"`unshare {' '.join(args)}` failed: {e}"
    return "" if r.returncode == 0 else f"`unshare {' '.join(args)}` failed: {r.stderr.strip()[:200]}"


def require(mech: str) -> None:
    """Skip loudly (never pass vacuously) when the machine cannot provide ``mech``."""
    if why := machine_lacks(mech):
        msg = f"NOT TESTED: {mech} is unavailable on this machine ({why}); the sandbox is weaker here"
        warnings.warn(msg, stacklevel=2)
        pytest.skip(msg)


def _visible_dir(mode: int) -> str:
    """A fresh directory the sandboxed program can reach: outside the private /tmp-like mounts."""
    private = ("/tmp", "/var/tmp", "/dev/shm", "/run/lock")
    for base in map(os.path.realpath, ("/run", "/var/lib", os.path.expanduser("~"), os.getcwd())):
        ancestors = [base]
        while ancestors[-1] != "/":
            ancestors.append(os.path.dirname(ancestors[-1]))
        if (os.path.isdir(base) and os.access(base, os.W_OK | os.X_OK)
                and not any(a in private for a in ancestors)  # nobody must be able to traverse to it
                and (os.geteuid() != 0 or all(os.stat(a).st_mode & 0o001 for a in ancestors))):
            d = tempfile.mkdtemp(prefix=".cd-sandbox-test-", dir=base)
            os.chmod(d, mode)
            return d
    pytest.skip("NOT TESTED: no directory outside /tmp that the sandboxed program could reach")


@pytest.fixture
def shared_dir():
    """A world-writable directory (so a dropped-privilege sandbox could write there if not contained)."""
    d = _visible_dir(0o777)
    yield d
    subprocess.run(["rm", "-rf", d], check=False)


@pytest.fixture
def host_dir():
    """A directory of the caller's, readable by everyone, outside the sandbox's private mounts."""
    require("uid-drop")
    d = _visible_dir(0o755)
    yield d
    subprocess.run(["rm", "-rf", d], check=False)
