"""What the CPU offers, read without loading torch (the benchmark's driver reads it too)."""

from __future__ import annotations

# CPU flags of bfloat16 matrix units (Linux's /proc/cpuinfo): Intel's AMX tiles and
# AVX512-BF16 (Intel, AMD Zen 4 and later), and the Arm BF16 extension. Without one, torch
# computes bfloat16 products in generic code, hundreds of times slower than float32.
NATIVE_BF16_FLAGS = ("amx_bf16", "avx512_bf16", "bf16")


def cpu_flags(cpuinfo: str = "/proc/cpuinfo") -> set[str]:
    """The CPU's feature flags (x86 `flags`, Arm `Features`); empty where the file is missing."""
    try:
        with open(cpuinfo) as handle:
            for line in handle:
                name, _, value = line.partition(":")
                if name.strip() in ("flags", "Features"):
                    return set(value.split())
    except OSError:
        pass
    return set()


def cpu_has_native_bf16(flags: set[str] | None = None) -> bool:
    """Whether the CPU multiplies bfloat16 matrices in hardware (see NATIVE_BF16_FLAGS)."""
    return bool((cpu_flags() if flags is None else flags) & set(NATIVE_BF16_FLAGS))
