"""Reading torch files without unpickling anything: tensors and plain values only.

A checkpoint, ``weights.pt`` or torch artifact may come from someone else (run folders and
bundles are shared), and unpickling runs whatever code the file names. Every torch file edgepanc
reads goes through :func:`load_plain_torch`: it lists the Python objects the file would build and
refuses any, then reads the rest with ``weights_only=True``. A refusal is one line naming the file.
torch is imported inside, so that importing this module costs nothing on the torch-free paths.
"""

from __future__ import annotations

from pathlib import Path
from pickle import UnpicklingError  # the exception type only; nothing here unpickles
from typing import Any

from edgepanc.errors import InputError


def load_plain_torch(
    path: str | Path,
    refusal: str,
    error: type[InputError] = InputError,
    map_location: Any = "cpu",
) -> Any:
    """``torch.load(path, weights_only=True)``; ``error(path, f"{refusal}: ...")`` otherwise.

    ``refusal`` says what the file is not, e.g. ``"not an edgepanc training checkpoint"``.

    Example::

        >>> state = load_plain_torch("run/last.pt", "not an edgepanc training checkpoint")
    """
    import torch

    path = Path(path)
    try:
        unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except (ValueError, RuntimeError, OSError):
        unsafe = []  # not a zip-format torch file: the weights-only reader below decides
    if unsafe:
        names = ", ".join(unsafe[:3]) + (", ..." if len(unsafe) > 3 else "")
        raise error(
            path,
            f"{refusal}: it holds pickled Python objects ({names}), which edgepanc never loads "
            "because loading them could run code",
        )
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except UnpicklingError:
        # torch's own message advises loading the file unsafely; ours says why not.
        raise error(
            path,
            f"{refusal}: not a torch file of tensors and plain values (anything else is never "
            "loaded: it could run code)",
        ) from None
    except Exception as exc:  # torch raises several types for truncated or foreign files
        first_line = (str(exc).splitlines() or [""])[0]
        raise error(path, f"{refusal}: unreadable ({type(exc).__name__}: {first_line})") from None
