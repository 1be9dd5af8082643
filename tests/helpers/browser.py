"""Headless Chromium driven over the DevTools protocol, for the tests that open pages (the report, the studio)."""

from __future__ import annotations

import itertools
import json
import queue
import re
import shutil
import subprocess
import threading
import time
from pathlib import Path

import pytest

CALL_IDS = itertools.count(1)


class Browser:
    """A headless Chromium with one tab; `cdp` sends commands to the tab, and the events that arrive meanwhile
    (console, network, page) collect in `events`."""

    def __init__(self, profile: Path):
        binary = shutil.which("chromium") or shutil.which("chromium-browser")
        if binary is None:
            pytest.skip("no chromium binary on PATH (Debian package: chromium)")
        websocket = pytest.importorskip("websocket", reason="websocket-client is missing: pip install 'dia-tpu[dev]'")
        cmd = [
            binary,
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--autoplay-policy=no-user-gesture-required",
            "--remote-debugging-port=0",
            f"--user-data-dir={profile}",
            "about:blank",
        ]
        self.process = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self.events: list[dict] = []
        try:
            port = devtools_port(self.process, timeout=30)
            self.ws = websocket.create_connection(page_target(port), timeout=60, suppress_origin=True)
        except BaseException:
            self.close()
            raise

    def __enter__(self) -> Browser:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if getattr(self, "ws", None) is not None:
            self.ws.close()
        self.process.kill()
        self.process.wait(timeout=30)
        self.process.stderr.close()

    def cdp(self, method: str, **params) -> dict:
        """Send one DevTools command and return its result."""
        call_id = next(CALL_IDS)
        self.ws.send(json.dumps({"id": call_id, "method": method, "params": params}))
        while True:
            message = json.loads(self.ws.recv())
            if message.get("id") == call_id:
                assert "error" not in message, (method, message["error"])
                return message["result"]
            self.events.append(message)

    def wait_for(self, method: str, timeout: float) -> None:
        """Read events until `method` has arrived (a websocket timeout fails the test instead of hanging it)."""
        deadline = time.monotonic() + timeout
        while not any(e.get("method") == method for e in self.events):
            assert time.monotonic() < deadline, f"no {method} in {timeout} s"
            self.events.append(json.loads(self.ws.recv()))

    def open(self, url: str, timeout: float = 60) -> None:
        for domain in ("Runtime", "Log", "Network", "Page"):
            self.cdp(f"{domain}.enable")
        self.cdp("Page.navigate", url=url)
        self.wait_for("Page.loadEventFired", timeout=timeout)

    def evaluate(self, expression: str):
        """The value of a JavaScript expression in the page (promises awaited)."""
        result = self.cdp("Runtime.evaluate", expression=expression, awaitPromise=True, returnByValue=True)
        assert "exceptionDetails" not in result, result
        return result["result"].get("value")

    def wait_until(self, expression: str, timeout: float, pause: float = 0.25):
        """Evaluate `expression` until it is truthy (pages that render after loading); returns that value."""
        deadline = time.monotonic() + timeout
        while not (value := self.evaluate(expression)):
            assert time.monotonic() < deadline, f"not true within {timeout} s: {expression}"
            time.sleep(pause)
        return value

    def requested(self) -> list[str]:
        """Every URL the page asked for so far."""
        return [e["params"]["request"]["url"] for e in self.events if e.get("method") == "Network.requestWillBeSent"]


def devtools_port(browser: subprocess.Popen, timeout: float) -> int:
    """The port Chromium chose, from the `DevTools listening on ws://...` line of its stderr."""
    lines: queue.Queue[str | None] = queue.Queue()

    def drain():  # Keeps reading to the end, so a full pipe never blocks Chromium.
        for line in browser.stderr:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=drain, daemon=True).start()
    seen, deadline = [], time.monotonic() + timeout
    while (line := lines.get(timeout=max(deadline - time.monotonic(), 0.01))) is not None:
        seen.append(line)
        if match := re.search(r"DevTools listening on ws://[^:/]+:(\d+)/", line):
            return int(match[1])
    pytest.fail("Chromium exited without a DevTools address:\n" + "".join(seen))


def page_target(port: int) -> str:
    """The DevTools websocket of the about:blank tab Chromium opened."""
    from urllib.request import urlopen

    with urlopen(f"http://127.0.0.1:{port}/json/list", timeout=30) as response:
        targets = json.load(response)
    pages = [t["webSocketDebuggerUrl"] for t in targets if t["type"] == "page"]
    assert pages, targets
    return pages[0]
