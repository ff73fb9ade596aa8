"""Render an HTML report in headless Chromium and check it: no console errors, no uncaught exceptions, no
failed or network loads, the named plots drawn (an <svg> with marks and a visible size inside
<figure id="plot-NAME">) and the named sections present.

    python examples/check_html.py examples/results/migrate_math_basic/report.html [--plots scores,search,rules]

Chromium is Debian's package (`apt-get install chromium`; `.ci/run` installs it); it is driven over the
DevTools protocol on a pipe (`--remote-debugging-pipe`), so no Python package is needed. Exit status 0
when every check passes, 1 when one fails, 2 when Chromium is missing.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import select
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

SECTIONS = ("verdict", "scores", "tests", "flips", "costs", "rules", "search", "compile")
INSTALL = "apt-get install -y chromium"
PROBE = """JSON.stringify({
  plots: Object.fromEntries([...document.querySelectorAll('figure[id^="plot-"]')].map(f => {
    const svg = f.querySelector('svg'); const box = svg ? svg.getBoundingClientRect() : {width: 0, height: 0};
    return [f.id.slice(5), {svg: !!svg, marks: svg ? svg.querySelectorAll('path, use, rect').length : 0,
                           width: box.width, height: box.height}]; })),
  sections: [...document.querySelectorAll('h2[id], h1[id]')].map(h => h.id),
  details: document.querySelectorAll('details').length,
  resources: performance.getEntriesByType('resource').map(r => r.name),
  title: document.title})"""


def find_chromium() -> str | None:
    """The Chromium binary: $CD_DSPY_CHROMIUM, else `chromium` or `chromium-browser` on PATH."""
    named = os.environ.get("CD_DSPY_CHROMIUM")
    return named or shutil.which("chromium") or shutil.which("chromium-browser")


@dataclass
class HtmlCheck:
    """What Chromium saw on the page."""

    errors: list[str] = field(default_factory=list)  # console errors, uncaught exceptions, failed loads
    plots: dict[str, dict] = field(default_factory=dict)
    sections: list[str] = field(default_factory=list)
    details: int = 0
    resources: list[str] = field(default_factory=list)  # anything the page fetched
    title: str = ""

    def problems(self, plots: tuple[str, ...] = (), sections: tuple[str, ...] = ()) -> list[str]:
        """Every failed check, in words (empty when the page is fine)."""
        found = [f"console: {e}" for e in self.errors]
        found += [f"the page fetched {r} (a report must be self-contained)" for r in self.resources]
        for name in plots:
            plot = self.plots.get(name)
            if not plot or not plot["svg"]:
                found.append(f"plot {name!r} is missing (no <figure id='plot-{name}'> with an <svg>)")
            elif plot["marks"] < 5 or plot["width"] < 50 or plot["height"] < 50:
                found.append(f"plot {name!r} is empty or not visible ({plot})")
        found += [f"section {s!r} is missing" for s in sections if s not in self.sections]
        return found


class _Pipe:
    """The DevTools protocol over Chromium's --remote-debugging-pipe (fd 3: commands in, fd 4: replies out)."""

    def __init__(self, binary: str):
        self.send_r, self.send_w = os.pipe()
        self.recv_r, self.recv_w = os.pipe()
        self.profile = tempfile.mkdtemp(prefix="cd-dspy-chromium-")

        def wire() -> None:  # in the child: our pipe ends become its fds 3 and 4
            read, write = (fcntl.fcntl(fd, fcntl.F_DUPFD, 10) for fd in (self.send_r, self.recv_w))
            os.dup2(read, 3)
            os.dup2(write, 4)

        self.proc = subprocess.Popen(
            [binary, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--remote-debugging-pipe",
             f"--user-data-dir={self.profile}", "about:blank"],
            preexec_fn=wire, pass_fds=(3, 4), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.close(self.send_r)
        os.close(self.recv_w)
        self.buffer, self.next_id, self.events = b"", 0, []

    def _read(self, deadline: float) -> dict:
        while b"\0" not in self.buffer:
            ready, _, _ = select.select([self.recv_r], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                raise TimeoutError("Chromium did not answer in time")
            chunk = os.read(self.recv_r, 1 << 16)
            if not chunk:
                raise RuntimeError("Chromium closed the DevTools pipe (did it crash?)")
            self.buffer += chunk
        message, _, self.buffer = self.buffer.partition(b"\0")
        return json.loads(message)

    def call(self, method: str, params: dict | None = None, session: str | None = None, timeout: float = 30.0):
        self.next_id += 1
        message = {"id": self.next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self.send_w, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            reply = self._read(deadline)
            if reply.get("id") == self.next_id:
                if "error" in reply:
                    raise RuntimeError(f"DevTools {method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)

    def wait_for(self, event: str, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while not any(e.get("method") == event for e in self.events):
            self.events.append(self._read(deadline))

    def drain(self, seconds: float) -> None:
        try:
            while True:
                self.events.append(self._read(time.monotonic() + seconds))
        except TimeoutError:
            pass

    def close(self) -> None:
        try:
            self.call("Browser.close", timeout=5)
        except (RuntimeError, TimeoutError, OSError):
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        for fd in (self.send_w, self.recv_r):
            os.close(fd)
        shutil.rmtree(self.profile, ignore_errors=True)


def check_html(path: str | Path, binary: str | None = None, timeout: float = 60.0) -> HtmlCheck:
    """Load `path` in headless Chromium and report what it saw (see `HtmlCheck.problems`)."""
    binary = binary or find_chromium()
    if binary is None:
        raise FileNotFoundError(f"Chromium is not installed; install Debian's package: {INSTALL}")
    page = _Pipe(binary)
    try:
        target = page.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = page.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Runtime.enable", "Log.enable", "Page.enable"):
            page.call(domain, session=session)
        page.call("Page.navigate", {"url": Path(path).resolve().as_uri()}, session=session)
        page.wait_for("Page.loadEventFired", timeout)
        page.drain(0.5)
        probe = page.call("Runtime.evaluate", {"expression": PROBE, "returnByValue": True}, session=session)
        found = json.loads(probe["result"]["value"])
        page.drain(0.2)
    finally:
        page.close()
    check = HtmlCheck(plots=found["plots"], sections=found["sections"], details=found["details"],
                      resources=found["resources"], title=found["title"])
    for event in page.events:
        method, params = event.get("method"), event.get("params", {})
        if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
            check.errors.append(" ".join(str(a.get("value", a.get("description", ""))) for a in params["args"]))
        elif method == "Runtime.exceptionThrown":
            details = params["exceptionDetails"]
            check.errors.append(details.get("exception", {}).get("description") or details.get("text", "exception"))
        elif method == "Log.entryAdded" and params["entry"].get("level") == "error":
            entry = params["entry"]
            check.errors.append(f"{entry.get('text')} {entry.get('url', '')}".strip())
    return check


def expected_plots(html: Path) -> tuple[str, ...]:
    """The plots a migration report must draw: scores always, the search's when it ran, rule effects when the
    compile proposed rules, quality against cost when it compared levers beyond CD (from report.json beside the
    page; the first three when there is none)."""
    data = html.with_name("report.json")
    if not data.exists():
        return ("scores", "search", "rules")
    report = json.loads(data.read_text())
    names = [row.get("name") for row in report.get("levers") or []]
    compared = bool(names) and names != ["target", "cd"]
    return ("scores", *(("search",) if report.get("trials") else ()), *(("rules",) if report.get("rules") else ()),
            *(("levers",) if compared else ()))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("html", nargs="+", help="report.html files")
    parser.add_argument("--plots", default="auto", help="plots that must be drawn (comma-separated); auto: those the "
                        "report.json beside the page has data for (the search plot only when a search ran)")
    parser.add_argument("--sections", default=",".join(SECTIONS), help="section ids that must be there")
    args = parser.parse_args(argv)
    if find_chromium() is None:
        print(f"check_html: Chromium is not installed, NOTHING WAS CHECKED; install it with: {INSTALL}",
              file=sys.stderr)
        return 2
    failed = 0
    for path in args.html:
        check = check_html(path)
        plots = expected_plots(Path(path)) if args.plots == "auto" else tuple(filter(None, args.plots.split(",")))
        problems = check.problems(plots,
                                  tuple(filter(None, args.sections.split(","))))
        print(f"{path}: {'OK' if not problems else 'FAILED'} ({len(check.plots)} plots, {len(check.sections)} "
              f"sections, {check.details} collapsible blocks, {len(check.errors)} console errors)")
        for problem in problems:
            print(f"  - {problem}")
        failed += bool(problems)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
