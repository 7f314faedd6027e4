"""Process-wide memory allocation for long CPU jobs.

glibc's malloc serves every block above its mmap threshold (128 KiB, rising with freed
blocks to at most 32 MiB) with fresh pages from the kernel and returns them on ``free``.
A tensor of that size allocated again and again (a float64 ConvVAE Jacobian at B = 200 makes
several of 40-80 MiB per call, NIFTy asks for hundreds of such calls) then page-faults through
newly zeroed pages every time: measured on this package's 2-core CPU, a quarter of that
Jacobian's time, and of a ConvVAE training step's. :func:`keep_freed_memory` makes malloc
keep freed memory for reuse instead. ``benchmarks/nifty_jacobian.py`` measures the effect.
"""

from __future__ import annotations

import ctypes
import ctypes.util

__all__ = ["keep_freed_memory"]

# mallopt parameters of glibc's <malloc.h>
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
#: Freed memory at the heap's top beyond which malloc hands pages back to the kernel.
TRIM_THRESHOLD = 1 << 30


def _glibc():
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        libc = ctypes.CDLL(name)
        version = libc.gnu_get_libc_version
    except (OSError, AttributeError):  # not glibc (musl, macOS, Windows)
        return None
    version.restype = ctypes.c_char_p
    return libc


def keep_freed_memory():
    """Make this process's malloc reuse freed memory rather than map fresh pages.

    No block is served by ``mmap`` any more (``M_MMAP_MAX = 0``), and up to
    :data:`TRIM_THRESHOLD` (1 GiB) of free memory at the heap's top is kept
    (``M_TRIM_THRESHOLD``). The process's resident memory then stays near its peak; what is
    computed does not change (torch aligns its tensors itself). It applies to the whole
    process from the call on and cannot be undone: call it once at a program's start, as the
    Fashion-MNIST job does.

    Returns
    -------
    bool
        True where applied; False where the C library is not glibc (nothing changes then).

    Raises
    ------
    OSError
        If glibc refuses a setting.
    """
    libc = _glibc()
    if libc is None:
        return False
    for parameter, value in ((_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, TRIM_THRESHOLD)):
        if libc.mallopt(ctypes.c_int(parameter), ctypes.c_int(value)) != 1:
            raise OSError(f"glibc's mallopt refused parameter {parameter} = {value}")
    return True
