"""The compact export: a graph's tensors as integer codes (bit-packed), masks as bits, in safetensors.

An export directory holds two files:

* ``weights.safetensors`` -- only arrays, no pickles: per tensor its packed codes (``<name>/codes``,
  uint8), its pruning mask (``<name>/mask``, packed bits), the kept or non-zero values and the
  non-zero bits of its encoding (:mod:`.encoding`), or its elements in their own dtype
  (``<name>/values``) when it is not quantised;
* ``export.json`` -- the manifest: format version, the mase-lite version that wrote it, the model
  (transformers class, config, attention implementation, input names, output type), the pass
  history, and per tensor its shape, dtype, number format (``integer``: width, fraction bits,
  rounding), encoding, counts, bytes, and a SHA-256 of every array.

No fp32 copy of the weights and no serialised program is stored: :func:`load_export` rebuilds the
model from its recorded config, traces it, replays the pass history (which recreates the compressed
nodes and mask buffers) and loads the decoded tensors. Quantised tensors come back as exactly their
quantised values ``q(w)`` (so the loaded graph computes bit-identical outputs: ``q(q(w)) = q(w)``),
masks exactly (zeros from rounding stay unpruned), the graph trainable.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import struct
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
from safetensors.torch import save_file

from mase_lite.errors import MaseError
from mase_lite.graph import MaseGraph, _history_record

from . import packing
from ..formats import NumberFormat
from .codecs import Codec, codec_from_dict, tensor_roles
from .encoding import choose_masked_encoding

log = logging.getLogger(__name__)

__all__ = ["EXPORT_FORMAT_VERSION", "MANIFEST", "WEIGHTS", "ExportLoadError", "export_compact", "load_export",
           "read_manifest", "is_export_dir"]

EXPORT_FORMAT_VERSION = 1
MANIFEST = "export.json"
WEIGHTS = "weights.safetensors"
KIND = "mase-lite-export"


class ExportLoadError(MaseError):
    """An export directory could not be read (corrupt, truncated, newer version, ...)."""


def _mase_version() -> str:
    try:
        import importlib.metadata

        return importlib.metadata.version("mase-lite")
    except Exception:  # pragma: no cover - not installed
        import mase_lite

        return getattr(mase_lite, "__version__", "unknown")


def is_export_dir(path: str | Path) -> bool:
    """Whether ``path`` holds a compact export (an ``export.json`` manifest)."""
    return (Path(path) / MANIFEST).is_file()


# ------------------------------------------------------------------------------------------- model


def export_dir(out_dir: str | Path) -> Path:
    """``out_dir`` as a Path for an export; one MaseError when it exists and is not a directory."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise MaseError(f"export target {out} exists and is not a directory")
    return out


def model_record(graph: MaseGraph) -> dict[str, Any]:
    """What :func:`load_export` needs to rebuild the program: the transformers class and config."""
    from ..transforms.compressed_nodes import is_attention

    info = graph.model_info
    if "hf_config" not in info or not str(info.get("class", "")).endswith("ForSequenceClassification"):
        raise MaseError(f"cannot export a graph of {info.get('class')!r}: the export rebuilds the program from a "
                        "transformers *ForSequenceClassification config, which this graph does not record")
    attn = "sdpa" if any(is_attention(n) for n in graph.nodes) else "eager"
    return {"class": info["class"], "hf_config": info["hf_config"], "attn_implementation": attn,
            "input_names": list(graph.input_names), "model_info": info,
            "output_type": _output_type(graph)}


def _output_type(graph: MaseGraph) -> str:
    spec = getattr(graph._base.call_spec, "out_spec", None)
    tp = getattr(spec, "type", None)
    return f"{tp.__module__}.{tp.__qualname__}" if tp is not None else "unknown"


