"""numpy's BLAS held to one thread, and given back."""

from __future__ import annotations

import numpy as np
from threadpoolctl import threadpool_info, threadpool_limits

from edgepanc.blas import blas_on_one_thread


def _blas_threads() -> list[int]:
    return [pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas"]


def test_blas_on_one_thread_limits_numpy_blas_and_restores_it() -> None:
    with threadpool_limits(limits=2, user_api="blas"):
        assert _blas_threads() and set(_blas_threads()) == {2}
        with blas_on_one_thread():
            assert set(_blas_threads()) == {1}
            a = np.arange(12.0).reshape(3, 4)
            assert (a @ a.T)[0, 0] == 14.0  # products still work on one thread
        assert set(_blas_threads()) == {2}
