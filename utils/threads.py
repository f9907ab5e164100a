"""CPU threads of a stage script, set before torch starts OpenMP (this module imports no torch).

Two runs side by side on the same cores (seeds of a grid, `reproduce.py --jobs`) slowed each
other 2.5-fold: after every parallel region OpenMP's idle threads spin for about 3 ms before
they sleep, taking the core from the other run's working threads. Passive waiting (the
threads sleep at once) removed that, and a run alone was not slower with it (the benchmark's
concurrent-runs check; on a busy machine it was 4 times faster). The thread count
follows the CPUs this process may run on (`taskset`, a container's cpuset), not the
machine's count.

OpenMP reads its variables once, when torch loads it: `configure_threads` must run before the
first `import torch` of the process, which is why the stage scripts call it first. A user's
own OpenMP or MKL variables (or `reproduce.py --jobs`, which sets them per job) are kept.
"""
from __future__ import annotations

import os
import sys

THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")
WAIT_VARIABLES = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")


def usable_cpus() -> int:
    """CPUs this process may run on: its affinity mask where the system has one."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def configure_threads(environ=os.environ) -> None:
    """One OpenMP thread per usable CPU and passive waiting, unless the user chose them."""
    if "torch" in sys.modules:  # too late for OpenMP's variables: only the count can still change
        if not any(environ.get(name) for name in THREAD_VARIABLES):
            import torch
            torch.set_num_threads(usable_cpus())
        return
    if not any(environ.get(name) for name in THREAD_VARIABLES):
        environ["OMP_NUM_THREADS"] = str(usable_cpus())
    if not any(environ.get(name) for name in WAIT_VARIABLES):
        environ["OMP_WAIT_POLICY"] = "PASSIVE"


def thread_settings(environ=os.environ) -> dict:
    """What the run's config records: the threads torch uses and OpenMP's waiting policy."""
    import torch
    return {"threads": torch.get_num_threads(), "usable_cpus": usable_cpus(),
            "omp_wait_policy": environ.get("OMP_WAIT_POLICY", "OpenMP's default (spin, then sleep)")}
