"""What the benchmark scripts print about the machine they ran on, and the code they measured."""

from __future__ import annotations

import datetime
import math
import os
import platform

import numpy as np
import torch


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo, or "unknown CPU" where it cannot be read."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


def describe(load_average: bool = False) -> str:
    """One line for a results header: CPU, logical cores, torch, NumPy, Python, (load average,) local time."""
    import datetime
    import os
    import platform

    import numpy as np
    import torch

    parts = [cpu_model(), f"{os.cpu_count()} logical cores", f"torch {torch.__version__}", f"numpy {np.__version__}",
             f"Python {platform.python_version()}"]
    if load_average:
        try:
            parts.append("load average " + " ".join(f"{v:.1f}" for v in os.getloadavg()))
        except OSError:
            parts.append("load average n/a")
    parts.append(datetime.datetime.now().astimezone().isoformat(timespec="seconds"))
    return "; ".join(parts)


def source_state() -> str:
    """git HEAD of the repository and a digest of moekit's sources as they are on disk."""
    import hashlib
    import subprocess

    import moekit

    root = os.path.dirname(os.path.dirname(os.path.abspath(moekit.__file__)))
    try:
        head = subprocess.run(
            ["git", "-C", root, "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10
        ).stdout.strip() or "?"
        dirty = subprocess.run(
            ["git", "--no-optional-locks", "-C", root, "status", "--porcelain", "--", "moekit"], capture_output=True, text=True, timeout=10
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        head, dirty = "?", ""
    h = hashlib.sha1()
    pkg = os.path.dirname(os.path.abspath(moekit.__file__))
    for dirpath, _, files in sorted(os.walk(pkg)):
        for f in sorted(files):
            if f.endswith(".py"):
                with open(os.path.join(dirpath, f), "rb") as fh:
                    h.update(f.encode() + fh.read())
    return f"git {head}{' + uncommitted changes' if dirty else ''}, moekit sources sha1 {h.hexdigest()[:12]}"


def _numpy_blas() -> str:
    try:
        from threadpoolctl import threadpool_info

        return ", ".join(
            f"{i.get('internal_api')} {i.get('version')}, {i.get('num_threads')} threads"
            for i in threadpool_info()
            if "numpy" in i.get("filepath", "")
        ) or "?"
    except Exception:  # noqa: BLE001 - informational only
        return "?"


def machine_info() -> dict:
    """CPU, cores, torch and its threads, NumPy and its BLAS, Python, date, and the measured code (:func:`source_state`)."""
    cpu = cpu_model()
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "numpy": np.__version__,
        "numpy_blas": _numpy_blas(),
        "python": platform.python_version(),
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "source": source_state(),
    }


def fmt_n(n: int) -> str:
    """1000 -> "1e3"; other numbers as they are."""
    e = int(round(math.log10(n)))
    return f"1e{e}" if 10**e == n else str(n)
