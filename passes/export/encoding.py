"""How one tensor is stored in a compact export, and how many bytes that takes.

A tensor's *values* are its integer codes when it is quantised (``integer``: ``round(x 2^f)``
clamped to ``width`` bits, packed densely, see :mod:`.packing`), else its elements in their own
dtype. A tensor with a pruning mask is stored in the smallest of these encodings (each array is
rounded up to whole bytes on its own; ``b`` = bits per value, ``n`` elements, ``kept`` = mask ones,
``nonzero`` = non-zero values among the kept ones):

=================  ===========================================================  ============================
encoding           arrays                                                       bytes
=================  ===========================================================  ============================
``dense``          all values; the mask is ``values != 0`` (valid only when     ``ceil(n b / 8)``
                   no kept value is zero)
``dense_mask``     all values + the mask (1 bit per element)                    ``ceil(n b/8) + ceil(n/8)``
``mask_kept``      the mask + the kept values, in flat order                    ``ceil(n/8) + ceil(kept b/8)``
``mask_nonzero``   the mask + which kept values are non-zero (1 bit per kept    ``ceil(n/8) + ceil(kept/8)
                   value) + the non-zero values (only when some kept value is   + ceil(nonzero b/8)``
                   zero: rounding zeros are not pruned weights)
=================  ===========================================================  ============================

A tensor without a mask is stored dense (``codes`` when quantised, ``raw`` otherwise). The ``cost``
pass predicts compressed sizes with :func:`masked_nbytes`, so prediction and file agree by
construction of the same rule; the export measures the real arrays and reports both.
"""

from __future__ import annotations

import math

__all__ = ["MASKED_ENCODINGS", "masked_sizes", "masked_nbytes", "choose_masked_encoding"]

#: Preference order among equally small encodings.
MASKED_ENCODINGS = ("dense", "mask_kept", "mask_nonzero", "dense_mask")


def _nb(nbits: int) -> int:
    return math.ceil(nbits / 8)


def masked_sizes(numel: int, kept: int, nonzero: int, bits: int) -> dict[str, int]:
    """Bytes of every valid encoding of a masked tensor (see the module docstring)."""
    if not 0 <= nonzero <= kept <= numel:
        raise ValueError(f"need 0 <= nonzero ({nonzero}) <= kept ({kept}) <= numel ({numel})")
    sizes = {"dense_mask": _nb(numel * bits) + _nb(numel), "mask_kept": _nb(numel) + _nb(kept * bits)}
    if kept == nonzero:
        sizes["dense"] = _nb(numel * bits)
    else:
        sizes["mask_nonzero"] = _nb(numel) + _nb(kept) + _nb(nonzero * bits)
    return sizes


def choose_masked_encoding(numel: int, kept: int, nonzero: int, bits: int) -> tuple[str, int]:
    """``(encoding, bytes)``: the smallest valid encoding (ties by :data:`MASKED_ENCODINGS` order)."""
    sizes = masked_sizes(numel, kept, nonzero, bits)
    best = min(sizes, key=lambda e: (sizes[e], MASKED_ENCODINGS.index(e)))
    return best, sizes[best]


def masked_nbytes(numel: int, kept: int, nonzero: int, bits: int) -> int:
    """Bytes of a masked tensor in its smallest encoding (what the ``cost`` pass predicts)."""
    return choose_masked_encoding(numel, kept, nonzero, bits)[1]
