"""A new number format is one file: a format defined here (one config class, one format class, registered
with ``register_format``, integer codes included) is quantised, costed, written by the compact export as
bit-packed codes and loaded back bit for bit, with no other file knowing its name."""

from __future__ import annotations

import dataclasses
import json
import math
import struct
from typing import Optional

import pytest
import torch
from torch import Tensor

from _compression_helpers import assert_export_bytes_match_cost, tiny_graph, tiny_inputs
from mase_lite import ConfigError, MaseGraph
from passes import run_pass
from passes.export import export_graph
from passes.export.codecs import Codec, codec_for, codec_from_dict
from passes.formats import FormatConfig, NumberFormat, format_from_dict, format_from_spec, register_format
from passes.formats.base import _FORMATS, signed_codes

NAME = "test_pow2_int"


@dataclasses.dataclass
class Pow2IntConfig(FormatConfig):
    """Symmetric ``width``-bit integers times one power-of-two step per tensor."""

    name = NAME
    width: int = 6

    def validate(self, path: str = "") -> None:
        if isinstance(self.width, bool) or not isinstance(self.width, int) or not 2 <= self.width <= 16:
            raise ConfigError(f"{path + '.' if path else ''}width = {self.width!r} must be an integer in [2, 16]")


class Pow2IntFormat(NumberFormat):
    """``q(x) = clamp(round(x / step), -kmax, kmax) * step``, ``step = 2^(e - width + 1)`` with ``e`` the
    smallest exponent such that ``max |x| < 2^e``. Codes: sign | magnitude (so ``-0.0`` has its own
    code); the exponent is stored as one int8 per tensor."""

    short_name = "p2i"
    elementwise = False
    code_param_names = ("exponent",)

    def __init__(self, config: Pow2IntConfig) -> None:
        super().__init__(config)
        self.width = config.width
        self.kmax = (1 << (self.width - 1)) - 1

    def _exponent(self, x: Tensor) -> int:
        a = x.detach().abs().to(torch.float64)
        a = a[torch.isfinite(a)]
        amax = float(a.max()) if a.numel() else 0.0
        return min(max(math.frexp(amax)[1], -100), 100) if amax > 0 else 0

    def _step(self, e: int) -> float:
        return math.ldexp(1.0, e - (self.width - 1))

    def quantize(self, x: Tensor, *, channel_dim: Optional[int] = None) -> Tensor:
        step = self._step(self._exponent(x))
        return (x.detach().to(torch.float64) / step).round_().clamp_(-self.kmax, self.kmax).mul_(step).to(x.dtype)

    def reference(self, x: Tensor, *, channel_dim: Optional[int] = None) -> Tensor:
        step = self._step(self._exponent(x))
        out = [math.copysign(min(max(round(v / step), -self.kmax), self.kmax) * step, v)
               for v in x.detach().to(torch.float64).flatten().tolist()]
        return torch.tensor(out, dtype=torch.float64).reshape(x.shape).to(x.dtype)

    def bits_per_value(self) -> int:
        return self.width

    def overhead_bits(self, shape: tuple[int, ...], *, channel_dim: Optional[int] = None) -> int:
        return 8  # the int8 exponent

    def to_codes(self, x: Tensor, channel_dim: Optional[int]) -> Tensor:
        k = (x.detach().to(torch.float64) / self._step(self._exponent(x))).round_().clamp_(-self.kmax, self.kmax)
        u = (torch.signbit(k).to(torch.int64) << (self.width - 1)) | k.abs().to(torch.int64)
        return signed_codes(u, self.width)

    def code_params(self, x: Tensor, channel_dim: Optional[int]) -> dict[str, Tensor]:
        return {"exponent": torch.tensor([self._exponent(x)], dtype=torch.int8)}

    def code_is_zero(self, codes: Tensor) -> Tensor:
        return (codes & self.kmax) == 0

    def from_codes(self, codes: Tensor, params: dict[str, Tensor], dtype: torch.dtype, shape: tuple[int, ...],
                   channel_dim: Optional[int]) -> Tensor:
        step = self._step(int(params["exponent"].reshape(-1)[0]))
        u = codes.to(torch.int64) & ((1 << self.width) - 1)
        v = (u & self.kmax).to(torch.float64) * step
        sign = torch.where((u >> (self.width - 1)) == 1, -1.0, 1.0).to(torch.float64)
        return torch.copysign(v, sign).to(dtype).reshape(shape)


