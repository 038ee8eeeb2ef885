"""Runtime functions called by the ``call_function`` nodes of compressed graphs.

They take tensors as positional arguments (from ``get_attr`` / activation nodes) and their
configuration as constant keyword arguments made of plain Python values, so that torch.fx can
print, copy and re-trace the graph:

* a number format is its :meth:`~passes.formats.NumberFormat.spec`: for ``integer`` the tuple
  ``(width, frac_width, floor)`` (see :class:`quantizers.QSpec`), for other formats
  ``(name, ((field, value), ...))``; or ``None`` for float32. Integer formats run the fused
  fixed-point code below (and the native operator); every other format runs its own
  ``quantize``/``quantize_ste`` (activations per tensor; weights with ``channel_dim = 0``, the output
  channel; biases per tensor);
* activation pruning is a tuple ``(sparsity, method, granularity)``, or ``None``; ``random``
  pruning also takes ``act_seed = (seed, offset)`` (plain ints) and ``act_calls``, a 0-dim int64
  buffer (a ``get_attr`` node) counting the node's calls: call ``n`` draws its mask from
  :func:`sparsity.activation_generator` ``(seed, offset, n)`` and advances the count in place.
  Without ``act_seed`` random masks come from torch's global RNG; without ``act_calls`` every call
  draws the stream's first mask.

With nothing configured each function is exactly the float op it replaces. All of them are
differentiable: quantisers by straight-through estimation (``ste="plain"`` or ``"clipped"``, see
:mod:`quantizers`), masks by multiplying the gradient with the mask.

Order inside :func:`compressed_linear`: the input is quantised, then activation-pruned (the mask is
computed on the quantised values the matmul consumes), the weight is ``q(w) * mask`` and the bias
``q(b)``; the product is optionally quantised (``data_out``). Each ``*_reference`` function spells
the same computation out with the straightforward formulas; tests check they agree bit for bit.

On the CPU the integer quantise-then-prune-per-token input path (l1-norm; float32 with grids up to 16 bits,
bfloat16 up to 8) runs the native operator of :mod:`passes.transforms.native` when it is available, the torch
formulation below otherwise (and on other devices); both give the same results.
"""

from __future__ import annotations

import math
import threading
from typing import Optional

import torch
import torch.nn.functional as F

from . import native
from ..formats import NumberFormat, format_from_spec
from .quantizers import (
    QSpec,
    _in_range,
    as_weight_format,
    integer_quantize,
    quantize_codes_,
    quantize_weight,
)
from .sparsity import (
    MAX_SEARCH_LEVELS,
    activation_generator,
    activation_keep_mask,
    activation_keep_mask_reference,
    num_to_prune,
    random_keep_mask_reference,
    token_keep_from_levels,
)

__all__ = [
    "compressed_linear",
    "compressed_linear_reference",
    "compressed_embedding",
    "compressed_embedding_reference",
    "quantize_prune_input",
    "quantize_prune_input_reference",
    "quantize_activation",
    "compressed_sdpa",
    "clear_scratch",
]


def _prune_spec(act_prune) -> Optional[tuple]:
    if act_prune is None:
        return None
    sparsity, method, granularity = act_prune
    if sparsity <= 0.0:
        return None
    return float(sparsity), method, granularity


_SCRATCH = threading.local()
#: Largest scratch buffer kept between calls, in elements.
MAX_SCRATCH_NUMEL = 1 << 24


