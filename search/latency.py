"""Measured deployment latency of a trial's graph: the ``latency_ms`` and ``latency_ratio`` objectives.

What is timed is the file a user would deploy. The trial's final graph is exported with the
deployable int8 export (:mod:`passes.export.deployable`, ``kind = "deployable"``: ONNX Runtime's
integer kernels) when :func:`~passes.export.deployable.check_deployable` accepts it, and otherwise
with the faithful simulation export (``kind = "simulation"``: Q/DQ float ops, not a fast model; its
latency is what that file costs, and an uncompressed graph is a plain fp32 model).

The **reference** is fp32 and timed in the same process, interleaved with the candidate, so that the
ratio compares like with like on whatever CPU and load the trial met (absolute milliseconds differ
between CPUs and sessions; ratios are what to compare). It is the pretrained checkpoint, unshrunk and
uncompressed, when the search starts from one (exported once per process), else the trial's own
trained graph before compression. The reference is :func:`~passes.export.onnx.export_onnx`'s plain
fp32 export (the dynamo exporter), run by ONNX Runtime with all graph optimisations; it has no fused
Attention, and on MiniLM it ran about 10 % slower than ORT's fused export of the HF model in one
(loaded) comparison, so a ratio to it flatters int8 by about that much against the strongest fp32
file (``benchmarks/deploy_speed.py`` times that one).

Timing: batch 1, :data:`SEQ_LEN` tokens, :data:`THREADS` intra-op thread(s) and one inter-op thread;
:data:`WARMUP` untimed runs of each, then :data:`ROUNDS` rounds of :data:`RUNS` timed runs of one
model then the other (which goes first alternates). ``latency_ms`` is the candidate's median,
``latency_ratio`` that over the reference's median. Time a search's latency with one worker on a
quiet machine: another process on the same cores slows both models, but not always equally.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from mase_lite.errors import MaseError
from mase_lite.graph import MaseGraph

log = logging.getLogger(__name__)

#: Batch-1 rows of SEQ_LEN tokens, THREADS intra-op thread(s), WARMUP untimed runs of each model, then
#: ROUNDS rounds of RUNS timed runs of each (see the module docstring).
SEQ_LEN, THREADS, WARMUP, ROUNDS, RUNS = 128, 1, 3, 7, 5


@dataclasses.dataclass(frozen=True)
class Latency:
    """One interleaved measurement: candidate and reference medians (ms), what the candidate's file is
    (``kind``: ``deployable`` or ``simulation``) and both files' sizes in bytes."""

    ms: float
    reference_ms: float
    kind: str
    file_bytes: int
    reference_bytes: int
    #: the 1-minute load average when the timing ended (above the cores the timing used: disturbed)
    load_average: Optional[float] = None

    @property
    def ratio(self) -> float:
        """Candidate median over reference median (below 1: faster than fp32)."""
        return self.ms / self.reference_ms

    def attrs(self) -> dict[str, Any]:
        """What a trial records (``latency_ms``, ``latency_ratio`` and the rest under ``latency``)."""
        return {"latency_ms": self.ms, "latency_ratio": self.ratio,
                "latency": {"kind": self.kind, "reference_ms": self.reference_ms, "onnx_bytes": self.file_bytes,
                            "reference_onnx_bytes": self.reference_bytes, "threads": THREADS, "seq_len": SEQ_LEN,
                            "batch": 1, "load_average_1min": self.load_average}}


def interleaved_times(runners: Sequence[Callable[[], Any]], *, rounds: int = ROUNDS, runs: int = RUNS,
                      warmup: int = WARMUP, clock: Callable[[], float] = time.perf_counter) -> list[list[float]]:
    """Times (ms) of each of ``runners``: ``warmup`` untimed calls of each, then ``rounds`` rounds, each
    ``runs`` timed calls of every runner in turn, the order rotated by one from round to round (so that
    none always runs first, after another, or last)."""
    for _ in range(warmup):
        for run in runners:
            run()
    times: list[list[float]] = [[] for _ in runners]
    for r in range(rounds):
        for j in range(len(runners)):
            i = (r + j) % len(runners)
            for _ in range(runs):
                t0 = clock()
                runners[i]()
                times[i].append((clock() - t0) * 1000.0)
    return times