def rebuild_graph(model: Mapping[str, Any], history: list[Mapping[str, Any]]) -> MaseGraph:
    """Build the recorded transformers model, trace it and replay ``history`` (weights not loaded)."""
    import transformers

    from ..pipeline import run_pass

    info = model.get("model_info") or {}
    pooled = info.get("pooling") in ("mean", "cls")  # mase_lite.models.apply_pooling around an HF class
    cls = getattr(transformers, info.get("backbone_class", "") if pooled else model["class"], None)
    if cls is None:
        raise ExportLoadError(f"model.class = {model['class']!r} is not a transformers class")
    hf = dict(model["hf_config"])
    config = transformers.AutoConfig.for_model(hf.pop("model_type"), **{k: v for k, v in hf.items()})
    torch_state = torch.random.get_rng_state()
    try:
        torch.manual_seed(0)  # weights are overwritten; seeded only so the build is reproducible
        net = cls(config)
        if pooled:
            from mase_lite.models import apply_pooling

            net = apply_pooling(net, info["pooling"])
    finally:
        torch.random.set_rng_state(torch_state)
    net.set_attn_implementation(model.get("attn_implementation", "sdpa"))
    net.eval()
    from mase_lite.models import random_inputs

    graph = MaseGraph.from_module(net, random_inputs(model["input_names"], config.to_dict()))
    graph.model_info = dict(model.get("model_info", graph.model_info))
    for step in history:
        if step.get("version") is not None:
            run_pass(graph, step["name"], step["config"], version=step["version"])
        else:
            run_pass(graph, step["name"], step["config"])
    return graph


# ------------------------------------------------------------------------------------------- writing


def _sha(t: torch.Tensor) -> str:
    return hashlib.sha256(t.contiguous().view(-1).view(torch.uint8).numpy().tobytes()).hexdigest()


def _masked_parts(name: str, flat: torch.Tensor, numel: int, mask: torch.Tensor, codec: "Codec | None", bits: int,
                  values: Callable[[torch.Tensor], torch.Tensor],
                  entry: dict[str, Any]) -> tuple[str, dict[str, torch.Tensor]]:
    """The cheapest encoding of a pruned tensor (``flat``: its values or codes) and its arrays.

    Sets ``entry``'s ``kept`` and ``nonzero``.
    """
    keep = mask.detach().cpu().reshape(-1).to(torch.bool)
    if keep.numel() != numel:
        raise MaseError(f"{name}: mask has {keep.numel()} elements, tensor {numel}")
    kept = int(keep.sum())
    nz = (~codec.is_zero(flat) if codec is not None else flat != 0) & keep  # zero values, as cost counts them
    nonzero = int(nz.sum())
    encoding, _ = choose_masked_encoding(numel, kept, nonzero, bits)
    masked = torch.where(keep, flat, torch.zeros_like(flat))
    if encoding == "dense":
        parts = {"values": values(masked)}
    elif encoding == "dense_mask":
        parts = {"values": values(masked), "mask": packing.pack_mask(keep)}
    elif encoding == "mask_kept":
        parts = {"mask": packing.pack_mask(keep), "kept": values(flat[keep])}
    else:  # mask_nonzero
        parts = {"mask": packing.pack_mask(keep), "nonzero_bits": packing.pack_mask(nz[keep]),
                 "nonzero": values(flat[nz])}
    entry.update(kept=kept, nonzero=nonzero)
    return encoding, parts


def _add_arrays(name: str, parts: Mapping[str, torch.Tensor], arrays: dict[str, torch.Tensor],
                entry: dict[str, Any]) -> None:
    """Add tensor ``name``'s ``parts`` to ``arrays`` and record their keys, sizes and hashes in ``entry``."""
    nbytes = 0
    for part, arr in parts.items():
        key = f"{name}/{part}"
        arrays[key] = arr.contiguous()
        size = arr.numel() * arr.element_size()
        nbytes += size
        entry["arrays"][part] = {"key": key, "nbytes": size, "sha256": _sha(arr)}
    entry["bytes"] = nbytes


def _encode_tensor(name: str, t: torch.Tensor, codec: "Codec | NumberFormat | None", mask: torch.Tensor | None,
                   arrays: dict[str, torch.Tensor]) -> dict[str, Any]:
    """Add the arrays of tensor ``name`` to ``arrays``; return its manifest entry."""
    t = t.detach().cpu().contiguous()
    numel = t.numel()
    entry: dict[str, Any] = {"shape": list(t.shape), "dtype": str(t.dtype).removeprefix("torch."), "numel": numel,
                             "format": None, "arrays": {}}
    params: dict[str, torch.Tensor] = {}
    if isinstance(codec, NumberFormat):  # a format without integer codes yet: its own dtype, flagged
        entry["unpacked_format"] = codec.to_dict()
        codec = None
    if codec is not None:
        entry["format"] = codec.to_dict()
        codes = codec.codes(t).reshape(-1)
        params = codec.params(t)
        back, want = codec.from_codes(codes, params, t.dtype, tuple(t.shape)), codec.quantize(t)
        if not bool(((back == want) | (back.isnan() & want.isnan())).all()):  # a NaN code is a NaN
            raise MaseError(f"{name}: codes do not reproduce the quantised values (format {codec.to_dict()})")
        bits = codec.bits

        def values(sel: torch.Tensor) -> torch.Tensor:
            return packing.pack_codes(sel, bits)
        flat = codes
    else:
        bits = torch.finfo(t.dtype).bits if t.is_floating_point() else (
            1 if t.dtype == torch.bool else torch.iinfo(t.dtype).bits)
        flat = t.reshape(-1)

        def values(sel: torch.Tensor) -> torch.Tensor:
            return sel.clone()
    if mask is None:
        encoding = "codes" if codec is not None else "raw"
        parts = {"codes" if codec is not None else "values": values(flat)}
        entry["nonzero"] = int((~codec.is_zero(flat)).sum()) if codec is not None else int((flat != 0).sum())
        entry["kept"] = numel
    else:
        encoding, parts = _masked_parts(name, flat, numel, mask, codec, bits, values, entry)
    entry["encoding"] = encoding
    entry["bits"] = bits
    parts.update({p: v.contiguous() for p, v in params.items()})
    _add_arrays(name, parts, arrays, entry)
    return entry


