"""numpy's BLAS on one thread while torch (or a worker pool) owns the cores.

OpenBLAS keeps its threads spinning for a while after each matrix product. Training draws every
patch with one such product (the patch's voxel offsets times the augmentation matrix); on a
2-core machine those threads went on spinning through the next training step, which then took
about 1.5x as long as a step after no product (docs/measurements/blas_threads.md). numpy's own
products here are small enough for one thread. threadpoolctl sets the limit on the BLAS
libraries already loaded.
"""

from __future__ import annotations

from threadpoolctl import threadpool_limits


def blas_on_one_thread() -> threadpool_limits:
    """Limit every loaded BLAS library to one thread, now; the returned object, used as a
    context manager, restores the previous limits on exit.

    Example::

        >>> with blas_on_one_thread():
        ...     train()  # numpy's matrix products leave torch's threads the cores
    """
    import numpy  # noqa: F401  (BLAS is found among the loaded libraries: load numpy's first)

    return threadpool_limits(limits=1, user_api="blas")


__all__ = ["blas_on_one_thread"]
