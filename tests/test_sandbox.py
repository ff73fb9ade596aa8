"""Hostile programs must be contained by cd_dspy.sandbox.run: host unharmed, failure in bounded time."""

from __future__ import annotations

import logging
import shutil
import subprocess
import textwrap
import time

import pytest
from sandbox_harness import PRINT_TOKEN, SLACK, T, alive_with_token, run, token_of

from cd_dspy.sandbox import isolation as sandbox_isolation
from cd_dspy.sandbox.run import isolation_info

# ----------------------------------------------------------------------------- positive


def test_correct_program_passes():
    res = run("def add(a, b):\n    return a + b\nassert add(2, 3) == 5\nprint('hello')\n")
    assert res.passed and res.status == "passed" and res.returncode == 0
    assert res.stdout_tail.strip() == "hello"  # the sentinel is stripped
    assert "rlimits" in res.mechanisms


def test_future_import_and_guard():
    res = run("from __future__ import annotations\ndef f(x: int) -> int:\n    return x\nassert f(1) == 1\n")
    assert res.passed
    res = run("import os\nassert os.system is None\n", guard=True)
    assert res.passed


def test_failing_assert_fails_with_traceback():
    res = run("assert 1 == 2, 'boom'\n")
    assert not res.passed and res.status == "failed"
    assert "AssertionError: boom" in res.stderr_tail


def test_isolation_info_reports_mechanisms():
    info = isolation_info()
    assert info["interpreter"]
    res = run("pass\n")
    assert res.network_isolation in {"netns", "none"} and res.tmp_isolation in {"mountns", "none"}
    assert set(info["degraded"]) <= set(res.degraded) and not set(res.degraded) & set(res.mechanisms)
    print("isolation:", res.mechanisms, "degraded:", res.degraded)


@pytest.mark.parametrize("missing", ["unshare", "mount"])
def test_degraded_isolation_is_loud(missing, monkeypatch, caplog):
    if missing == "unshare":
        which = shutil.which
        monkeypatch.setattr(shutil, "which", lambda name, *a, **k: None if name == "unshare" else which(name, *a, **k))
        expected, named = {"netns", "pidns", "mountns"}, ["unshare", "netns", "mountns", "/tmp"]
    else:  # unshare works but the private mounts cannot be made
        monkeypatch.setattr(sandbox_isolation, "_MOUNT_SCRIPT", "exit 1")
        expected, named = {"mountns"}, ["mountns", "/tmp", "/dev/shm"]
    isolation_info.cache_clear()
    try:
        with caplog.at_level(logging.WARNING, logger="cd_dspy.sandbox.run"):
            first, second = run("print('ok')\n"), run("pass\n")
    finally:
        monkeypatch.undo()
        isolation_info.cache_clear()
    assert first.passed and second.passed  # still runs ...
    for res in (first, second):  # ... but says so in every result ...
        assert expected <= set(res.degraded) and res.tmp_isolation == "none"
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warned) == 1, warned  # ... and warns once, naming what is missing and the consequence
    assert all(word in warned[0] for word in named), warned[0]


# ----------------------------------------------------------------------------- hostile


def test_infinite_loop_times_out():
    res = run("while True:\n    pass\n")
    assert res.status == "timeout" and not res.passed


def test_sleep_past_timeout():
    res = run("import time\ntime.sleep(60)\n")
    assert res.status == "timeout" and res.duration_s < T + SLACK


def test_signal_ignoring_program_is_still_killed():
    res = run("""
        import signal, time
        for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGXCPU):
            signal.signal(s, signal.SIG_IGN)
        while True:
            time.sleep(0.01)
    """)
    assert res.status == "timeout"


def test_fork_bomb_contained():
    res = run(PRINT_TOKEN + textwrap.dedent("""
        while True:
            try:
                os.fork()
            except OSError:
                pass
    """), max_procs=32)
    assert not res.passed
    time.sleep(0.2)
    assert alive_with_token(token_of(res)) == []
    assert subprocess.run(["true"]).returncode == 0  # host can still fork


def test_memory_bomb_contained():
    res = run("x = []\nwhile True:\n    x.append(bytearray(50 * 1024 * 1024))\n", memory_mb=256)
    assert not res.passed and res.status in {"failed", "killed"}
    assert "MemoryError" in res.stderr_tail or res.status == "killed"


def test_huge_stdout_is_capped():
    res = run("while True:\n    print('x' * 10000)\n", max_output_bytes=200_000, tail_bytes=4096)
    assert res.status == "killed" and "output" in res.reason
    assert len(res.stdout_tail) <= 4096


def test_leaked_child_holding_pipes_is_bounded():
    res = run("import subprocess\nsubprocess.Popen(['sleep', '30'])\nprint('bye')\n")
    assert res.duration_s < T + SLACK


def test_fd_exhaustion_contained():
    res = run("fs = []\nwhile True:\n    fs.append(open('/dev/null'))\n", max_open_files=64)
    assert not res.passed and "Too many open files" in res.stderr_tail


def test_recursion_bomb_contained():
    res = run("import sys\nsys.setrecursionlimit(10**9)\ndef f(n):\n    return f(n + 1) + 1\nf(0)\n")
    assert not res.passed and res.status in {"failed", "killed", "timeout"}


def test_huge_file_write_limited():
    res = run("""
        with open('big.bin', 'wb') as f:
            for _ in range(100):
                f.write(b'0' * 1024 * 1024)
    """, max_file_mb=4)
    assert not res.passed and res.status in {"failed", "killed"}


@pytest.mark.parametrize("trick", [
    "import sys\nsys.exit(0)\nassert False\n",
    "import os\nos._exit(0)\nassert False\n",
    "import atexit, os\natexit.register(lambda: os._exit(0))\nassert False\n",
    "print('CD_SANDBOX_OK_deadbeef')\nimport sys\nsys.exit(0)\n",
])
def test_exit_zero_trickery_is_not_a_pass(trick):
    res = run(trick)
    assert not res.passed and res.status == "failed"


def test_monkeypatched_builtins_do_not_fake_pass():
    res = run("""
        import builtins, os, sys
        builtins.AssertionError = type('Fake', (Exception,), {})
        builtins.print = lambda *a, **k: None
        sys.excepthook = lambda *a: None
        assert 1 == 2
    """)
    assert not res.passed
    res = run("import os\nos.write = lambda fd, data: len(data)\n")
    assert not res.passed  # the sentinel never reaches stdout