@pytest.fixture(scope="module")
def pow2():
    """The format, registered for this module's tests only (other tests list the registered formats)."""
    register_format(Pow2IntConfig)(Pow2IntFormat)
    try:
        yield format_from_dict({"name": NAME, "width": 4})
    finally:
        _FORMATS.unregister(NAME)
        format_from_spec.cache_clear()


QUANT = {"by": "type", "default": {"config": {"name": "NA"}},
         "linear": {"config": {"name": NAME, "data_in_width": 8, "weight_width": 4, "bias_width": 6}},
         "embedding": {"config": {"name": NAME, "weight_width": 5}}}


def _bits(t: Tensor) -> Tensor:
    return t.contiguous().view(torch.int32)


def test_codes_round_trip_and_minus_zero_has_a_code_that_is_a_zero(pow2):
    x = torch.randn(6, 32, generator=torch.Generator().manual_seed(0))
    x[0, :3] = torch.tensor([-0.0, -1e-6, 1e-6])
    q = pow2.quantize(x)
    assert torch.equal(_bits(q), _bits(pow2.reference(x)))
    codec = codec_for(pow2.spec(), 0)
    assert isinstance(codec, Codec) and codec_from_dict(codec.to_dict()) == codec and codec.bits == 4
    codes, params = codec.codes(x), codec.params(x)
    assert int(codes.min()) >= -8 and int(codes.max()) <= 7 and set(params) == {"exponent"}
    assert torch.equal(_bits(codec.from_codes(codes.reshape(-1), params, torch.float32, tuple(x.shape))), _bits(q))
    assert codes[0, 0] != 0 and torch.equal(codec.is_zero(codes), q == 0)


@pytest.mark.parametrize("prune", [None, 0.5, 0.9])
def test_a_new_format_round_trips_through_the_compact_export_bit_for_bit(pow2, tmp_path, prune):
    g = tiny_graph()
    w = "bert.encoder.layer.0.intermediate.dense.weight"
    with torch.no_grad():  # an outlier: the step is 0.5 at 4 bits, so most kept weights round to +-0.0
        g.gm.state_dict(keep_vars=True)[w].view(-1)[0] = 2.0
    run_pass(g, "quantize", QUANT)
    if prune is not None:
        run_pass(g, "prune", {"weight": {"sparsity": prune, "method": "l1-norm", "scope": "local"}})
    g.eval()
    report = export_graph(g, tmp_path / "a")
    assert_export_bytes_match_cost(report, tmp_path / "a")
    manifest = json.loads((tmp_path / "a" / "export.json").read_text())
    stored = {n: e for n, e in manifest["tensors"].items() if e["format"] is not None}
    assert len(stored) >= 17 and "bert.embeddings.word_embeddings.weight" in stored  # linears (8 + 8), embeddings
    assert all(e["format"]["name"] == NAME and "exponent" in e["arrays"] for e in stored.values())
    assert not any("unpacked_format" in e for e in manifest["tensors"].values())
    assert stored[w]["bits"] == 4 and stored[w]["nonzero"] < stored[w]["kept"]  # rounding zeros of both signs
    assert (stored[w]["encoding"] == "codes") == (prune is None)

    back = MaseGraph.load(tmp_path / "a")
    x = tiny_inputs()
    with torch.no_grad():
        assert torch.equal(_bits(back(**x).logits), _bits(g(**x).logits))
    sd, sd2 = g.gm.state_dict(), back.gm.state_dict()
    assert sd.keys() == sd2.keys() and back.history == g.history
    for name in stored:
        want = codec_from_dict(stored[name]["format"]).quantize(sd[name])
        assert torch.equal(sd2[name], want), name  # exactly q(w); a kept -0.0 may come back +0.0 (equal)
        nz = want != 0
        assert torch.equal(_bits(sd2[name])[nz], _bits(want)[nz]), name
    for name in sd:
        if name.endswith("weight_mask"):
            assert torch.equal(sd[name], sd2[name])

    export_graph(back, tmp_path / "b")  # and written again: the same arrays, byte for byte
    assert _safetensors(tmp_path / "a") == _safetensors(tmp_path / "b")
    again = json.loads((tmp_path / "b" / "export.json").read_text())
    assert again["tensors"] == manifest["tensors"]


def _safetensors(out) -> tuple[dict, bytes]:
    """The header (as a dict: safetensors writes its ``__metadata__`` keys in no fixed order) and the data."""
    raw = (out / "weights.safetensors").read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8:8 + n]), raw[8 + n:]
