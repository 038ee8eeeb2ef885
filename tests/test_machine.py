"""``mase_lite.machine.default_num_threads``: ``$OMP_NUM_THREADS`` when it is a positive integer, else the
CPUs this process may run on."""

from __future__ import annotations

import os

import pytest

from mase_lite.machine import default_num_threads


@pytest.mark.parametrize("value, expected", [("3", 3), (" 1 ", 1), ("0", None), ("4,2", None), ("x", None),
                                             ("", None), (None, None)])
def test_default_num_threads_honours_omp_num_threads(monkeypatch, value, expected):
    if value is None:
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    else:
        monkeypatch.setenv("OMP_NUM_THREADS", value)
    assert default_num_threads() == (expected or len(os.sched_getaffinity(0)))
