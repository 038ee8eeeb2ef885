"""Pruning masks for weights and activations (pure tensor functions; masks are ``True`` = keep).

Weights (computed once, at prune time, on the float weights):

* ``l1-norm``: exactly ``round(s * n)`` elements are pruned -- per tensor (``scope="local"``) or
  over all targeted tensors together (``scope="global"``) -- smallest ``|w|`` first, ties broken by
  flat index (lower index pruned first; for ``global`` the tensors are concatenated in the order
  given). ``round`` is Python's (half to even).
* ``random``: exactly ``round(s * n)`` elements chosen uniformly by a seeded ``torch.Generator``.

Activations (recomputed on every forward pass, on the tensor the matmul consumes):

* ``granularity="token"`` (default): each feature vector (the last dimension) separately -- exactly
  ``k = round(s * d)`` of its ``d`` entries are zeroed, smallest magnitude first, ties broken by
  index (lower feature index pruned first). A sample's result therefore depends neither on its
  batch-mates nor on padding. ``random`` prunes ``k`` uniformly chosen entries per vector.
* ``granularity="tensor"`` (MASE's behaviour, for comparison): ``l1-norm`` keeps ``|x| > t`` with
  ``t = torch.quantile(|x|.flatten(), s)`` over the whole batch tensor (so ties at ``t`` are all
  pruned and the count is approximate); ``random`` prunes each entry with probability ``s``.
  ``s = 0`` keeps everything in every mode.

Random activation masks are drawn from a ``torch.Generator`` (on the input's device) passed in as
``generator``; without one, from torch's global RNG. The compressed graphs seed it per node and per
call (:func:`activation_generator`): call ``n`` (0, 1, 2, ...) of the node with offset ``i`` draws
from a generator seeded with :func:`activation_seed` ``(seed, i, n)``, so consecutive batches get
different masks and the whole sequence is reproducible for a seed (on one device type: CPU and CUDA
generators give different streams). Per vector the ``k`` entries with the smallest uniform scores
(``torch.rand``, ties by index) are pruned; per tensor those with score ``< s``.

Fast paths (identical results to the ``*_reference`` functions, which tests compare against):
when the input lies on a fixed-point grid (quantised activations), the per-vector k-th smallest
magnitude is found by a binary search over the ``2^(w-1) + 1`` magnitude levels, all vectors at
once (``w`` compare-and-count passes over small-integer tensors) instead of a selection;
otherwise ``torch.kthvalue``. Ties at the threshold (frequent on a coarse grid) are resolved by a
running count (``cumsum``), only when some vector needs it. (For quantised float32 inputs on the
CPU, :mod:`passes.transforms.native` does the same per row in one fused operator.)
"""

from __future__ import annotations

import hashlib
import logging
from typing import Optional, Sequence

import torch

from mase_lite.config import check_choice, check_range

logger = logging.getLogger(__name__)

__all__ = [
    "WEIGHT_METHODS",
    "WEIGHT_SCOPES",
    "WEIGHT_GRANULARITIES",
    "ACTIVATION_METHODS",
    "ACTIVATION_SCOPES",
    "ACTIVATION_GRANULARITIES",
    "num_to_prune",
    "check_sparsity",
    "weight_masks",
    "weight_masks_reference",
    "activation_keep_mask",
    "activation_keep_mask_reference",
    "activation_seed",
    "activation_generator",
    "random_keep_mask_reference",
    "quantile_linear",
    "token_keep_from_levels",
    "MAX_SEARCH_LEVELS",
]

WEIGHT_METHODS = ("l1-norm", "random")
WEIGHT_SCOPES = ("local", "global")
WEIGHT_GRANULARITIES = ("elementwise",)
ACTIVATION_METHODS = ("l1-norm", "random")
ACTIVATION_SCOPES = ("local",)
ACTIVATION_GRANULARITIES = ("token", "tensor")

# Largest number of magnitude levels for the binary-search fast path (grids of width <= 15 bits).
MAX_SEARCH_LEVELS = (1 << 14) + 1