@dataclasses.dataclass
class Exported:
    """An ONNX export of a graph with its ONNX Runtime session (``kind``: deployable or simulation)."""

    session: Any
    kind: str
    file_bytes: int
    input_names: list[str]
    hf_config: dict[str, Any]
    path: Optional[Path] = None

    def with_threads(self, threads: int) -> "Exported":
        """The same file in a new session with ``threads`` intra-op threads."""
        from passes.export.deployable import deploy_session
        from passes.export.onnx import ort_session

        session = (deploy_session if self.kind == "deployable" else ort_session)(self.path, threads)
        return dataclasses.replace(self, session=session)


def export_model(graph: MaseGraph, out: Path, threads: int = THREADS) -> Exported:
    """The deployable export of ``graph`` when it has one, else the simulation (or plain fp32) export."""
    from passes.export.deployable import check_deployable, deploy_session
    from passes.export.onnx import export_onnx, ort_session

    try:
        check_deployable(graph)
        deployable = True
    except MaseError as exc:
        deployable = False
        log.debug("latency: timing the simulation export (%s)", exc)
    report = export_onnx(graph, out, deployable=deployable)
    session = (deploy_session if deployable else ort_session)(report["path"], threads)
    hf = {**(graph.model_info.get("hf_config") or {}),
          "max_position_embeddings": graph.model_info.get("max_position_embeddings") or SEQ_LEN}
    return Exported(session, report["kind"], int(report["file_bytes"]), list(report["input_names"]), hf,
                    Path(report["path"]))


def runner(model: "Exported", batch: int = 1, seq_len: int = SEQ_LEN) -> Callable[[], Any]:
    """One call of ``model``'s session on seeded random rows (``batch`` x ``seq_len`` tokens, no padding)."""
    from mase_lite.models import random_inputs

    feed = {k: v.numpy() for k, v in random_inputs(model.input_names, model.hf_config, batch, seq_len).items()}
    return lambda: model.session.run(None, feed)


#: fp32 references exported once per process, by key (the pretrained base's)
_REFERENCES: dict[Any, Exported] = {}


def _reference(graph: MaseGraph, key: Optional[Any], tmp: Path) -> Exported:
    if key is None:
        return export_model(graph, tmp / "reference")
    if key not in _REFERENCES:
        with tempfile.TemporaryDirectory(prefix="mase-latency-ref-") as ref_dir:
            _REFERENCES[key] = export_model(graph, Path(ref_dir) / "reference")  # the session holds the model
    return _REFERENCES[key]


def measure_latency(graph: MaseGraph, reference: MaseGraph, reference_key: Optional[Any] = None) -> Latency:
    """Export ``graph`` as it deploys and ``reference`` (fp32) as a plain model, and time both in this
    process, interleaved (module docstring). ``reference_key``: export the reference once per process
    under that key (None: every call)."""
    if any(p.device.type != "cpu" for p in graph.parameters()):
        graph = graph.copy().to("cpu")
    if any(p.device.type != "cpu" for p in reference.parameters()):
        reference = reference.copy().to("cpu")
    with tempfile.TemporaryDirectory(prefix="mase-latency-") as tmp:
        cand = export_model(graph, Path(tmp) / "candidate")
        ref = _reference(reference, reference_key, Path(tmp))
        t_cand, t_ref = interleaved_times([runner(cand), runner(ref)])
    result = Latency(statistics.median(t_cand), statistics.median(t_ref), cand.kind, cand.file_bytes, ref.file_bytes,
                     round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None)
    log.info("latency: %s export %.2f ms, fp32 reference %.2f ms (ratio %.3f)", result.kind, result.ms,
             result.reference_ms, result.ratio)
    return result
