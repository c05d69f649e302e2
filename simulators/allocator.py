"""Keep freed memory in the process: large temporaries then cost no page faults.

Rendering allocates and frees arrays of a few megabytes per frame.  glibc
returns such blocks to the kernel on ``free`` (they live in their own
``mmap``), so the next frame pays a page fault per 4 KiB page again; in a
virtual machine that alone can double the render time.  Raising the mmap and
trim thresholds keeps those blocks in the heap for reuse.  This changes the
whole process, so the library never calls it on import: the CLI, the
benchmarks and training loops opt in.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import sys

logger = logging.getLogger(__name__)

_M_TRIM_THRESHOLD = -1
_M_TOP_PAD = -2
_M_MMAP_THRESHOLD = -3
#: glibc's upper bound for M_MMAP_THRESHOLD on 64-bit systems.
_MAX_MMAP_THRESHOLD = 32 * 1024 * 1024


def tune_allocator(keep_bytes: int = 512 * 1024 * 1024) -> bool:
    """Raise glibc's mmap/trim thresholds so freed blocks are reused, not unmapped.

    Parameters
    ----------
    keep_bytes
        Freed memory the heap may keep before trimming it back to the kernel.

    Returns
    -------
    bool
        True if the settings were applied (Linux with glibc), False otherwise.
    """
    if not sys.platform.startswith("linux"):
        return False
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        ok = libc.mallopt(_M_MMAP_THRESHOLD, _MAX_MMAP_THRESHOLD) == 1
        ok &= libc.mallopt(_M_TRIM_THRESHOLD, keep_bytes) == 1
        ok &= libc.mallopt(_M_TOP_PAD, 64 * 1024 * 1024) == 1
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return False
    if not ok:
        logger.debug("mallopt refused a setting; allocator left as it was")
    return bool(ok)
