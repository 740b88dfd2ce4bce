"""The HTML report: what it says (every number and picture explained), and how it loads in a real browser.

The first tests read the page's text: each metric has its one-line note
(coverage, top mode against mean, ...), the fit's convergence is explained,
and the captions of the slice plots say which input is varied and at what
values the others are held.  The browser tests use headless Chromium, driven
over the Chrome DevTools protocol; they are skipped when ``/usr/bin/chromium`` (Debian's ``chromium`` package; ``.ci/run``
installs it) or the ``websocket-client`` package is missing.  The page is
opened from disk; the test collects console errors, uncaught exceptions and
log errors, checks that every image decoded (``naturalWidth > 0``), and saves a
screenshot in the test's temporary folder.  A deliberately broken page checks
that the checker itself sees errors and broken images.
"""

import base64
import html
import json
import os
import re
import shutil
import subprocess
import time
import urllib.request
import warnings

import numpy as np
import pytest

from moekit import MoERegressor
from moekit.datasets import make_robot_arm
from moekit.report import compute_metrics, convergence_note, describe_model, make_report, metric_notes, metrics_text

CHROMIUM = "/usr/bin/chromium"

needs_chromium = pytest.mark.skipif(not os.path.exists(CHROMIUM),
                                    reason=f"{CHROMIUM} is not installed (apt-get install chromium)")


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


def _fit(max_iter):
    X, Y, _ = make_robot_arm(300, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        est = MoERegressor(n_experts=3, max_iter=max_iter, random_state=0).fit(X, Y)
    return est, X, Y


def _report(path, max_iter=40):
    est, X, Y = _fit(max_iter)
    return make_report(est, X, Y, path, title="browser check", feature_names=["x1", "x2"], target_names=["t1", "t2"])


def _text(page):
    """The page's visible text (images and tags dropped)."""
    page = re.sub(r"<style>.*?</style>", "", page, flags=re.S)
    return html.unescape(re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", page)))


@pytest.fixture(scope="module")
def unconverged():
    """A report of a fit stopped at its iteration limit (max_iter=3), with two inputs and two targets."""
    est, X, Y = _fit(3)
    assert not est.fit_result_.converged
    page = make_report(est, X, Y, feature_names=["x1", "x2"], target_names=["t1", "t2"])
    return est, X, Y, page


def test_every_metric_has_its_note(unconverged):
    est, X, Y, page = unconverged
    m = compute_metrics(est, X, Y)
    notes = metric_notes(m, ["t1", "t2"])
    assert set(notes) == set(m)  # nothing unexplained
    text = _text(page)
    assert "what it means" in text
    for note in notes.values():
        assert note in text
    # coverage: one share per target column, of rows inside the central interval, and its expected value
    assert re.search(r"interval coverage [0-9.]+, [0-9.]+ for each target column \(t1, t2\), the share of rows whose "
                     r"y lies inside the central 90 % interval of p\(y \| x\) \(between its 5 % and 95 % quantiles\); "
                     r"about 0.9 is expected", text)
    assert "interval coverage (50 %)" in text and "about 0.5 is expected" in text
    assert len(m["coverage_50"]) == 2 and all(0 <= c <= 1 for c in m["coverage_50"])
    # the top mode against the mean: why it may be higher even on unimodal data, and when it is the right measure
    top = notes["rmse_top_mode"]
    assert "unimodal" in top and "minimises squared error" in top and "right measure" in top
    assert "coverage" in metric_notes({"coverage": [1.0], "interval_level": 0.8})
    assert "central 80 % interval" in metric_notes({"coverage": [1.0], "interval_level": 0.8})["coverage"]


def test_convergence_is_explained_in_the_page_and_the_text(unconverged):
    est, X, Y, page = unconverged
    text = _text(page)
    note = convergence_note(est.fit_result_)
    assert note.startswith("did not converge: EM stopped at its iteration limit (max_iter)")
    assert "refit with a larger max_iter (--max-iter on the command line)" in note
    assert f"The fit {note}." in text
    desc = describe_model(est)  # the text of `moekit info`
    assert "did not converge" in desc and "refit with a larger max_iter" in " ".join(desc.split())
    assert "refit" not in describe_model(est, explain=False)
    done, _, _ = _fit(500)
    assert done.fit_result_.converged
    assert convergence_note(done.fit_result_).startswith("converged: ")
    gradient = type("R", (), {"converged": False, "method": "gradient", "n_iter": 200})()
    assert "epoch limit (200 epochs)" in convergence_note(gradient) and "max_epochs" in convergence_note(gradient)


def test_metrics_text_carries_the_notes(unconverged):
    est, X, Y, _ = unconverged
    m = compute_metrics(est, X, Y)
    out = metrics_text(m, ["t1", "t2"])
    flat = " ".join(out.split())
    assert "interval coverage" in out and "about 0.9 is expected" in flat and "unimodal" in flat
    assert "unimodal" not in metrics_text(m, explain=False)


def test_slice_captions_say_what_is_varied_and_held(unconverged):
    est, X, Y, page = unconverged
    med = np.median(X, axis=0)
    text = _text(page)
    want = (f"Left: x1 varied; held at the median: x2 = {med[1]:.4g}. "
            f"Right: x2 varied; held at the median: x1 = {med[0]:.4g}.")
    caps = re.findall(r"<figcaption>(.*?)</figcaption>", page, flags=re.S)
    assert sum(want in html.unescape(c) for c in caps) == 2  # the experts and the density figures
    assert want in text


@needs_chromium
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


@needs_chromium
def test_the_checker_sees_errors_and_broken_images(browser, tmp_path):
    bad = tmp_path / "bad.html"
    bad.write_text("<!DOCTYPE html><html><body><img alt='broken' src='data:image/png;base64,AAAA'>"
                   "<script>console.error('boom'); undefinedFunction();</script></body></html>")
    errors, images = browser.open(bad)
    assert any("boom" in e for e in errors)
    assert any(e.startswith("exception") for e in errors)
    assert [i["alt"] for i in images if i["w"] == 0] == ["broken"]


def test_metrics_leave_missing_target_coordinates_out():
    """With NaN coordinates in a vector y, errors and coverages use the observed coordinates only (never NaN)."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(300, 1))
    Y = np.column_stack([X[:, 0] + 0.3 * rng.normal(size=300), -X[:, 0] + 0.3 * rng.normal(size=300)])
    full = MoERegressor(n_experts=2, random_state=0).fit(X, Y)
    holes = Y.copy()
    holes[rng.random(Y.shape) < 0.3] = np.nan
    holes[np.isnan(holes).all(1), 0] = Y[np.isnan(holes).all(1), 0]
    m = compute_metrics(full, X, holes)
    seen = ~np.isnan(holes)
    err = full.predict(X) - Y
    assert np.isclose(m["rmse_mean"], np.sqrt(np.mean(err[seen] ** 2)))
    assert all(0.8 < c <= 1.0 for c in m["coverage"]) and all(0.3 < c < 0.7 for c in m["coverage_50"])
    assert np.isfinite(m["rmse_top_mode"])
