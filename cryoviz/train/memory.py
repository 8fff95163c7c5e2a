"""Give free malloc memory back to the operating system (glibc ``malloc_trim``).

CPython, numpy and torch (on CPU) allocate through the C library's ``malloc``.
glibc keeps freed memory in the process (in the heap, or in per-thread arenas)
for reuse, and returns it to the system only when the free block is at the top
of the heap and large; one small live block above a large freed region keeps
the whole region resident. A training run leaves tens of MB behind in this way
(per-batch image buffers, FFT work arrays), which a long-lived process such as
the napari plugin then carries. ``malloc_trim(0)`` hands every free page back
(``madvise(MADV_DONTNEED)`` on free chunks inside the heap as well as trimming
the top, glibc >= 2.8).

Elsewhere (macOS, Windows, musl) there is no such call and
:func:`release_free_heap` does nothing and returns False.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import platform
import sys
from collections.abc import Callable

__all__ = ["release_free_heap", "glibc_malloc_trim"]


@functools.cache
def glibc_malloc_trim() -> Callable[[int], int] | None:
    """glibc's ``malloc_trim(pad_bytes) -> int`` as a ctypes function, or None.

    None unless the process runs on Linux with glibc and the C library exports
    ``malloc_trim``.
    """
    if not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
        return None
    name = ctypes.util.find_library("c") or "libc.so.6"
    try:
        libc = ctypes.CDLL(name)
        trim = libc.malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim


def release_free_heap() -> bool:
    """Return the C heap's free memory to the system (glibc only).

    Live objects are not touched; this only releases pages that ``malloc``
    holds free. It costs a walk over the heap (milliseconds), so call it after
    large phases (end of training), not per batch.

    Returns
    -------
    bool
        True if glibc released some memory, False if nothing was released or the
        C library has no ``malloc_trim`` (non-Linux or non-glibc: a no-op).
    """
    trim = glibc_malloc_trim()
    if trim is None:
        return False
    return bool(trim(0))
