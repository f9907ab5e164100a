"""CPU threads of a stage script, set before torch starts OpenMP (this module imports no torch).

Two runs side by side on the same cores (seeds run in two shells) slowed each other down
badly: after every parallel region libgomp's idle threads spin for about 3 ms
(`GOMP_SPINCOUNT` 300,000) before they sleep, taking the core from the other run's working
threads. Passive waiting (`OMP_WAIT_POLICY=PASSIVE`, sleep at once) removes that but makes a
run alone slower, since every parallel region then wakes its threads from sleep. A short spin
keeps most of both: see SPIN_COUNT. The thread count follows the CPUs this process may run on
(`taskset`, a container's cpuset), not the machine's count.

OpenMP reads its variables once, when torch loads it: `configure_threads` must run before the
first `import torch` of the process, which is why the stage scripts call it first. A user's
own OpenMP or MKL variables (or `reproduce.py --jobs`, which sets the thread count per job)
are kept.
"""

from __future__ import annotations

import os
import sys

THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")
WAIT_VARIABLES = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")
# libgomp's spin before an idle thread sleeps. Measured on the 2-core machine with relationnet
# Conv-4 K 32 (1,280 images, epoch seconds, docs/performance.md): alone 15.3 with libgomp's
# default, 17.4 with 2,000, 20.5 passive; two runs at once 100, 27 and 23 each. 2,000 keeps a
# run alone within about 10% of the default while two runs share the cores (27 s is less than
# two runs one after the other); passive would cost a run alone about a third.
SPIN_COUNT = 2000


def usable_cpus() -> list[int]:
    """The CPUs this process may run on: its affinity mask where the system has one (a job
    scheduler's or taskset's share, not the machine's)."""
    if hasattr(os, "sched_getaffinity"):
        return sorted(os.sched_getaffinity(0))
    return list(range(os.cpu_count() or 1))


def configure_threads(environ=os.environ) -> None:
    """One OpenMP thread per usable CPU and a short spin (SPIN_COUNT), unless the user chose them."""
    if "torch" in sys.modules:  # too late for OpenMP's variables: only the count can still change
        if not any(environ.get(name) for name in THREAD_VARIABLES):
            import torch

            torch.set_num_threads(len(usable_cpus()))
        return
    if not any(environ.get(name) for name in THREAD_VARIABLES):
        environ["OMP_NUM_THREADS"] = str(len(usable_cpus()))
    if not any(environ.get(name) for name in WAIT_VARIABLES):
        environ["GOMP_SPINCOUNT"] = str(SPIN_COUNT)


def thread_settings(environ=os.environ) -> dict:
    """What the run's config records: the threads torch uses and how OpenMP's threads wait."""
    import torch

    return {
        "threads": torch.get_num_threads(),
        "usable_cpus": len(usable_cpus()),
        "omp_wait_policy": environ.get("OMP_WAIT_POLICY", "OpenMP's default"),
        "gomp_spincount": environ.get("GOMP_SPINCOUNT", "libgomp's default"),
    }