def _encode_state(graph: MaseGraph) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The arrays and the manifest entries of every tensor of ``graph`` (masks go with the tensor they prune;
    a tensor stored under several names is written once, the other names listed as its ``aliases``)."""
    roles = tensor_roles(graph)
    state = graph.gm.state_dict(keep_vars=True)
    by_id: dict[int, str] = {}
    aliases: dict[str, list[str]] = {}
    mask_names = {r.mask_name for r in roles.values() if r.mask_name is not None}
    arrays: dict[str, torch.Tensor] = {}
    tensors: dict[str, Any] = {}
    for name, t in state.items():
        if id(t) in by_id:
            aliases.setdefault(by_id[id(t)], []).append(name)
            continue
        by_id[id(t)] = name
        if name in mask_names:
            continue
        role = roles.get(name)
        codec = role.codec if role is not None else None
        mask = state[role.mask_name] if role is not None and role.mask_name is not None else None
        entry = _encode_tensor(name, t, codec, mask, arrays)
        if not (t.is_floating_point() or t.is_complex()):
            entry["group"] = "uncounted"
        else:
            entry["group"] = role.group if role is not None else "non_embedding"
        if mask is not None:
            entry["mask_name"] = role.mask_name
        tensors[name] = entry
    for name, al in aliases.items():
        if name in tensors:
            tensors[name]["aliases"] = al
    return arrays, tensors


def export_compact(graph: MaseGraph, out_dir: str | Path) -> dict[str, Any]:
    """Write ``graph`` as a compact export into ``out_dir`` (see the module doc); returns the report.

    The report has per tensor the measured bytes and the ``cost`` pass's prediction
    (``size_bytes_compressed``), totals per group (``embedding``, ``non_embedding``; integer buffers
    the cost pass does not count are ``uncounted``), the file sizes and ``compressed`` (whether any
    tensor is quantised or pruned).
    """
    from ..pipeline import run_pass

    model = model_record(graph)
    out = export_dir(out_dir)
    arrays, tensors = _encode_state(graph)
    compressed = any(e["format"] is not None or "mask_name" in e for e in tensors.values())
    manifest = {
        "kind": KIND,
        "format_version": EXPORT_FORMAT_VERSION,
        "mase_lite_version": _mase_version(),
        "model": model,
        "history": [_history_record(h) for h in graph.history],
        "compressed": compressed,
        "tensors": tensors,
    }
    out.mkdir(parents=True, exist_ok=True)
    # one metadata key: safetensors writes the metadata map in a random order, and the file must be
    # byte-reproducible (export.json is the manifest; this only marks the file as ours)
    save_file(arrays, str(out / WEIGHTS), metadata={KIND: str(EXPORT_FORMAT_VERSION)})
    (out / MANIFEST).write_text(json.dumps(manifest, indent=1))
    report = size_report(graph, tensors, run_pass)
    report.update(out_dir=str(out), compressed=compressed,
                  file_bytes={WEIGHTS: (out / WEIGHTS).stat().st_size, MANIFEST: (out / MANIFEST).stat().st_size})
    report["safetensors_header_bytes"] = report["file_bytes"][WEIGHTS] - sum(e["bytes"] for e in tensors.values())
    log.info("export: %d tensors, %d bytes (%s)", len(tensors), sum(report["file_bytes"].values()), out)
    return report


def size_report(graph: MaseGraph, tensors: Mapping[str, Any], run_pass) -> dict[str, Any]:
    """Measured bytes per tensor and group beside the ``cost`` pass's predicted compressed bytes."""
    _, cost = run_pass(graph, "cost", {})
    predicted: dict[str, int] = {}
    for row in cost["nodes"]:
        for t in row["tensors"].values():
            predicted[t["name"]] = t["size_bytes_compressed"]
    rows = []
    groups: dict[str, dict[str, int]] = {}
    for name, e in tensors.items():
        pred = predicted.get(name)
        for al in e.get("aliases", []):
            pred = predicted.get(al, pred) if pred is None else pred
        rows.append({"name": name, "group": e["group"], "encoding": e["encoding"], "bits": e["bits"],
                     "measured": e["bytes"], "predicted": pred})
        g = groups.setdefault(e["group"], {"measured": 0, "predicted": 0})
        g["measured"] += e["bytes"]
        g["predicted"] += pred or 0
    for g in groups.values():
        g["relative_error"] = (g["measured"] - g["predicted"]) / g["predicted"] if g["predicted"] else None
    return {"tensors": rows, "groups": groups,
            "cost": {k: cost[k] for k in ("size_bytes_compressed", "size_bytes_compressed_embedding",
                                          "size_bytes_compressed_non_embedding", "size_bytes_fp32")}}


