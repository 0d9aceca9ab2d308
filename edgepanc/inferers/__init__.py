"""Sliding-window inference: tiling geometry, the whole-volume stitch and the streaming slab."""

from edgepanc.inferers.sliding_window import (
    BatchPolicy,
    SlidingWindowResult,
    WindowPlan,
    plan_sliding_window,
    sliding_window_inference,
)
from edgepanc.inferers.streaming import (
    SlabAccumulator,
    slab_memory_bytes,
    streaming_sliding_window_inference,
    tile_batch_memory_bytes,
    whole_volume_memory_bytes,
)
from edgepanc.inferers.tiling import (
    compute_steps_for_sliding_window,
    gaussian_importance_map,
)

__all__ = [
    "BatchPolicy",
    "SlabAccumulator",
    "SlidingWindowResult",
    "WindowPlan",
    "compute_steps_for_sliding_window",
    "gaussian_importance_map",
    "plan_sliding_window",
    "slab_memory_bytes",
    "sliding_window_inference",
    "streaming_sliding_window_inference",
    "tile_batch_memory_bytes",
    "whole_volume_memory_bytes",
]
