"""glibc malloc settings for training processes: freed tensor memory stays in the heap.

Why: glibc serves a block above ``M_MMAP_THRESHOLD`` (128 KiB at start, raised by itself only
as far as the largest block freed so far) with a fresh ``mmap`` and hands free heap tops above
``M_TRIM_THRESHOLD`` back to the kernel, so a training step whose activations are megabytes
re-faults its memory page by page at every step. Measured on the LOMPO model step at the cpu
profile (one thread, ``benchmarks/bench_fastpath.py``): ~10,000-27,000 minor page faults and
20-76 ms of system time per step with glibc's defaults, none and under 1 ms with these
settings (the step 1.09-1.17x faster); a BC update went from ~2,500 faults to ~50. The memory a step frees is reused by
the next one instead of being returned and faulted in again; the resident size is the peak
a step needs, as before.

``tune()`` is called by every command that trains or collects (``runner.set_torch_threads``)
and by each sweep job. ``LOMPO_BENCH_MALLOC=default`` keeps glibc's own behaviour. Anything
but glibc (macOS, musl) is left alone.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

# mallopt(3) parameters (malloc.h).
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
# The largest mmap threshold glibc documents for 64-bit (4 * 1024 * 1024 * sizeof(long)):
# every block up to 32 MiB comes from the heap. Larger ones (the paper profile's biggest
# activations) are still mmapped, but are few per step relative to their work.
TUNED = {M_MMAP_THRESHOLD: 32 * 1024 * 1024, M_TRIM_THRESHOLD: 1024 * 1024 * 1024}
ENV_VAR = "LOMPO_BENCH_MALLOC"


def _libc():
    if os.name != "posix":
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.gnu_get_libc_version  # glibc only: mallopt's parameters are glibc's
        return libc
    except (OSError, AttributeError):
        return None


def _set(values: dict[int, int]) -> bool:
    libc = _libc()
    if libc is None:
        return False
    return all(libc.mallopt(ctypes.c_int(param), ctypes.c_int(value)) == 1 for param, value in values.items())


def tune() -> bool:
    """Keep freed memory in the heap (see the module doc); True if applied."""
    if os.environ.get(ENV_VAR, "").strip().lower() == "default":
        return False
    return _set(TUNED)
