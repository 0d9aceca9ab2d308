"""numpy's BLAS held to one thread, and given back."""

from __future__ import annotations

import numpy as np
from threadpoolctl import threadpool_limits

from edgepanc.blas import blas_on_one_thread

from train_support import blas_threads


def test_blas_on_one_thread_limits_numpy_blas_and_restores_it() -> None:
    with threadpool_limits(limits=2, user_api="blas"):
        assert blas_threads() and set(blas_threads()) == {2}
        with blas_on_one_thread():
            assert set(blas_threads()) == {1}
            a = np.arange(12.0).reshape(3, 4)
            assert (a @ a.T)[0, 0] == 14.0  # products still work on one thread
        assert set(blas_threads()) == {2}