def num_to_prune(sparsity: float, n: int) -> int:
    """``round(sparsity * n)`` (half to even), clipped to ``[0, n]``."""
    return min(max(int(round(sparsity * n)), 0), n)


def check_sparsity(value: object, path: str = "sparsity") -> float:
    """Raise a ConfigError unless ``value`` is a number in [0, 1]."""
    from mase_lite.errors import ConfigError

    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{path} must be a number in [0.0, 1.0], got {value!r}")
    check_range(path, float(value), 0.0, 1.0)
    return float(value)


# ---------------------------------------------------------------------------------------------
# Weights


def weight_masks(weights: Sequence[torch.Tensor], sparsity: float, method: str = "l1-norm",
                 scope: str = "local", seed: int = 0) -> list[torch.Tensor]:
    """Keep-masks (bool, same shapes) pruning exactly ``round(s * n)`` elements (see module doc)."""
    check_sparsity(sparsity)
    check_choice("method", method, WEIGHT_METHODS)
    check_choice("scope", scope, WEIGHT_SCOPES)
    with torch.no_grad():
        groups = [[w] for w in weights] if scope == "local" else [list(weights)]
        out: list[torch.Tensor] = []
        gen = torch.Generator().manual_seed(int(seed))
        for group in groups:
            flat = torch.cat([w.detach().reshape(-1) for w in group]) if group else torch.empty(0)
            n = flat.numel()
            k = num_to_prune(sparsity, n)
            keep = torch.ones(n, dtype=torch.bool, device=flat.device)
            if k:
                if method == "l1-norm":
                    order = torch.sort(flat.abs(), stable=True).indices
                else:
                    order = torch.randperm(n, generator=gen).to(flat.device)
                keep[order[:k]] = False
            start = 0
            for w in group:
                out.append(keep[start:start + w.numel()].view(w.shape))
                start += w.numel()
        return out


def weight_masks_reference(weights: Sequence[torch.Tensor], sparsity: float,
                           scope: str = "local") -> list[torch.Tensor]:
    """The l1-norm rule spelled out with Python sorting, for tests (small tensors only)."""
    groups = [[w] for w in weights] if scope == "local" else [list(weights)]
    out = []
    for group in groups:
        vals = [abs(float(v)) for w in group for v in w.detach().reshape(-1).tolist()]
        k = num_to_prune(sparsity, len(vals))
        pruned = set(sorted(range(len(vals)), key=lambda i: (vals[i], i))[:k])
        keep = torch.tensor([i not in pruned for i in range(len(vals))], dtype=torch.bool)
        start = 0
        for w in group:
            out.append(keep[start:start + w.numel()].view(w.shape))
            start += w.numel()
    return out


# ---------------------------------------------------------------------------------------------
# Activations


def quantile_linear(flat: torch.Tensor, q: float) -> torch.Tensor:
    """``torch.quantile(flat, q)`` (linear interpolation) via two ``kthvalue`` selections.

    Bit-identical to torch.quantile (same float32 rank and ``lerp`` arithmetic) and without its
    2**24-element limit.
    """
    n = flat.numel()
    qt = torch.tensor(q, dtype=flat.dtype)
    rank = qt * (n - 1)
    below = int(rank)  # truncation, as torch.quantile
    above = int(torch.ceil(rank))
    v_below = torch.kthvalue(flat, below + 1).values
    v_above = v_below if above == below else torch.kthvalue(flat, above + 1).values
    return torch.lerp(v_below, v_above, rank - below)


def _tensor_l1_keep(a: torch.Tensor, sparsity: float) -> torch.Tensor:
    flat = a.reshape(-1)
    thr = torch.quantile(flat, sparsity) if flat.numel() <= (1 << 24) else quantile_linear(flat, sparsity)
    return a > thr


