"""Hostile programs must not escape cd_dspy.sandbox.run: host files, secrets, network, /tmp and processes stay
out of reach."""

from __future__ import annotations

import os
import socket
import stat
import textwrap
import threading
import time
import uuid

from sandbox_harness import PRINT_TOKEN, T, alive_with_token, require, run, token_of


def test_write_outside_workdir_blocked(host_dir):
    target = os.path.join(host_dir, "pwned.txt")
    res = run(f"""
        import os
        print(os.getcwd(), flush=True)
        open('local.txt', 'w').write('x')
        open({str(target)!r}, 'w').write('pwned')
    """)
    assert not res.passed and not os.path.exists(target)
    assert "Permission denied" in res.stderr_tail  # refused, not merely hidden
    cwd = res.stdout_tail.splitlines()[0]
    assert not os.path.exists(cwd)  # the temp working directory (and local.txt) vanished


def test_env_secrets_not_visible(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-secret")
    res = run("""
        import os
        print(dict(os.environ))
        for pid in os.listdir('/proc'):
            try:
                data = open(f'/proc/{pid}/environ', 'rb').read()
            except OSError:
                continue
            if b'sk-test-secret' in data:
                print('LEAK', pid)
    """)
    assert "sk-test-secret" not in res.stdout_tail and "LEAK" not in res.stdout_tail
    assert "OPENAI_API_KEY" not in res.stdout_tail


def test_socket_to_localhost_blocked():
    require("netns")
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    srv.settimeout(T + 1)
    port = srv.getsockname()[1]
    got: list = []

    def accept():
        try:
            conn, _ = srv.accept()
            got.append(conn.recv(100))
            conn.close()
        except OSError:
            pass

    th = threading.Thread(target=accept)
    th.start()
    res = run(f"""
        import socket
        s = socket.create_connection(('127.0.0.1', {port}), timeout=1)
        s.sendall(b'exfiltrated')
    """)
    th.join()
    srv.close()
    assert got == [] and not res.passed
    assert res.network_isolation == "netns"


def test_writes_to_tmp_and_shm_stay_private():
    require("mountns")
    name = f"cd-sandbox-escape-{uuid.uuid4().hex}"
    paths = [os.path.join(d, name) for d in ("/tmp", "/dev/shm", "/var/tmp") if os.path.isdir(d)]
    try:
        res = run(f"""
            for p in {paths!r}:
                open(p, 'w').write('escaped')
        """)
        leaked = [p for p in paths if os.path.exists(p)]
        assert leaked == [], f"the program wrote into the host's {leaked}"
        assert res.passed, res  # the writes succeeded, in a private /tmp and /dev/shm
        assert res.tmp_isolation == "mountns" and "mountns" in res.mechanisms
        later = run(f"import os\nprint([os.path.exists(p) for p in {paths!r}])\n")
        assert later.passed and "True" not in later.stdout_tail  # and the next run starts clean
    finally:
        for p in paths:
            if os.path.exists(p):
                os.remove(p)


def test_kill_parent_does_not_hurt_host():
    me = os.getpid()
    res = run(f"""
        import os, signal
        for pid in (os.getppid(), {me}, 1):
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError as e:
                print('denied', pid, e)
        os.killpg(0, signal.SIGKILL)
    """)
    assert not res.passed
    assert os.getpid() == me  # we are still here
    assert run("pass\n").passed  # and the sandbox still works


def test_delete_canary_blocked(host_dir):
    canary = os.path.join(host_dir, "canary.txt")
    with open(canary, "w") as f:
        f.write("alive")
    res = run(f"""
        import os, shutil
        try:
            os.remove({canary!r})
        except OSError as e:
            print('remove failed', e)
        shutil.rmtree({host_dir!r})
    """)
    assert not res.passed and "remove failed" in res.stdout_tail
    assert open(canary).read() == "alive"


def test_read_host_file_blocked(host_dir):
    secret = os.path.join(host_dir, "secret.txt")
    with open(secret, "w") as f:
        f.write("top-secret-value")
    os.chmod(secret, stat.S_IRUSR | stat.S_IWUSR)
    res = run(f"print(open({secret!r}).read())\n")
    assert "top-secret-value" not in res.stdout_tail and not res.passed
    assert "Permission denied" in res.stderr_tail
    assert "uid-drop" in res.mechanisms


def test_setsid_daemon_is_killed(shared_dir):
    marker = os.path.join(shared_dir, "late-marker")
    early = os.path.join(shared_dir, "early-marker")
    res = run(PRINT_TOKEN + textwrap.dedent(f"""
        import time
        if os.fork() == 0:
            os.setsid()
            if os.fork() == 0:
                for fd in (0, 1, 2):
                    os.close(fd)
                open({early!r}, 'w').write('x')
                time.sleep(1.5)
                open({marker!r}, 'w').write('escaped')
                os._exit(0)
            os._exit(0)
        time.sleep(0.3)
    """))
    assert res.passed  # the program itself is fine ...
    assert os.path.exists(early)  # ... the daemon really ran and could write here ...
    time.sleep(2.5)
    assert not os.path.exists(marker)  # ... but it was killed before writing the late marker
    assert alive_with_token(token_of(res)) == []
