"""What the benchmark scripts print about the machine they ran on."""

from __future__ import annotations


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
