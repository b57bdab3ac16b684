"""What every benchmark prints about the CPU it ran on: the model and the SIMD features that
change the figures (AVX2/FMA only, AVX-512 with VNNI, BF16, AMX). Read from /proc/cpuinfo."""

from __future__ import annotations

from pathlib import Path

# The features the engines' kernels and ONNX Runtime pick between, in a stable order.
SIMD_FLAGS = (
    "sse4_2", "avx", "avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16",
    "avx512_fp16", "amx_tile", "amx_bf16", "amx_int8",
)  # fmt: skip


def cpu_model() -> str:
    for line in _cpuinfo().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "?"


def cpu_flags() -> list[str]:
    """The SIMD_FLAGS this CPU has, in SIMD_FLAGS' order."""
    line = next((ln for ln in _cpuinfo().splitlines() if ln.startswith("flags")), "")
    present = set(line.split(":", 1)[-1].split())
    return [flag for flag in SIMD_FLAGS if flag in present]


def _cpuinfo() -> str:
    try:
        return Path("/proc/cpuinfo").read_text(encoding="utf-8")
    except OSError:
        return ""
