"""Reading the CPU's flags: which CPUs have bfloat16 matrix units."""

from __future__ import annotations

from utils.cpu import cpu_flags, cpu_has_native_bf16


def test_native_bf16_is_read_from_the_cpu_flags(tmp_path):
    """An AVX2-only x86 CPU has no bfloat16 units; AMX, AVX512-BF16 and Arm's BF16 are such units."""
    x86 = tmp_path / "x86"
    x86.write_text("processor\t: 0\nmodel name\t: AMD EPYC\nflags\t\t: fpu sse2 avx2 fma\n\nprocessor\t: 1\n")
    arm = tmp_path / "arm"
    arm.write_text("processor\t: 0\nFeatures\t: fp asimd sve bf16 i8mm\n")
    assert cpu_flags(str(x86)) == {"fpu", "sse2", "avx2", "fma"} and not cpu_has_native_bf16(cpu_flags(str(x86)))
    assert cpu_has_native_bf16(cpu_flags(str(arm)))
    assert cpu_has_native_bf16({"avx512f", "avx512_bf16"}) and cpu_has_native_bf16({"amx_tile", "amx_bf16"})
    assert cpu_flags(str(tmp_path / "missing")) == set()