def _token_keep_from_values(a: torch.Tensor, k: int) -> torch.Tensor:
    """Exact-count bool keep mask per row of non-negative floats ``a`` (R, d) via kthvalue."""
    t = torch.kthvalue(a, k, dim=-1, keepdim=True).values
    need = k - (a < t).sum(-1, keepdim=True)  # tied entries to prune, >= 1
    eq = a == t
    keep = a > t
    if not torch.equal(need, eq.sum(-1, keepdim=True)):
        keep |= eq & (eq.cumsum(-1) > need)
    return keep


def count_dtype(d: int) -> torch.dtype:
    """The integer dtype rows of width ``d`` are counted in."""
    return torch.int16 if d < (1 << 15) else torch.int32


def _row_counts(mask: torch.Tensor, swar: bool) -> torch.Tensor:
    """Number of ones in each row of a 0/1 small-integer tensor (R, d), as int16/int32 (R, 1).

    With ``swar`` (uint8 rows, ``d % 8 == 0``, ``d <= 1016``) the bytes are summed eight at a
    time as int64 words -- each byte lane accumulates at most ``d / 8 <= 127``, so lanes never carry
    into each other and the sum never overflows -- and the eight lane totals are added at the end.
    """
    if swar:
        lanes = mask.view(torch.int64).sum(1, keepdim=True).view(torch.uint8)
        return lanes.sum(1, keepdim=True, dtype=torch.int16)
    return mask.sum(1, keepdim=True, dtype=count_dtype(mask.shape[1]))


def _kth_smallest_level(a: torch.Tensor, num_levels: int, k: int, buf: torch.Tensor, swar: bool) -> torch.Tensor:
    """Per row of integer magnitudes ``a`` (R, d) in ``[0, num_levels)``: the k-th smallest value
    (R, 1). Binary lifting over the levels, all rows at once: the answer is the largest ``t`` with
    ``count(a < t) < k``; each bit costs one compare-and-count pass over ``a``."""
    t = torch.zeros(a.shape[0], 1, dtype=a.dtype, device=a.device)
    for bit in reversed(range(max(num_levels - 1, 1).bit_length())):
        cand = t + (1 << bit)
        below = _row_counts(torch.lt(a, cand, out=buf), swar)
        torch.where(below < k, cand, t, out=t)
    return t


