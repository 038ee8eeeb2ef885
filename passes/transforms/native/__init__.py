"""Native CPU operator for the input path of compressed linears: quantise, then prune per token.

:func:`quantize_prune_rows` runs ``qprune.cpp`` -- per row (token): the fixed-point codes, a binary
search for the k-th smallest magnitude, index-ordered ties, the output -- with each row in the L1
cache for all of its passes, instead of the ~30 tensor-wide passes of the torch formulation; on one
thread it takes less time than the torch formulation on two (``benchmarks/compression_speed.py
--torch-formulation`` compares whole graphs). It is compiled with
:func:`torch.utils.cpp_extension.load_inline` on first use (about half a minute; cached in
:func:`build_directory`, keyed by the source, the CPU, torch and Python) and gives the torch
formulation's results bit for bit (tests compare them). Where it cannot be built
(no C++ compiler or ninja) or is turned off (``MASE_LITE_NATIVE=0``, or :func:`disabled`), the
torch formulation in :mod:`passes.transforms.ops` runs instead; a failed build is logged once.
(One difference: NaN inputs, which only a diverged model produces. The operator ranks NaN codes
last, as ``torch.sort`` in the reference does; the torch formulation's integer levels leave them
unspecified.)

Formats: the operator implements the ``integer`` fixed-point format only (:data:`FORMATS`,
:func:`serves`); inputs in any other registered number format take the torch formulation (their
format's own ``quantize``, then the torch mask), whatever :func:`available` says.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import platform
import sys
import threading
import time
from pathlib import Path
from typing import Iterator, Optional

import torch

logger = logging.getLogger(__name__)

__all__ = ["available", "supports", "serves", "quantize_prune_rows", "disabled", "MAX_LEVELS", "FORMATS"]

#: The number formats the operator implements.
FORMATS = ("integer",)


def serves(fmt) -> bool:
    """Whether the operator implements this format (a :class:`~passes.formats.NumberFormat` or an
    integer ``QSpec``): only ``integer``."""
    return getattr(fmt, "name", "integer" if isinstance(fmt, tuple) else None) in FORMATS

#: Largest number of magnitude levels ``2^(w-1) + 1`` handled (grids up to 16 bits).
MAX_LEVELS = (1 << 15) + 1
#: A build lock older than this (seconds) is taken to be left by a killed build.
STALE_LOCK_S = 600

_SOURCE = Path(__file__).with_name("qprune.cpp")
_STATE = threading.local()
_LOCK = threading.Lock()
_MODULE = None
_FAILED = False


def _cpu_key() -> str:
    """The CPU's instruction-set flags and architecture (the build uses ``-march=native``)."""
    try:
        flags = next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags"))
    except (OSError, StopIteration):
        flags = platform.processor()
    return flags + platform.machine()


def build_directory(name: str) -> Path:
    """Where the operator is built: ``$TORCH_EXTENSIONS_DIR/<name>``, default under
    ``~/.cache/torch_extensions`` (the name carries the source, CPU, torch and Python versions)."""
    from torch.utils.cpp_extension import get_default_build_root

    path = Path(os.environ.get("TORCH_EXTENSIONS_DIR") or get_default_build_root()) / name
    path.mkdir(parents=True, exist_ok=True)
    return path


def _watch_lock(build_dir: Path, done: threading.Event, every_s: float = 5.0) -> None:
    """While a load runs: remove torch's build lock once it is older than :data:`STALE_LOCK_S`. A
    build that was killed (SIGKILL, out of memory) leaves it behind, and torch then waits for it
    forever; a live build takes well under that time. (If the killed build left no module, the load
    then fails and the torch formulation is used; the next process builds afresh.)"""
    lock = build_dir / "lock"
    while True:
        try:
            age = time.time() - lock.stat().st_mtime
        except FileNotFoundError:
            age = 0.0
        if age > STALE_LOCK_S:
            logger.warning("removing %s, a build lock %.0f s old (left by a killed build)", lock, age)
            lock.unlink(missing_ok=True)
        if done.wait(every_s):
            return


