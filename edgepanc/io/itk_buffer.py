"""Write access to the pixel buffer of a SimpleITK image, for filling it in place.

SimpleITK hands numpy only a read-only view of an image's pixels, so filling an image from numpy
means building the whole array first and copying it in: twice a CT's mask or scan at once.
:func:`writable_array` wraps the same memory, writable, so a volume can be written into the image
SimpleITK allocated, slab by slab.
"""

from __future__ import annotations

import ctypes
import math

import numpy as np
import SimpleITK as sitk


def writable_array(image: sitk.Image) -> np.ndarray:
    """The pixels of ``image`` as a writable (z, y, x) numpy array over its own buffer.

    Valid while ``image`` lives; meant for an image just made (``sitk.Image(size, type)``), which
    shares its buffer with no other image (SimpleITK copies a buffer only when it is shared).

    Example::

        mask = sitk.Image([512, 512, 300], sitk.sitkUInt8)
        writable_array(mask)[100:120] = 1  # slices 100-119 of the mask, written in place
    """
    view = sitk.GetArrayViewFromImage(image)
    nbytes = math.prod(view.shape) * view.itemsize
    address = view.__array_interface__["data"][0]
    raw = np.frombuffer((ctypes.c_ubyte * nbytes).from_address(address), dtype=np.uint8)
    return raw.view(view.dtype).reshape(view.shape)


__all__ = ["writable_array"]
