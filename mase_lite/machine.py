"""What machine a result came from: CPU model and flags, threads, resolved precision, versions.

Recorded in every search trial, run folder and benchmark table, so figures from machines that
compute differently (bf16 vs fp32 matmuls, thread counts) are never mixed unknowingly.
"""

from __future__ import annotations

import functools
import os
import platform
from typing import Any

#: The CPU flags that change which kernels run (and so speed, and for bf16 the results).
RELEVANT_FLAGS = ("avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_tile",
                  "asimd", "sve", "bf16")


@functools.lru_cache(maxsize=1)
def _cpuinfo() -> tuple[str, frozenset[str]]:
    model, flags = platform.processor() or platform.machine(), frozenset()
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                key = key.strip()
                if key in ("model name", "Model") and model in ("", platform.machine(), platform.processor()):
                    model = value.strip()
                elif key in ("flags", "Features") and not flags:
                    flags = frozenset(value.split())
    except OSError:
        pass
    return model, flags


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), or the platform's processor string."""
    return _cpuinfo()[0]


def cpu_flags() -> frozenset[str]:
    """All CPU feature flags the kernel reports (empty where ``/proc/cpuinfo`` is unavailable)."""
    return _cpuinfo()[1]


def default_num_threads() -> int:
    """``$OMP_NUM_THREADS`` when it is a positive integer (as torch reads it), else the number of CPUs
    this process may run on."""
    raw = os.environ.get("OMP_NUM_THREADS", "").strip()
    if raw.isdigit() and int(raw) > 0:
        return int(raw)
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def machine_info(precision: str | None = None, num_threads: int | None = None,
                 device: Any = None) -> dict[str, Any]:
    """``{"cpu", "cpu_flags", "num_threads", "precision", "torch", "python"}`` (JSON-able), plus
    ``"device"`` (and ``"gpu"``, ``"cuda"`` on a CUDA device) when ``device`` is given.

    ``precision`` should be the *resolved* one (``fp32``/``bf16``), ``num_threads`` the torch
    thread count used (default: the available CPUs), ``device`` the *resolved* device
    (a :class:`torch.device` or its name, e.g. ``"cpu"``, ``"cuda:0"``).
    """
    import torch

    flags = cpu_flags()
    info: dict[str, Any] = {
        "cpu": cpu_model(),
        "cpu_flags": [f for f in RELEVANT_FLAGS if f in flags],
        "num_threads": int(num_threads or default_num_threads()),
        "precision": precision,
        "torch": torch.__version__,
        "python": platform.python_version(),
    }
    if device is not None:
        dev = torch.device(device)
        if dev.type == "cuda":
            index = dev.index if dev.index is not None else torch.cuda.current_device()
            info["device"] = f"cuda:{index}"
            info["gpu"] = torch.cuda.get_device_name(index)
            info["cuda"] = torch.version.cuda
        else:
            info["device"] = str(dev)
    return info
