"""The HTML report in a real browser: headless Chromium, driven over the Chrome DevTools protocol.

Skipped when ``/usr/bin/chromium`` (Debian's ``chromium`` package; ``.ci/run``
installs it) or the ``websocket-client`` package is missing.  The page is
opened from disk; the test collects console errors, uncaught exceptions and
log errors, checks that every image decoded (``naturalWidth > 0``), and saves a
screenshot in the test's temporary folder.  A deliberately broken page checks
that the checker itself sees errors and broken images.
"""

import base64
import json
import os
import shutil
import subprocess
import time
import urllib.request
import warnings

import pytest

CHROMIUM = "/usr/bin/chromium"

pytestmark = pytest.mark.skipif(not os.path.exists(CHROMIUM), reason=f"{CHROMIUM} is not installed (apt-get install chromium)")


class _Browser:
    """A headless Chromium process and one DevTools websocket to a page."""

    def __init__(self, profile):
        websocket = pytest.importorskip("websocket", reason="websocket-client is not installed")
        self.proc = subprocess.Popen(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--disable-extensions", "--remote-allow-origins=*", "--remote-debugging-port=0",
             f"--user-data-dir={profile}", "--window-size=1200,900", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        port_file = os.path.join(profile, "DevToolsActivePort")
        deadline = time.time() + 60
        while not (os.path.exists(port_file) and open(port_file).read().strip()):
            if self.proc.poll() is not None or time.time() > deadline:
                self.close()
                pytest.fail("Chromium did not start (no DevToolsActivePort)")
            time.sleep(0.1)
        port = int(open(port_file).read().split()[0])
        targets = []
        while time.time() < deadline:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as r:
                targets = [t for t in json.load(r) if t.get("type") == "page"]
            if targets:
                break
            time.sleep(0.1)
        if not targets:
            self.close()
            pytest.fail("Chromium has no page target")
        self.ws = websocket.create_connection(targets[0]["webSocketDebuggerUrl"], timeout=60, suppress_origin=True)
        self.next_id = 0
        self.events = []

    def call(self, method, **params):
        self.next_id += 1
        mid = self.next_id
        self.ws.send(json.dumps({"id": mid, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv())
            if msg.get("id") == mid:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})
            self.events.append(msg)

    def wait_for(self, method, timeout=60):
        deadline = time.time() + timeout
        for i, ev in enumerate(self.events):
            if ev.get("method") == method:
                return ev
        while time.time() < deadline:
            msg = json.loads(self.ws.recv())
            self.events.append(msg)
            if msg.get("method") == method:
                return msg
        raise TimeoutError(method)

    def open(self, path):
        """Load a page; returns (errors, images)."""
        self.events.clear()
        for domain in ("Page", "Runtime", "Log"):
            self.call(f"{domain}.enable")
        self.call("Page.navigate", url="file://" + os.path.abspath(path))
        self.wait_for("Page.loadEventFired")
        images = self.call(
            "Runtime.evaluate",
            expression="JSON.stringify(Array.from(document.images).map(i => "
                       "({alt: i.alt, complete: i.complete, w: i.naturalWidth, h: i.naturalHeight})))",
            returnByValue=True,
        )["result"]["value"]
        self.call("Runtime.evaluate", expression="1", returnByValue=True)  # flush pending events
        errors = []
        for ev in self.events:
            m, p = ev.get("method"), ev.get("params", {})
            if m == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
                errors.append("console: " + " ".join(str(a.get("value", a.get("description"))) for a in p["args"]))
            elif m == "Runtime.exceptionThrown":
                errors.append("exception: " + p["exceptionDetails"].get("text", ""))
            elif m == "Log.entryAdded" and p["entry"].get("level") == "error":
                errors.append("log: " + p["entry"].get("text", ""))
        return errors, json.loads(images)

    def screenshot(self, path):
        data = self.call("Page.captureScreenshot", format="png", captureBeyondViewport=True)["data"]
        with open(path, "wb") as f:
            f.write(base64.b64decode(data))

    def close(self):
        try:
            if getattr(self, "ws", None) is not None:
                try:
                    self.call("Browser.close")
                except Exception:  # noqa: BLE001 - the browser may already be gone
                    pass
                self.ws.close()
        finally:
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)


@pytest.fixture()
def browser(tmp_path):
    b = _Browser(str(tmp_path / "profile"))
    yield b
    b.close()
    shutil.rmtree(tmp_path / "profile", ignore_errors=True)


def _report(path):
    from moekit import MoERegressor
    from moekit.datasets import make_robot_arm
    from moekit.report import make_report

    X, Y, _ = make_robot_arm(300, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        est = MoERegressor(n_experts=3, max_iter=40, random_state=0).fit(X, Y)
    make_report(est, X, Y, path, title="browser check", feature_names=["x1", "x2"], target_names=["t1", "t2"])


def test_report_opens_without_errors_or_broken_images(browser, tmp_path):
    page = tmp_path / "report.html"
    _report(page)
    errors, images = browser.open(page)
    assert errors == []
    assert len(images) >= 5
    broken = [i["alt"] for i in images if not (i["complete"] and i["w"] > 0 and i["h"] > 0)]
    assert broken == []
    shot = tmp_path / "report-screenshot.png"
    browser.screenshot(shot)
    png = shot.read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000


def test_the_checker_sees_errors_and_broken_images(browser, tmp_path):
    bad = tmp_path / "bad.html"
    bad.write_text("<!DOCTYPE html><html><body><img alt='broken' src='data:image/png;base64,AAAA'>"
                   "<script>console.error('boom'); undefinedFunction();</script></body></html>")
    errors, images = browser.open(bad)
    assert any("boom" in e for e in errors)
    assert any(e.startswith("exception") for e in errors)
    assert [i["alt"] for i in images if i["w"] == 0] == ["broken"]