def token_keep_from_levels(a: torch.Tensor, num_levels: int, k: int, out: torch.Tensor,
                           rank_buf: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Fast path: the exact-count keep mask (1 = keep, 0 = prune) of each row of integer magnitudes
    ``a`` (R, d; values in ``[0, num_levels)``), written into ``out`` (same shape and dtype as ``a``),
    which also serves as scratch space. ``a`` is overwritten.

    ``a`` is uint8 (``num_levels <= 129``, i.e. grids up to 8 bits), int16 or int32. Prunes the
    ``k`` smallest entries of each row, ties by lower index. Every full-size step writes a
    small-integer tensor in place, which is much cheaper on CPU than producing bool tensors.
    ``rank_buf``: optional (R, d) tensor of :func:`count_dtype` ``(d)`` for the tie ranks.
    """
    rows, d = a.shape
    if a.dtype == torch.uint8 and num_levels > 129:
        raise ValueError("uint8 levels need num_levels <= 129")
    swar = a.dtype == torch.uint8 and d % 8 == 0 and d <= 1016 and out.is_contiguous()
    t = _kth_smallest_level(a, num_levels, k, out, swar)
    need = k - _row_counts(torch.lt(a, t, out=out), swar)  # ties to prune, >= 1
    eq = torch.eq(a, t, out=out)
    if not torch.equal(need, _row_counts(eq, swar)):
        # A tie is kept iff its rank among its row's ties exceeds need. Adding that 0/1 flag to
        # every level and comparing with t keeps exactly: all a > t, and those ties (for entries
        # that are not ties the flag cannot change the comparison).
        if rank_buf is None:
            rank_buf = torch.empty(a.shape, dtype=count_dtype(d), device=a.device)
        rank = rank_buf.copy_(eq).cumsum_(1)
        a.add_(torch.gt(rank, need, out=out))
    return torch.gt(a, t, out=out)


def activation_seed(seed: int, offset: int, call: int) -> int:
    """The seed (63 bits) of the generator that draws the random activation mask of call ``call``
    (counted from 0) of the node with offset ``offset`` under config seed ``seed``: the first 8
    bytes of ``blake2b("<seed>:<offset>:<call>")``, little-endian, top bit cleared. A hash, so
    neighbouring seeds, nodes and calls give unrelated streams."""
    digest = hashlib.blake2b(f"{int(seed)}:{int(offset)}:{int(call)}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


def activation_generator(seed: int, offset: int, call: int, device: torch.device | str = "cpu") -> torch.Generator:
    """A ``torch.Generator`` on ``device`` seeded with :func:`activation_seed` ``(seed, offset, call)``."""
    return torch.Generator(device=device).manual_seed(activation_seed(seed, offset, call))


def _uniform_scores(x: torch.Tensor, generator: Optional[torch.Generator]) -> torch.Tensor:
    return torch.rand(x.shape, generator=generator, device=x.device)


def activation_keep_mask(x: torch.Tensor, sparsity: float, method: str = "l1-norm",
                         granularity: str = "token", generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Keep mask (bool, shape of ``x``) for activation pruning (see module doc).

    Exact for any float input; for inputs on a small fixed-point grid :func:`token_keep_from_levels`
    is the fast path (used by ``ops.compressed_linear``). ``generator``: what ``random`` draws from
    (default: torch's global RNG); unused by ``l1-norm``.
    """
    if sparsity <= 0.0 or x.numel() == 0:
        return torch.ones_like(x, dtype=torch.bool)
    if granularity == "tensor":
        if method == "random":
            return ~(_uniform_scores(x, generator) < sparsity)
        return _tensor_l1_keep(x.abs(), sparsity)
    d = x.shape[-1] if x.dim() else 1
    k = num_to_prune(sparsity, d)
    if k == 0:
        return torch.ones_like(x, dtype=torch.bool)
    if k >= d:
        return torch.zeros_like(x, dtype=torch.bool)
    if method == "random":
        scores = _uniform_scores(x, generator).reshape(-1, d)
        return _token_keep_from_values(scores, k).view(x.shape)
    return _token_keep_from_values(x.abs().reshape(-1, d), k).view(x.shape)


def random_keep_mask_reference(x: torch.Tensor, sparsity: float, granularity: str = "token",
                               generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """The ``random`` rule in its straightforward form, for tests: the same uniform scores as
    :func:`activation_keep_mask` draws, then per vector a stable sort (first ``k`` pruned), per tensor
    ``score >= s`` kept."""
    if sparsity <= 0.0:
        return torch.ones_like(x, dtype=torch.bool)
    scores = _uniform_scores(x, generator)
    if granularity == "tensor":
        return scores >= sparsity
    k = num_to_prune(sparsity, x.shape[-1])
    idx = torch.sort(scores, dim=-1, stable=True).indices[..., :k]
    return torch.ones_like(x, dtype=torch.bool).scatter_(-1, idx, False)


def activation_keep_mask_reference(x: torch.Tensor, sparsity: float, granularity: str = "token") -> torch.Tensor:
    """The l1-norm rule in its straightforward form, for tests: per vector a stable sort of ``|x|``
    (first ``k`` pruned); per tensor MASE's ``|x| > torch.quantile(|x|, s)``."""
    if sparsity <= 0.0:
        return torch.ones_like(x, dtype=torch.bool)
    a = x.abs()
    if granularity == "tensor":
        return a > torch.quantile(a.flatten(), sparsity)
    k = num_to_prune(sparsity, x.shape[-1])
    idx = torch.sort(a, dim=-1, stable=True).indices[..., :k]
    return torch.ones_like(a, dtype=torch.bool).scatter_(-1, idx, False)