def _load():
    global _MODULE, _FAILED
    with _LOCK:
        if _MODULE is None and not _FAILED:
            try:
                from torch.utils.cpp_extension import load_inline

                source = _SOURCE.read_text()
                key = hashlib.sha1((source + _cpu_key() + torch.__version__ + sys.version).encode()).hexdigest()[:12]
                name = f"mase_lite_qprune_{key}"
                build_dir = build_directory(name)
                logger.info("loading the native quantise-and-prune operator (built on first use, about 30 s)")
                done = threading.Event()
                watchdog = threading.Thread(target=_watch_lock, args=(build_dir, done), daemon=True)
                watchdog.start()
                try:
                    _MODULE = load_inline(
                        name=name, cpp_sources=source, functions=["quantize_prune_rows"],
                        build_directory=str(build_dir), extra_cflags=["-O3", "-march=native", "-fno-math-errno"],
                        verbose=False)
                finally:
                    done.set()
            except Exception as exc:  # no compiler, no ninja, unsupported platform...
                _FAILED = True
                logger.warning("native quantise-and-prune operator unavailable (%s: %s); using the torch "
                               "formulation, which is slower", type(exc).__name__, str(exc).splitlines()[0] if str(exc) else "")
    return _MODULE


def available() -> bool:
    """Whether the native operator can be used here (built, or buildable, and not turned off)."""
    if getattr(_STATE, "disabled", False) or os.environ.get("MASE_LITE_NATIVE", "1") == "0":
        return False
    return _load() is not None


def supports(x: torch.Tensor, num_levels: int, k: int, d: int) -> bool:
    """Whether :func:`quantize_prune_rows` covers this input and the operator is :func:`available`:
    on the CPU, ``0 < k < d``, float32 with a grid of at most 16 bits, or bfloat16 (what CPU autocast
    gives after a matmul) with at most 8 bits, where the codes and outputs are exact in bfloat16."""
    if x.device.type != "cpu" or not 0 < k < d < (1 << 16):
        return False
    if x.dtype == torch.float32:
        ok = num_levels <= MAX_LEVELS
    else:
        ok = x.dtype == torch.bfloat16 and num_levels <= 129
    return ok and available()


def quantize_prune_rows(x: torch.Tensor, spec, k: int, out: torch.Tensor, keep: Optional[torch.Tensor] = None,
                        clipped: bool = False) -> None:
    """Write ``prune_k(q(x))`` into ``out`` row by row (rows: all but the last dimension).

    ``spec``: a :class:`~passes.transforms.quantizers.QSpec`; ``out``: contiguous, of ``x``'s shape
    and dtype; ``keep``: optional contiguous uint8 of that shape, receiving the 0/1 gradient mask (0
    where pruned and, with ``clipped``, where ``x * 2^f`` lies outside the grid's range). A bfloat16
    ``x`` is computed in float32 (exactly: its codes and outputs are bfloat16 numbers).
    Check :func:`supports` first.
    """
    d = x.shape[-1]
    rows = x.numel() // d
    xs = x.detach().reshape(rows, d).to(torch.float32).contiguous()
    o = out.view(rows, d)
    o32 = o if o.dtype == torch.float32 else torch.empty((rows, d), dtype=torch.float32)
    keep2 = keep.view(rows, d) if keep is not None else torch.empty(0, dtype=torch.uint8)
    _load().quantize_prune_rows(xs, o32, keep2, spec.scale, float(spec.qmin), float(spec.qmax),
                                bool(spec.floor), int(k), -spec.qmin + 1, bool(clipped))
    if o32 is not o:
        o.copy_(o32)


@contextlib.contextmanager
def disabled() -> Iterator[None]:
    """Within this context (this thread) the torch formulation runs instead of the native operator."""
    before = getattr(_STATE, "disabled", False)
    _STATE.disabled = True
    try:
        yield
    finally:
        _STATE.disabled = before