def _scratch(slot: str, shape: tuple, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A reusable temporary of ``shape`` (contents undefined), one per slot, dtype, device and mode.

    Reusing these buffers avoids fresh large allocations, whose page faults cost about as much as
    the arithmetic here. Only for values that die before the next call of the same slot.
    """
    n = math.prod(shape)
    if n > MAX_SCRATCH_NUMEL:
        return torch.empty(shape, dtype=dtype, device=device)
    pool = getattr(_SCRATCH, "pool", None)
    if pool is None:
        pool = _SCRATCH.pool = {}
    key = (slot, dtype, device, torch.is_inference_mode_enabled())
    buf = pool.get(key)
    if buf is None or buf.numel() < n:
        buf = pool[key] = torch.empty(n, dtype=dtype, device=device)
    return buf[:n].view(shape)


def clear_scratch() -> None:
    """Release the scratch buffers of this thread."""
    _SCRATCH.pool = {}


def _act_generator(prune: Optional[tuple], act_seed, act_calls: Optional[torch.Tensor],
                   device: torch.device) -> Optional[torch.Generator]:
    """The generator of this call's random activation mask (None: l1-norm, or no seed), advancing
    ``act_calls``."""
    if prune is None or prune[1] != "random" or act_seed is None:
        return None
    call = 0
    if act_calls is not None:
        call = int(act_calls)
        with torch.no_grad():
            act_calls.add_(1)
    seed, offset = act_seed
    return activation_generator(seed, offset, call, device)


def _format_act_forward(x: torch.Tensor, spec: NumberFormat, prune: Optional[tuple], keep_for_backward: bool,
                        clipped: bool, generator: Optional[torch.Generator]):
    """:func:`_act_forward` for a format other than integer: its own quantiser, then the mask."""
    v = spec.quantize(x)
    keep = None
    if prune is not None:
        keep = activation_keep_mask(v, *prune, generator=generator)
        v = v * keep
    if clipped and keep_for_backward:
        inside = ~spec.saturated(x)
        keep = inside if keep is None else keep & inside
    return v, keep


def _codes_keep_mask(v: torch.Tensor, spec: QSpec, prune: tuple, keep_for_backward: bool,
                     generator: Optional[torch.Generator]) -> torch.Tensor:
    """The activation mask of the integer codes ``v`` (``prune``: sparsity, method, granularity).

    Token-wise l1-norm on a small grid ranks the codes' levels (:func:`token_keep_from_levels`, with
    its buffers in scratch memory unless ``keep_for_backward``); anything else masks the codes as
    values (masks of the codes equal masks of the values: scaling by 2^f is exact).
    """
    sparsity, method, granularity = prune
    num_levels = -spec.qmin + 1  # |code| in [0, 2^(w-1)]
    d = v.shape[-1] if v.dim() else 1
    k = num_to_prune(sparsity, d)
    if (granularity == "token" and method == "l1-norm" and num_levels <= MAX_SEARCH_LEVELS
            and 0 < k < d and v.dtype.is_floating_point):
        rows = (v.numel() // d, d)
        wide = torch.int16 if num_levels <= (1 << 15) else torch.int32
        levels = _scratch("levels", rows, wide, v.device)
        levels.copy_(v.view(rows)).abs_()
        if num_levels <= 129:  # grids up to 8 bits: byte-sized levels, cheapest compares
            levels = _scratch("levels8", rows, torch.uint8, v.device).copy_(levels)
        out = torch.empty(rows, dtype=levels.dtype, device=v.device) if keep_for_backward else \
            _scratch("keep", rows, levels.dtype, v.device)
        rank_buf = _scratch("rank", rows, torch.int16 if d < (1 << 15) else torch.int32, v.device)
        return token_keep_from_levels(levels, num_levels, k, out, rank_buf).view(v.shape)
    return activation_keep_mask(v, sparsity, method, granularity, generator=generator)


def _act_forward(x: torch.Tensor, spec: Optional[QSpec], prune: Optional[tuple], *, keep_for_backward: bool = True,
                 scratch_out: bool = False, clipped: bool = False, generator: Optional[torch.Generator] = None):
    """(output, gradient mask or None) of quantise-then-prune, without autograd.

    The mask is 0/1: a uint8 tensor from the native operator and on the torch fast path, bool
    otherwise; with ``clipped`` it is also 0 where ``x * 2^f`` left the grid's range. With
    ``keep_for_backward=False`` no mask is needed: it may be None or live in scratch memory.
    ``scratch_out``: the output lives in scratch memory too (for a caller that consumes it at once).
    ``generator``: what a ``random`` mask is drawn from (see :func:`_act_generator`).
    """
    if spec is None:
        keep = activation_keep_mask(x, *prune, generator=generator)
        return x * keep, keep
    if isinstance(spec, NumberFormat):  # any format but integer: its own quantiser, then the mask
        return _format_act_forward(x, spec, prune, keep_for_backward, clipped, generator)
    if scratch_out:
        v = _scratch("xq", tuple(x.shape), x.dtype, x.device)
    else:
        v = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    if prune is not None and prune[1:] == ("l1-norm", "token") and x.dim() > 0:
        d = x.shape[-1]
        k = num_to_prune(prune[0], d)
        if native.serves(spec) and native.supports(x, -spec.qmin + 1, k, d):
            keep = torch.empty(x.shape, dtype=torch.uint8, device=x.device) if keep_for_backward else None
            native.quantize_prune_rows(x, spec, k, v, keep, clipped)
            return v, keep
    torch.mul(x, spec.scale, out=v)
    quantize_codes_(v, spec)  # integer codes, as floats
    keep = None if prune is None else _codes_keep_mask(v, spec, prune, keep_for_backward, generator)
    if keep is None:
        v.mul_(1.0 / spec.scale)
    else:  # v = codes * keep / 2^f in one pass (both products exact)
        torch.addcmul(v.new_zeros(()), v, _as_float(keep, v.dtype, "keep_f"), value=1.0 / spec.scale, out=v)
    if clipped and keep_for_backward:
        inside = _in_range(x, spec)
        keep = inside if keep is None else keep * inside
    return v, keep


def _as_float(keep: torch.Tensor, dtype: torch.dtype, slot: str) -> torch.Tensor:
    """``keep`` converted to ``dtype`` in scratch memory (an in-place multiply by an integer tensor
    would allocate a converted copy on every call)."""
    if keep.dtype == dtype or keep.dtype == torch.bool:
        return keep
    out = _scratch(slot, tuple(keep.shape), dtype, keep.device)
    return out.copy_(keep)


class _QuantPruneInput(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, spec, prune, clipped, generator):  # type: ignore[override]
        out, keep = _act_forward(x, spec, prune, clipped=clipped, generator=generator)
        ctx.has_keep = keep is not None
        ctx.save_for_backward(keep)
        return out

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        if ctx.has_keep:
            (keep,) = ctx.saved_tensors
            grad = grad * _as_float(keep, grad.dtype, "keep_f_backward")
        return grad, None, None, None, None


def _input_path(x: torch.Tensor, data_in, act_prune, ste: str, scratch_out: bool, act_seed=None,
                act_calls: Optional[torch.Tensor] = None) -> torch.Tensor:
    spec = as_weight_format(data_in)
    prune = _prune_spec(act_prune)
    if spec is None and prune is None:
        return x
    gen = _act_generator(prune, act_seed, act_calls, x.device)
    if torch.is_grad_enabled() and x.requires_grad:
        return _QuantPruneInput.apply(x, spec, prune, ste == "clipped", gen)
    return _act_forward(x, spec, prune, keep_for_backward=False, scratch_out=scratch_out, generator=gen)[0]


def quantize_prune_input(x: torch.Tensor, data_in=None, act_prune=None, ste: str = "plain", *, act_seed=None,
                         act_calls: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``prune(q(x))``: the input path of :func:`compressed_linear` (either part optional;
    ``act_seed``/``act_calls``: the seeded stream of ``random`` masks, see the module doc)."""
    return _input_path(x, data_in, act_prune, ste, scratch_out=False, act_seed=act_seed, act_calls=act_calls)


