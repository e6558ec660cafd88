"""glibc malloc tuning for PyTorch on the CPU.

glibc returns large freed blocks to the OS (mmap/trim) and then page-faults them back in at the
next step: measured here, a full-size UNet step took 7.1 s instead of 6.2 s and small-model
training 6-36x longer. Calling mallopt at start-up has the effect of
MALLOC_MMAP_MAX_=0 MALLOC_MMAP_THRESHOLD_=32MiB MALLOC_TRIM_THRESHOLD_=2GiB MALLOC_TOP_PAD_=1GB
without the user setting anything. Values the user did set in the environment win, and
PWW_LDM_MALLOC=default skips the tuning altogether (glibc's own behaviour: freed large blocks go
back to the OS, so resident memory peaks lower, and every large buffer is faulted in afresh, so
steps and decodes run slower; README "Peak memory" has both measured).

MALLOC_MMAP_MAX_=0: no block gets a mapping of its own, every tensor comes from the heap, and a
freed one is reused by the next allocation instead of being unmapped and faulted in afresh.
The threshold alone cannot do that: glibc caps it at 32 MiB, and every VAE feature map from
256 px up, and the UNet's at 1024 px, is larger. On a 2-core AMD EPYC (full-size SD v1, fp32,
after a UNet step in the same process) a 512 px decode took 8.3 s (later ones 7.5-8.6 s) instead of
12.7-15.1 s, with 145 000 instead of 580 000-1 580 000 page faults, and the same peak RSS
(5.77 vs 5.81 GiB); at 1024 px one UNet step 55.9 instead of 61.1 s and the tiled decode 45.0
instead of 70.3 s (89 000 vs 8 960 000 faults), peak RSS 6.32 vs 6.17 GiB.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys
import warnings

# mallopt parameter numbers from glibc's malloc.h
M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD, M_MMAP_MAX = -1, -2, -3, -4
SETTINGS = {
    "MALLOC_MMAP_MAX_": (M_MMAP_MAX, 0),
    "MALLOC_MMAP_THRESHOLD_": (M_MMAP_THRESHOLD, 32 * 1024 * 1024),
    "MALLOC_TRIM_THRESHOLD_": (M_TRIM_THRESHOLD, 2**31 - 1),
    "MALLOC_TOP_PAD_": (M_TOP_PAD, 1_000_000_000),
}
_tuned = False


def tune_malloc() -> bool:
    """Apply the settings once per process; True when glibc accepted them (False elsewhere, or
    when PWW_LDM_MALLOC=default asks for glibc's own settings)."""
    global _tuned
    if _tuned:
        return True
    choice = os.environ.get("PWW_LDM_MALLOC", "tuned")
    if choice not in ("tuned", "default"):  # a warning: every entry point calls this first
        warnings.warn(f"PWW_LDM_MALLOC={choice!r} is neither 'tuned' nor 'default'; tuning malloc "
                      "as without it (set PWW_LDM_MALLOC=default for glibc's own settings)",
                      stacklevel=2)
    if choice == "default" or not sys.platform.startswith("linux"):
        return False
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and others have no mallopt
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    ok = True
    for env, (param, value) in SETTINGS.items():
        if env not in os.environ:
            ok = bool(mallopt(param, value)) and ok
    _tuned = ok
    return ok

