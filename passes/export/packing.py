"""Dense bit packing of signed integer codes (any width 2..32) into bytes, and back.

Codes are stored in two's complement with ``width`` bits each, laid out as one little-endian bit
stream: element ``i`` occupies bits ``[i*width, (i+1)*width)`` of the stream, bit ``j`` of the
stream is bit ``j % 8`` of byte ``j // 8``. So int4 codes go two per byte (element 0 in the low
nibble), 8-bit codes are exactly their int8 bytes, 16-bit codes their little-endian int16 bytes,
and 3-bit codes take 3 bits each with no padding except at the very end.
"""

from __future__ import annotations

import math

import torch

__all__ = ["pack_codes", "unpack_codes", "pack_mask", "unpack_mask", "packed_nbytes", "MIN_WIDTH", "MAX_WIDTH"]

MIN_WIDTH, MAX_WIDTH = 1, 32
_BIT_WEIGHTS = torch.tensor([1 << j for j in range(8)], dtype=torch.int32)


def packed_nbytes(numel: int, width: int) -> int:
    """Bytes that ``numel`` values of ``width`` bits take when packed: ``ceil(numel * width / 8)``."""
    return math.ceil(numel * width / 8)


def _check_width(width: int) -> None:
    if not MIN_WIDTH <= width <= MAX_WIDTH:
        raise ValueError(f"width = {width} is out of range; it must be in [{MIN_WIDTH}, {MAX_WIDTH}]")


def _bits_to_bytes(bits: torch.Tensor) -> torch.Tensor:
    """A flat 0/1 uint8 tensor -> packed bytes (bit j -> bit j%8 of byte j//8)."""
    n = bits.numel()
    pad = (-n) % 8
    if pad:
        bits = torch.cat([bits, bits.new_zeros(pad)])
    return (bits.view(-1, 8).to(torch.int32) * _BIT_WEIGHTS).sum(1).to(torch.uint8)


def _bytes_to_bits(data: torch.Tensor, nbits: int) -> torch.Tensor:
    bits = (data.to(torch.int32).unsqueeze(1) >> torch.arange(8, dtype=torch.int32)) & 1
    return bits.reshape(-1)[:nbits].to(torch.uint8)


def pack_codes(codes: torch.Tensor, width: int) -> torch.Tensor:
    """Pack integer ``codes`` (any integer dtype, values in ``[-2^(w-1), 2^(w-1) - 1]``) into a flat uint8 tensor.

    Raises ValueError for a code outside the width's range (it would not come back).
    """
    _check_width(width)
    flat = codes.reshape(-1).to(torch.int64)
    if flat.numel():
        lo, hi = -(1 << (width - 1)), (1 << (width - 1)) - 1
        if width == 1:
            lo, hi = 0, 1  # a 1-bit field is unsigned (masks)
        if int(flat.min()) < lo or int(flat.max()) > hi:
            raise ValueError(f"codes outside the {width}-bit range [{lo}, {hi}]: "
                             f"min {int(flat.min())}, max {int(flat.max())}")
    if width == 8:
        return flat.to(torch.int8).view(torch.uint8).clone()
    if width == 16:
        return flat.to(torch.int16).view(torch.uint8).clone()
    unsigned = flat & ((1 << width) - 1)
    bits = ((unsigned.unsqueeze(1) >> torch.arange(width, dtype=torch.int64)) & 1).to(torch.uint8)
    return _bits_to_bytes(bits.reshape(-1))


def unpack_codes(data: torch.Tensor, width: int, numel: int) -> torch.Tensor:
    """Inverse of :func:`pack_codes`: ``numel`` signed codes as int64 (int32 range for width <= 32)."""
    _check_width(width)
    data = data.reshape(-1).to(torch.uint8)
    need = packed_nbytes(numel, width)
    if data.numel() != need:
        raise ValueError(f"{data.numel()} bytes do not hold {numel} codes of {width} bits ({need} bytes)")
    if width == 8:
        return data.view(torch.int8).to(torch.int64)
    if width == 16:
        return data.view(torch.int16).to(torch.int64)
    bits = _bytes_to_bits(data, numel * width).to(torch.int64).view(numel, width)
    unsigned = (bits << torch.arange(width, dtype=torch.int64)).sum(1)
    if width == 1:
        return unsigned
    sign = 1 << (width - 1)
    return torch.where(unsigned >= sign, unsigned - (1 << width), unsigned)


def pack_mask(mask: torch.Tensor) -> torch.Tensor:
    """A bool mask as packed bits (8 per byte, element 0 in bit 0)."""
    return _bits_to_bytes(mask.reshape(-1).to(torch.uint8))


def unpack_mask(data: torch.Tensor, numel: int) -> torch.Tensor:
    """Inverse of :func:`pack_mask`: a flat bool tensor of ``numel`` elements."""
    data = data.reshape(-1).to(torch.uint8)
    need = math.ceil(numel / 8)
    if data.numel() != need:
        raise ValueError(f"{data.numel()} bytes do not hold a mask of {numel} bits ({need} bytes)")
    return _bytes_to_bits(data, numel).to(torch.bool)