def quantize_prune_input_reference(x: torch.Tensor, data_in=None, act_prune=None, *, act_seed=None,
                                   act_calls: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Straightforward formulation of :func:`quantize_prune_input` (forward only)."""
    if data_in is not None:
        x = _reference(x, data_in)
    if act_prune is not None and act_prune[0] > 0:
        if act_prune[1] == "random":
            gen = _act_generator(tuple(act_prune), act_seed, act_calls, x.device)
            x = x * random_keep_mask_reference(x, act_prune[0], act_prune[2], gen)
        else:
            x = x * activation_keep_mask_reference(x, act_prune[0], act_prune[2])
    return x


def quantize_activation(x: torch.Tensor, spec=None, ste: str = "plain") -> torch.Tensor:
    """``q(x)`` for a format spec (module docstring), identity for ``None``."""
    spec = as_weight_format(spec)
    if spec is None:
        return x
    if isinstance(spec, QSpec):
        return integer_quantize(x, spec.width, spec.frac_width, floor=spec.floor, ste=ste)
    return spec.quantize_ste(x, ste)


def _reference(x: torch.Tensor, spec, channel_dim: Optional[int] = None) -> torch.Tensor:
    """``x`` through the format's straightforward reference (identity for ``None``)."""
    fmt = format_from_spec(spec)
    return x if fmt is None else fmt.reference(x, channel_dim=channel_dim)


def has_exact_linear(spec) -> bool:
    """Whether ``spec`` is a (non-integer) format with its own inference arithmetic for linears
    (:meth:`~passes.formats.NumberFormat.exact_linear`); cheap for integer tuples and None."""
    if spec is None or isinstance(spec, QSpec):
        return False
    if isinstance(spec, tuple) and not (len(spec) == 2 and isinstance(spec[0], str)):
        return False  # an integer (width, frac_width[, floor]) spec
    fmt = format_from_spec(spec)
    return type(fmt).exact_linear is not NumberFormat.exact_linear


def compressed_linear(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None,
                      weight_mask: Optional[torch.Tensor] = None, *, data_in=None, weight_q=None, bias_q=None,
                      data_out=None, act_prune=None, ste: str = "plain", prepared_input: bool = False,
                      act_seed=None, act_calls: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``q_out(linear(prune(q_in(x)), q_w(weight) * weight_mask, q_b(bias)))``.

    Every part is optional; with none configured this is ``F.linear(x, weight, bias)``. The
    effective weight and bias are cached inside a ``frozen_weights`` block (evaluation) when no
    gradient is needed.
    ``prepared_input=True``: ``x`` already is ``prune(q_in(x))``, computed once by a
    :func:`quantize_prune_input` node shared by several linears reading the same tensor with the
    same settings (``data_in``/``act_prune`` then only describe the node).
    """
    if bias_q is None and not prepared_input and not torch.is_grad_enabled() and has_exact_linear(data_in) \
            and _prune_spec(act_prune) is None:
        y = format_from_spec(data_in).exact_linear(x, weight, bias, format_from_spec(weight_q), weight_mask)
        if y is not None:  # the deployed integer kernel's arithmetic (e.g. dynamic_int8)
            return quantize_activation(y, data_out, ste)
    # with no autograd graph being recorded, the quantised input dies right after the matmul, so it
    # may live in scratch memory (with one, the matmul saves it for the weight gradient)
    xq = x if prepared_input else _input_path(x, data_in, act_prune, ste, scratch_out=not torch.is_grad_enabled(),
                                              act_seed=act_seed, act_calls=act_calls)
    w = quantize_weight(weight, weight_mask, weight_q, ste=ste)
    b = bias if bias is None else quantize_weight(bias, None, bias_q, ste=ste, channel_dim=None)
    return quantize_activation(F.linear(xq, w, b), data_out, ste)


def compressed_linear_reference(x, weight, bias=None, weight_mask=None, *, data_in=None, weight_q=None,
                                bias_q=None, data_out=None, act_prune=None, ste: str = "plain",
                                prepared_input: bool = False, act_seed=None, act_calls=None) -> torch.Tensor:
    """Straightforward formulation of :func:`compressed_linear` (forward only), for tests."""
    xq = quantize_prune_input_reference(x, data_in, act_prune, act_seed=act_seed, act_calls=act_calls)
    w = _reference(weight, weight_q, 0)
    if weight_mask is not None:
        w = w * weight_mask
    b = bias if bias is None else _reference(bias, bias_q)
    y = F.linear(xq, w, b)
    return _reference(y, data_out)


def compressed_embedding(weight: torch.Tensor, indices: torch.Tensor, padding_idx: int = -1, *, weight_q=None,
                         data_out=None, ste: str = "plain") -> torch.Tensor:
    """``q_out(embedding(indices, q_w(weight)))``, argument order as ``aten.embedding``.

    For elementwise formats (integer) only the looked-up rows are quantised (``q(W)[i] == q(W[i])``),
    so a large vocabulary costs nothing extra; formats with shared scales quantise the whole table
    (per row with ``channel_dim = 0``; cached in evaluation). ``padding_idx`` only affects the
    gradient, as in aten.
    """
    pad = None if padding_idx is None or padding_idx < 0 else padding_idx
    fmt = as_weight_format(weight_q)
    if fmt is not None and not isinstance(fmt, QSpec) and not fmt.elementwise:
        rows = F.embedding(indices, quantize_weight(weight, None, fmt, ste=ste, channel_dim=0), padding_idx=pad)
        return quantize_activation(rows, data_out, ste)
    rows = F.embedding(indices, weight, padding_idx=pad)
    rows = quantize_activation(rows, weight_q, ste)
    return quantize_activation(rows, data_out, ste)


def compressed_embedding_reference(weight, indices, padding_idx: int = -1, *, weight_q=None, data_out=None,
                                   ste: str = "plain") -> torch.Tensor:
    """Straightforward formulation: quantise the whole table, then look up."""
    w = _reference(weight, weight_q, 0)
    rows = F.embedding(indices, w)
    return _reference(rows, data_out)


def compressed_sdpa(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, attn_mask=None,
                    dropout_p: float = 0.0, is_causal: bool = False, *, scale=None, enable_gqa: bool = False,
                    data_in=None, data_out=None, ste: str = "plain") -> torch.Tensor:
    """``q_out(scaled_dot_product_attention(q_in(query), q_in(key), q_in(value), ...))``; arguments as
    ``aten.scaled_dot_product_attention`` (the mask and dropout are not quantised)."""
    query, key, value = (quantize_activation(t, data_in, ste) for t in (query, key, value))
    out = F.scaled_dot_product_attention(query, key, value, attn_mask=attn_mask, dropout_p=dropout_p,
                                         is_causal=is_causal, scale=scale, enable_gqa=enable_gqa)
    return quantize_activation(out, data_out, ste)


# The op kinds these functions implement, for mase_lite.metadata (re-annotation keeps semantics).
compressed_linear._mase_op = "linear"  # type: ignore[attr-defined]
compressed_embedding._mase_op = "embedding"  # type: ignore[attr-defined]
compressed_sdpa._mase_op = "attention"  # type: ignore[attr-defined]
quantize_prune_input._mase_op = "elementwise"  # type: ignore[attr-defined]
