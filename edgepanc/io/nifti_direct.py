"""A NIfTI volume decompressed straight into the image SimpleITK holds, with ITK's geometry.

SimpleITK's own NIfTI reader decodes the file into a buffer of its own and then copies it into
the image, so a 512 x 512 x 300 int16 CT takes twice its 150 MB while it is read; reading is
the runtime's memory peak then. Here ITK reads the header only (so the spacing, origin and
direction are exactly what ITK makes of the qform and sform), an image of that type is allocated,
and the voxels are inflated into its buffer in place (with ISA-L where installed: faster than
ITK's zlib). Whatever ITK would convert on reading (scale factors, another voxel type, more axes
or components) is left to ITK's reader: :func:`read_nifti_direct` returns None for it.
"""

from __future__ import annotations

import SimpleITK as sitk

from edgepanc.io.itk_buffer import writable_array
from edgepanc.io.nifti import NiftiHeader, read_nifti_voxels_into

# NIfTI voxel types ITK reads as the same scalar type, byte for byte (native byte order).
_ITK_SCALARS: dict[str, int] = {
    "u1": sitk.sitkUInt8,
    "i1": sitk.sitkInt8,
    "i2": sitk.sitkInt16,
    "u2": sitk.sitkUInt16,
    "i4": sitk.sitkInt32,
    "u4": sitk.sitkUInt32,
    "i8": sitk.sitkInt64,
    "u8": sitk.sitkUInt64,
    "f4": sitk.sitkFloat32,
    "f8": sitk.sitkFloat64,
}


def read_nifti_direct(
    path, header: NiftiHeader, information: sitk.ImageFileReader
) -> sitk.Image | None:
    """The image of ``path`` as ITK would read it, its voxels held once; None where ITK would
    convert them (the caller then reads with ITK). ``header`` is the checked NIfTI header,
    ``information`` a reader that has read the image information of ``path``.

    Example: ``read_nifti_direct(path, read_nifti_header(path), reader).GetSize()`` ->
    ``(512, 512, 300)``.
    """
    pixel = _ITK_SCALARS.get(header.dtype.str[1:])
    slope, inter = header.scaling
    extra_axes = header.shape[3:]
    if (
        pixel is None
        or not (slope in (0.0, 1.0) and inter == 0.0)  # ITK would scale to floats
        or any(n != 1 for n in extra_axes)
        or information.GetDimension() != 3
        or information.GetNumberOfComponents() != 1
        or information.GetPixelID() != pixel
        or tuple(information.GetSize()) != tuple(header.shape[:3])
    ):
        return None
    image = sitk.Image(list(information.GetSize()), pixel)
    image.SetSpacing(information.GetSpacing())
    image.SetOrigin(information.GetOrigin())
    image.SetDirection(information.GetDirection())
    for key in information.GetMetaDataKeys():
        image.SetMetaData(key, information.GetMetaData(key))
    read_nifti_voxels_into(path, header, writable_array(image))
    return image


__all__ = ["read_nifti_direct"]