# ------------------------------------------------------------------------------------------- reading


def read_manifest(path: str | Path) -> dict[str, Any]:
    """The manifest of an export directory, checked for kind and version."""
    path = Path(path)
    f = path / MANIFEST
    if not f.is_file():
        raise ExportLoadError(f"{path} is not a mase-lite export (no {MANIFEST})")
    try:
        manifest = json.loads(f.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ExportLoadError(f"{f}: the manifest is not valid JSON ({exc})") from None
    if not isinstance(manifest, dict) or manifest.get("kind") != KIND:
        raise ExportLoadError(f"{f}: not a mase-lite export manifest (kind {manifest.get('kind') if isinstance(manifest, dict) else None!r})")
    version = manifest.get("format_version")
    if not isinstance(version, int) or version > EXPORT_FORMAT_VERSION or version < 1:
        raise ExportLoadError(
            f"{f}: export format version {version!r} (written by mase-lite {manifest.get('mase_lite_version')}) "
            f"is newer than this mase-lite ({_mase_version()}) reads (format versions 1..{EXPORT_FORMAT_VERSION}); "
            "upgrade mase-lite to load it")
    return manifest


_ST_DTYPES = {"U8": torch.uint8, "I8": torch.int8, "I16": torch.int16, "I32": torch.int32, "I64": torch.int64,
              "F16": torch.float16, "BF16": torch.bfloat16, "F32": torch.float32, "F64": torch.float64,
              "BOOL": torch.bool, "U16": torch.uint16, "U32": torch.uint32, "U64": torch.uint64}


def read_arrays(file: Path, wanted: Mapping[str, Mapping[str, Any]]) -> dict[str, torch.Tensor]:
    """Read the safetensors arrays named in ``wanted`` (``key -> {"sha256", "nbytes", "tensor"}``), checking
    each one's bounds and checksum; an ExportLoadError names the tensor that is missing, truncated or corrupt."""
    data = file.read_bytes() if file.is_file() else None
    if data is None:
        raise ExportLoadError(f"{file} is missing")
    if len(data) < 8:
        raise ExportLoadError(f"{file} is truncated ({len(data)} bytes: not even a safetensors header)")
    (hlen,) = struct.unpack("<Q", data[:8])
    if 8 + hlen > len(data):
        raise ExportLoadError(f"{file} is truncated: its header needs {hlen} bytes, the file has {len(data) - 8}")
    try:
        header = json.loads(data[8:8 + hlen])
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ExportLoadError(f"{file}: the safetensors header is corrupt (not JSON)") from None
    base = 8 + hlen
    out: dict[str, torch.Tensor] = {}
    for key, want in wanted.items():
        who = want.get("tensor", key)
        h = header.get(key)
        if not isinstance(h, dict) or "data_offsets" not in h:
            raise ExportLoadError(f"{file}: tensor {who!r}: array {key!r} is missing from the file")
        start, end = h["data_offsets"]
        if base + end > len(data):
            raise ExportLoadError(f"{file}: tensor {who!r} is truncated: array {key!r} needs bytes up to "
                                  f"{base + end}, the file has {len(data)}")
        if end - start != want["nbytes"]:
            raise ExportLoadError(f"{file}: tensor {who!r}: array {key!r} has {end - start} bytes, the manifest "
                                  f"says {want['nbytes']}")
        raw = data[base + start:base + end]
        if hashlib.sha256(raw).hexdigest() != want["sha256"]:
            raise ExportLoadError(f"{file}: tensor {who!r} is corrupt: array {key!r} fails its SHA-256 checksum")
        dtype = _ST_DTYPES.get(h.get("dtype"))
        if dtype is None:
            raise ExportLoadError(f"{file}: tensor {who!r}: unsupported dtype {h.get('dtype')!r}")
        t = torch.frombuffer(bytearray(raw), dtype=dtype) if raw else torch.empty(0, dtype=dtype)
        out[key] = t.reshape(h["shape"])
    return out


def _decode_tensor(name: str, e: Mapping[str, Any], arrays: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(tensor, mask or None) of one manifest entry."""
    dtype = getattr(torch, e["dtype"])
    shape, numel = tuple(e["shape"]), int(e["numel"])
    codec = codec_from_dict(e["format"], f"tensors.{name}.format") if e["format"] is not None else None
    a = {part: arrays[spec["key"]] for part, spec in e["arrays"].items()}
    params = {p: a[p] for p in a if codec is not None and p in codec.param_names}

    def vals(arr: torch.Tensor, n: int) -> torch.Tensor:
        if codec is not None:
            return packing.unpack_codes(arr, codec.bits, n)
        return arr.reshape(-1)

    def finish(flat: torch.Tensor) -> torch.Tensor:
        if codec is not None:
            return codec.from_codes(flat, params, dtype, shape)
        return flat.to(dtype).reshape(shape)

    enc = e["encoding"]
    try:
        if enc in ("raw", "codes"):
            return finish(vals(a["values" if enc == "raw" else "codes"], numel)), None
        if enc == "dense":
            flat = vals(a["values"], numel)
            return finish(flat), (flat != 0).reshape(shape)
        keep = packing.unpack_mask(a["mask"], numel)
        kept = int(keep.sum())
        if enc == "dense_mask":
            flat = vals(a["values"], numel)
        elif enc == "mask_kept":
            flat = torch.zeros(numel, dtype=torch.int64 if codec is not None else a["kept"].dtype)
            flat[keep] = vals(a["kept"], kept)
        elif enc == "mask_nonzero":
            nzk = packing.unpack_mask(a["nonzero_bits"], kept)
            inner = torch.zeros(kept, dtype=torch.int64 if codec is not None else a["nonzero"].dtype)
            inner[nzk] = vals(a["nonzero"], int(nzk.sum()))
            flat = torch.zeros(numel, dtype=inner.dtype)
            flat[keep] = inner
        else:
            raise ExportLoadError(f"tensors.{name}.encoding = {enc!r} is unknown; known: raw, codes, dense, "
                                  "dense_mask, mask_kept, mask_nonzero")
    except ValueError as exc:  # sizes do not fit the manifest
        raise ExportLoadError(f"tensor {name!r}: {exc}") from None
    return finish(flat), keep.reshape(shape)


def load_export(path: str | Path) -> MaseGraph:
    """Load a compact export (see the module doc) as a MaseGraph (eval mode, CPU).

    Its outputs are bit-identical to those of the graph that was exported; pruning masks are
    restored; the graph can be fine-tuned again. A missing, truncated or corrupt array, an unknown
    encoding or a manifest written by a newer format version is an :class:`ExportLoadError` naming it.
    """
    path = Path(path)
    manifest = read_manifest(path)
    tensors = manifest["tensors"]
    wanted = {spec["key"]: {**spec, "tensor": name} for name, e in tensors.items() for spec in e["arrays"].values()}
    arrays = read_arrays(path / WEIGHTS, wanted)
    state: dict[str, torch.Tensor] = {}
    for name, e in tensors.items():
        value, mask = _decode_tensor(name, e, arrays)
        for n in (name, *e.get("aliases", [])):
            state[n] = value
        if e.get("mask_name"):
            state[e["mask_name"]] = mask
    graph = rebuild_graph(manifest["model"], manifest["history"])
    expected = graph.gm.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise ExportLoadError(f"{path}: the stored tensors do not match the rebuilt graph "
                              f"(missing {missing[:5]}, unexpected {unexpected[:5]})")
    for k, v in state.items():
        if tuple(expected[k].shape) != tuple(v.shape):
            raise ExportLoadError(f"{path}: tensor {k!r} has shape {tuple(v.shape)}, the rebuilt graph "
                                  f"expects {tuple(expected[k].shape)}")
    graph.gm.load_state_dict(state, strict=True)
    graph.eval()
    return graph
