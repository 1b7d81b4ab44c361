"""One line naming the machine a measurement ran on (cores usable, CPU model, platform), for printed figures."""
from __future__ import annotations

import os
import platform
from pathlib import Path


def machine() -> str:
    """`nproc 2 (usable 2), CPU AMD EPYC ..., Linux-...`: what a measured figure needs beside it."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"nproc {os.cpu_count()} (usable {usable}), CPU {cpu}, {platform.platform()}"
