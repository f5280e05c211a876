"""What this CPU can do, read without importing torch (the exported runtimes must not)."""

from __future__ import annotations

import functools
import platform
from pathlib import Path

# x86 features with which int8 kernels add u8 x s8 products straight into int32 (VNNI, AMX).
_INT32_SUM_FLAGS = {"avx512_vnni", "avx_vnni", "amx_int8"}


@functools.cache
def cpu_flags() -> frozenset[str]:
    """The flags of /proc/cpuinfo (empty where there is none: not Linux)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(line.partition(":")[2].split())
    return frozenset()


def int8_sums_saturate() -> bool:
    """Whether int8 matrix products here may saturate: on x86 without VNNI or AMX (AVX2, AVX-512
    without VNNI) the kernels add pairs of u8 x s8 products in int16 first (vpmaddubsw), which
    overflows for large activations and weights unless the weights keep 7 bits (ONNX Runtime's
    and torch's `reduce_range`). False on other architectures and where the flags can't be read."""
    if platform.machine().lower() not in ("x86_64", "amd64", "i686", "x86"):
        return False
    flags = cpu_flags()
    return bool(flags) and not (flags & _INT32_SUM_FLAGS)
