"""Start-up of the ``moekit`` command: wall time of short commands, each in a fresh process.

Times ``moekit --help``, ``moekit --version``, every ``moekit CMD --help`` and ``moekit info MODEL`` (on a tiny
model that the measured source tree itself fits and saves first, untimed) as ``python -m moekit ...`` run with
``PYTHONPATH`` set to the source tree, so that an older tree runs its own code.  Every command runs
``--repeats`` times, the trees interleaved run by run so that a change in the machine's load falls on both;
the table shows the median (and the fastest) of the wall times.  The machine may be shared: the load average
before and after is printed with the table.

Usage::

    python benchmarks/startup.py                                   # the current tree only
    python benchmarks/startup.py --before-src /work/golden-src     # and an older tree, side by side
    python benchmarks/startup.py --repeats 9 --markdown            # a table for RESULTS.md
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
from _machine import describe  # noqa: E402 - the benchmarks folder is not a package

COMMANDS = ["demo", "fit", "predict", "evaluate", "report", "info"]


def _env(src: str) -> dict:
    env = dict(os.environ, PYTHONPATH=src)
    env.pop("MOEKIT_DEBUG", None)
    return env


def _moekit(src: str, argv: list, cwd: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "moekit", *argv], cwd=cwd, env=_env(src), capture_output=True,
                          text=True, timeout=600)


def _tiny_model(src: str, folder: str) -> str:
    """A 2-expert model on 40 rows, fitted and saved by the tree ``src`` itself (formats may differ by version)."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=40)
    y = np.where(x > 0, 2 * x, -x) + 0.1 * rng.normal(size=40)
    data = os.path.join(folder, "tiny.csv")
    with open(data, "w") as f:
        f.write("x,y\n" + "".join(f"{a!r},{b!r}\n" for a, b in zip(x.tolist(), y.tolist())))
    model = os.path.join(folder, "tiny.moekit")
    r = _moekit(src, ["fit", data, "--target", "y", "--experts", "2", "--max-iter", "20", "-o", model, "-q"], folder)
    if r.returncode != 0:
        raise SystemExit(f"fitting the tiny model with {src} failed: {r.stderr.strip()}")
    return model


def _time_once(src: str, argv: list, cwd: str) -> float:
    t0 = time.perf_counter()
    r = _moekit(src, argv, cwd)
    seconds = time.perf_counter() - t0
    if r.returncode != 0:
        raise SystemExit(f"'moekit {' '.join(argv)}' with {src} exited {r.returncode}: {r.stderr.strip()}")
    return seconds


def _loadavg() -> str:
    try:
        return " ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        return "n/a"


def main(argv=None) -> None:
    """Time the commands and print the table (Markdown with --markdown)."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=5, help="runs per command and tree (default 5; the median is shown)")
    ap.add_argument("--before-src", default=None, metavar="PATH",
                    help="an older source tree (its moekit package at PATH/moekit), timed beside the current one")
    ap.add_argument("--markdown", action="store_true", help="a Markdown table")
    args = ap.parse_args(argv)
    trees = [("before", os.path.abspath(args.before_src))] if args.before_src else []
    trees.append(("after", ROOT))
    load_before = _loadavg()
    times: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        cases = [["--help"], ["--version"]] + [[c, "--help"] for c in COMMANDS] + [["info", "MODEL"]]
        models = {}
        for name, src in trees:
            folder = os.path.join(tmp, name)
            os.makedirs(folder)
            models[name] = _tiny_model(src, folder)
            _time_once(src, ["--version"], folder)  # warm the file cache (and byte-compile) before timing
        for _ in range(args.repeats):
            for case in cases:
                for name, src in trees:
                    real = [models[name] if a == "MODEL" else a for a in case]
                    times.setdefault((" ".join(case), name), []).append(_time_once(src, real, os.path.join(tmp, name)))
    load_after = _loadavg()
    print(f"# {describe()}")
    print(f"# load average (1, 5, 15 min) {load_before} before, {load_after} after; {args.repeats} runs per cell, "
          "fresh processes ('python -m moekit ...')")
    for name, src in trees:
        print(f"# {name}: {src}")
    names = [n for n, _ in trees]
    head = ["command"] + [f"{n}: median s (min)" for n in names] + (["speed-up (median)"] if len(names) == 2 else [])
    rows = []
    for case in cases:
        label = "moekit " + " ".join(case)
        cells = []
        for n in names:
            t = times[(" ".join(case), n)]
            cells.append(f"{statistics.median(t):.3f} ({min(t):.3f})")
        if len(names) == 2:
            a, b = (statistics.median(times[(" ".join(case), n)]) for n in names)
            cells.append(f"{a / b:.1f}x")
        rows.append([label, *cells])
    if args.markdown:
        print("| " + " | ".join(head) + " |")
        print("|---|" + "---:|" * (len(head) - 1))
        for r in rows:
            print("| " + " | ".join(r) + " |")
    else:
        widths = [max(len(str(r[i])) for r in [head, *rows]) for i in range(len(head))]
        for r in [head, *rows]:
            print("  ".join(str(c).ljust(w) for c, w in zip(r, widths)))


if __name__ == "__main__":
    main()
