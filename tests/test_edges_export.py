"""The compact export's size rules and code ranges at their edges: equally small encodings (the
documented preference order decides), arrays whose bit counts are not whole bytes (each rounded up on
its own), the dense encoding's validity, the extreme codes of a width, signed zeros as zeros, and
the integer path's bit-identity bound at exactly ``2^24``. Byte counts are worked out by hand from
the table in :mod:`passes.export.encoding`."""

from __future__ import annotations

import torch

from passes.export.codecs import codec_for
from passes.export.encoding import choose_masked_encoding, masked_nbytes, masked_sizes
from passes.export.integer import exact_condition
from passes.export.packing import pack_codes, unpack_codes


def test_encoding_sizes_round_each_array_up_on_its_own():
    # 3 values of 3 bits (9 bits -> 2 bytes) + a 3-bit mask (1 byte); 2 non-zero of 3 kept
    assert masked_sizes(3, 3, 2, 3) == {"dense_mask": 2 + 1, "mask_kept": 1 + 2, "mask_nonzero": 1 + 1 + 1}
    # 16 values of 8 bits, 8 kept, 7 non-zero: no "dense" (a kept zero would be lost)
    assert masked_sizes(16, 8, 7, 8) == {"dense_mask": 16 + 2, "mask_kept": 2 + 8, "mask_nonzero": 2 + 1 + 7}
    # every kept value non-zero: the mask is implied by the values, "dense" is valid
    assert masked_sizes(16, 8, 8, 4) == {"dense_mask": 8 + 2, "mask_kept": 2 + 4, "dense": 8}


def test_equally_small_encodings_follow_the_documented_order():
    # mask_kept and mask_nonzero both 10 bytes: mask_kept comes first in MASKED_ENCODINGS
    assert choose_masked_encoding(16, 8, 7, 8) == ("mask_kept", 10)
    # all three 3 bytes
    assert choose_masked_encoding(3, 3, 2, 3) == ("mask_kept", 3)
    # dense ties with nothing smaller: dense first
    assert choose_masked_encoding(8, 8, 8, 8) == ("dense", 8)
    assert masked_nbytes(16, 8, 7, 8) == 10


def test_the_extreme_codes_of_a_width_pack_and_come_back():
    for width in (2, 3, 4, 7, 8, 12, 16):
        lo, hi = -(1 << (width - 1)), (1 << (width - 1)) - 1
        codes = torch.tensor([lo, hi, 0, -1, hi, lo])
        packed = pack_codes(codes, width)
        assert packed.numel() == (6 * width + 7) // 8
        assert unpack_codes(packed, width, 6).tolist() == codes.tolist()


def test_signed_zero_codes_are_zeros():
    # block_fp and minifloat keep the sign of values that round to zero; -0.0 is a zero as cost counts it
    bfp = codec_for(("block_fp", (("mantissa_width", 3), ("exponent_width", 4), ("bias", 7), ("block_size", 4))), 0)
    x = torch.tensor([[4.0, -0.01, 0.0, 1.0]])
    q = bfp.quantize(x)
    assert torch.signbit(q[0, 1]) and q[0, 1] == 0
    assert bfp.is_zero(bfp.codes(x)).tolist() == [[False, True, True, False]]
    mf = codec_for(("minifloat", (("preset", "fp8_e4m3"),)), 0)
    x = torch.tensor([-2.0**-12, 2.0**-12, -1.0, 0.0])
    assert mf.is_zero(mf.codes(x)).tolist() == [True, True, False, True]


def test_bit_identity_bound_holds_at_exactly_two_to_the_24():
    # M = K * 2^(wx-1) * 2^(ww-1) = 1024 * 2^7 * 2^7 = 2^24: exact (<=), one more input is not
    assert exact_condition(1024, (8, 4), (8, 4)) == {"M": 2**24, "exact": True}
    assert exact_condition(1025, (8, 4), (8, 4))["exact"] is False
    # a bias with more fraction bits than the product: common fraction F = 10, products shifted by 2
    got = exact_condition(3, (8, 4), (8, 4), (12, 10))
    assert got["M"] == 3 * 2**7 * 2**7 * 2**2 + 2**11 * 2**0
    # products of widths 13 + 13 = 26 bits are exact in float32, of 14 + 13 not (seen alone when no
    # input feature can be non-zero, K_eff = 0, so that M does not decide)
    assert exact_condition(0, (13, 0), (13, 0)) == {"M": 0, "exact": True}
    assert exact_condition(0, (14, 0), (13, 0)) == {"M": 0, "exact": False}
