"""Shared helpers for the benchmarks: package import, peak-memory probes (resident and CUDA) and robust
timing (interleaved, or paired ratios on wall and CPU time).

Benchmarks report ratios against a reference measured in the same run (these machines are noisy) and
never assert on time.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
import types
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

ROOT = Path(__file__).resolve().parents[1]


def import_pack():
    """Register the repository as the package `comfyui_mmdit` (as tests/conftest.py does)."""
    if "comfyui_mmdit" not in sys.modules:
        package = types.ModuleType("comfyui_mmdit")
        package.__path__ = [str(ROOT)]
        package.__file__ = str(ROOT / "__init__.py")
        sys.modules["comfyui_mmdit"] = package


def reset_peak_rss() -> None:
    """Reset the kernel's high-water mark of this process's resident memory (Linux)."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def peak_rss_mb() -> float:
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("VmHWM not available")


def current_rss_mb() -> float:
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("VmRSS not available")


# For child processes measuring memory: large blocks straight from mmap and returned on free, so resident
# memory follows live tensors rather than what the allocator keeps cached.
MEMORY_ENV = {"MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0"}


def run_child(script, *args, env: dict | None = None) -> dict:
    """Run `python script args...` in a fresh process and return the JSON object its last line prints."""
    out = subprocess.run([sys.executable, str(script), *map(str, args)], capture_output=True, text=True,
                         check=True, env=dict(os.environ, **(env or {})))
    return json.loads(out.stdout.strip().splitlines()[-1])


def peak_extra_mb(fn) -> float:
    """Peak resident memory above the current level during one call of `fn` (MB). `fn` runs once before,
    so first-call allocations (kernels, cached tables) are not counted."""
    fn()
    baseline = current_rss_mb()
    reset_peak_rss()
    fn()
    return peak_rss_mb() - baseline


def main_or_memory_child(main, build) -> None:
    """`script` runs main(); `script --memory WHICH` is the child that prints {"peak_extra_mb": ...} for the
    callable `build(WHICH)` returns."""
    if len(sys.argv) == 3 and sys.argv[1] == "--memory":
        import torch

        torch.set_num_threads(2)
        print(json.dumps({"peak_extra_mb": peak_extra_mb(build(sys.argv[2]))}))
    else:
        main()


def median_time(fn, repeats: int = 5, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def interleaved_times(fns: dict, repeats: int = 7, warmup: int = 1) -> dict[str, float]:
    """Median time of each callable, run in alternation so slow phases of the machine hit all alike."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    samples = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            samples[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in samples.items()}


# Process CPU time counts the work of this process's threads (OMP_WAIT_POLICY=PASSIVE: waiting threads do not
# spin), which other jobs on a shared machine hardly change while they stretch wall time.
CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}


def paired_times(fns: dict, reference: str, repeats: int, warmup: int = 1,
                 samples_out: dict | None = None) -> dict[str, tuple[dict, dict]]:
    """For each clock of CLOCKS: (median time of each callable, median of its ratios to `reference`). Every
    sample of a case is taken right after or right before one of the reference (the order alternating
    between repeats), and the ratio is of that pair. `samples_out`, if given, receives every sample:
    {clock: {name: [seconds, ...]}}."""
    def timed(fn):
        start = {clock: read() for clock, read in CLOCKS.items()}
        fn()
        return {clock: read() - start[clock] for clock, read in CLOCKS.items()}

    for fn in fns.values():
        for _ in range(warmup):
            fn()
    samples = {clock: {name: [] for name in fns} for clock in CLOCKS}
    ratios = {clock: {name: [] for name in fns if name != reference} for clock in CLOCKS}
    for repeat in range(repeats):
        for name in ratios["wall"]:
            if repeat % 2:
                t, t_ref = timed(fns[name]), timed(fns[reference])
            else:
                t_ref, t = timed(fns[reference]), timed(fns[name])
            for clock in CLOCKS:
                samples[clock][reference].append(t_ref[clock])
                samples[clock][name].append(t[clock])
                ratios[clock][name].append(t[clock] / t_ref[clock])
    if samples_out is not None:
        samples_out.update(samples)
    return {clock: ({name: statistics.median(v) for name, v in samples[clock].items()},
                    {reference: 1.0, **{name: statistics.median(v) for name, v in ratios[clock].items()}})
            for clock in CLOCKS}


def cuda_peak_extra_mb(fn) -> float:
    """Peak allocated CUDA memory above the current level during one call of `fn` (MB); `fn` has run before."""
    import torch

    torch.cuda.synchronize()
    baseline = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    fn()
    return (torch.cuda.max_memory_allocated() - baseline) / 2 ** 20
