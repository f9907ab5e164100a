"""The machine's limit, measured in the same run as the configurations: which CPU (its name
and the flags that decide the speed of float32 and bfloat16 arithmetic), the rate of a large
matrix product in float32 and in bfloat16 (the peak a training step can approach), and the
floating-point operations of a step (torch's FlopCounterMode: matrix products and
convolutions, forward and backward)."""

from __future__ import annotations

import platform
import time

# The flags shown on the benchmark's `cpu:` line: vector width and the bfloat16 units.
SHOWN_FLAGS = ("avx2", "fma", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16", "bf16")
PEAK_SIZE = 2048  # the matrix product's side: large enough to run at the units' full rate
# Without native bfloat16 units a 2048 x 2048 product takes minutes (generic code); a 512 one
# runs at the same rate per operation in under a second.
EMULATED_BF16_SIZE = 512
PEAK_REPEATS = 10  # the best of these products is the peak: other processes' load slows some


def cpu_name(cpuinfo: str = "/proc/cpuinfo") -> str:
    try:
        with open(cpuinfo) as handle:
            for line in handle:
                name, _, value = line.partition(":")
                if name.strip() == "model name":
                    return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def describe_flags(flags: set[str]) -> str:
    """The shown flags the CPU has, then those it lacks."""
    present = [flag for flag in SHOWN_FLAGS if flag in flags]
    absent = [flag for flag in SHOWN_FLAGS if flag not in flags and flag != "bf16"]  # bf16: Arm's name
    return " ".join(present) + (f", no {' '.join(absent)}" if absent else "")


def matmul_gflops(dtype, size: int, device, repeats: int = PEAK_REPEATS) -> float:
    """The best rate of `repeats` size x size matrix products (after one unmeasured), GFLOP/s."""
    import torch

    generator = torch.Generator(device=device).manual_seed(0)
    a, b = (torch.randn(size, size, generator=generator, device=device).to(dtype) for _ in range(2))
    best = float("inf")
    for attempt in range(repeats + 1):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        a @ b
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if attempt:
            best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best / 1e9


def machine_worker(args) -> dict:
    """The CPU's name and flags, and the float32 and bfloat16 matrix-product peaks of `args.device`
    with this process's threads (the training workers' own)."""
    import torch

    from utils.cpu import cpu_flags, cpu_has_native_bf16

    device = torch.device(args.device)
    flags = cpu_flags()
    if device.type == "cuda":
        native_bf16 = torch.cuda.is_bf16_supported()
        processor = torch.cuda.get_device_name(device)
    else:
        native_bf16 = cpu_has_native_bf16(flags)
        processor = cpu_name()
    bf16_size = PEAK_SIZE if native_bf16 else EMULATED_BF16_SIZE
    return {
        "cpu": cpu_name(),
        "flags": describe_flags(flags),
        "capability": torch.backends.cpu.get_cpu_capability(),
        "threads": torch.get_num_threads(),
        "processor": processor,
        "native_bf16": native_bf16,
        "bf16_size": bf16_size,
        "fp32": matmul_gflops(torch.float32, PEAK_SIZE, device),
        "bf16": matmul_gflops(torch.bfloat16, bf16_size, device, PEAK_REPEATS if native_bf16 and not args.quick else 2),
    }


def describe_machine(machine: dict) -> list[str]:
    """The `cpu:` and `peak:` lines of the benchmark's output."""
    bf16 = "native" if machine["native_bf16"] else "emulated: no native bfloat16 units"
    return [
        f"cpu: {machine['cpu']}; flags {machine['flags']}; torch's kernels {machine['capability']}",
        f"peak ({machine['processor']}, {machine['threads']} threads, best matrix product): "
        f"fp32 {machine['fp32']:,.1f} GFLOP/s ({PEAK_SIZE}x{PEAK_SIZE}), "
        f"bf16 {machine['bf16']:,.1f} GFLOP/s ({machine['bf16_size']}x{machine['bf16_size']}, {bf16})",
    ]


def counted_flops(run) -> float:
    """Floating-point operations of `run()`, forward and backward. Compiled modules run
    eagerly meanwhile, so the counter sees each operation (compiling changes none of them)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with torch.compiler.set_stance("force_eager"), counter:
        run()
    return float(counter.get_total_flops())
