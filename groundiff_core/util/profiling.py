"""Runtime and peak memory of one ``ground`` call, for any grounding method.

Kept apart from the methods so that every method (the cross-attention ``Grounder``, the Captum
methods, the baselines) is measured by the same code; notebook 5 shows its cost table with it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import os
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch

__all__ = ["Cost", "measure_cost", "peak_memory"]


@dataclass(frozen=True)
class Cost:
    """Runtime and peak memory of one ``ground`` call on ``n_pairs`` image-phrase pairs.

    ``peak_bytes`` is measured as ``memory`` says, above what was allocated before the call:
    ``"cuda_max_allocated"`` (torch's peak CUDA allocation), ``"torch_cpu_profiler"`` (peak of
    torch's CPU tensor allocations, replayed from the profiler's allocation events in a second,
    untimed call: neither ``tracemalloc``, which sees only the Python heap, nor the resident set
    size, which the allocator's reuse of freed memory hides, measures tensors), ``"cpu_rss_peak"``
    (fallback when the profiler's events are unavailable: resident-set peak sampled every 5 ms, a
    lower bound) or ``"not_measured"``.
    """

    method: str
    n_pairs: int
    seconds: float
    seconds_per_pair: float
    peak_bytes: int
    memory: str
    device: str

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)



@contextlib.contextmanager
def _stderr_silenced():
    """File descriptor 2 pointed at the null device for the block: silences lines that C++ code
    writes to the process's stderr (Python's ``sys.stderr`` is not involved), which a notebook would
    otherwise show as output."""
    import sys

    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no usable fd 2: nothing to silence
        yield
        return
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _rss_bytes() -> int | None:
    """Resident set size of this process (Linux ``/proc``), or None where it cannot be read."""
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def _cpu_peak_profiled(call: Callable[[], Any]) -> tuple[int, str]:
    """Peak of live CPU tensor bytes during ``call()``, from torch profiler allocation events."""
    from torch.profiler import ProfilerActivity, profile

    prof = profile(activities=[ProfilerActivity.CPU], profile_memory=True)
    with _stderr_silenced():  # torch's C++ profiler prints a "profiler_start" line to fd 2
        prof.__enter__()
    try:
        call()
    finally:
        with _stderr_silenced():  # ... and a "profiler_stop" line
            prof.__exit__(None, None, None)
    try:
        events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
        events.sort(key=lambda e: e.start_ns())
        live = peak = 0
        for e in events:
            if e.device_type() == torch.autograd.DeviceType.CPU:
                live += int(e.nbytes())
                peak = max(peak, live)
        return peak, "torch_cpu_profiler"
    except (AttributeError, TypeError):  # private profiler API changed: sample the RSS instead
        return _cpu_peak_rss(call)


def _cpu_peak_rss(call: Callable[[], Any]) -> tuple[int, str]:
    """Resident-set peak above the start during ``call()``, sampled every 5 ms (a lower bound)."""
    start = _rss_bytes()
    if start is None:
        call()
        return 0, "not_measured"
    peak, stop = [start], threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], _rss_bytes() or 0)
            stop.wait(0.005)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        call()
    finally:
        stop.set()
        thread.join()
    return max(peak[0], _rss_bytes() or 0) - start, "cpu_rss_peak"


def _device_of(method: Any, device: str | torch.device | None) -> torch.device:
    if device is None:
        model = getattr(method, "model", None)
        return model.device if model is not None else torch.device("cpu")
    return torch.device(device)


def _cuda_peak(call: Callable[[], Any], device: torch.device) -> tuple[int, float]:
    """Peak CUDA allocation above the start during ``call()``, and the call's wall time."""
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    t0 = time.perf_counter()
    call()
    torch.cuda.synchronize(device)
    seconds = time.perf_counter() - t0
    return int(max(torch.cuda.max_memory_allocated(device) - before, 0)), seconds


def peak_memory(method: Any, image: Any, phrases: Sequence[str],
                device: str | torch.device | None = None) -> tuple[int, str]:
    """Peak memory of one ``method.ground(image, phrases)`` call and how it was measured (the
    ``peak_bytes`` and ``memory`` of :class:`Cost`), without timing the method: for tables whose
    times come from elsewhere (an evaluation's seconds per pair), one call instead of two on CPU."""
    device = _device_of(method, device)
    phrases = list(phrases)
    gc.collect()
    if device.type == "cuda":
        return _cuda_peak(lambda: method.ground(image, phrases), device)[0], "cuda_max_allocated"
    peak, kind = _cpu_peak_profiled(lambda: method.ground(image, phrases))
    return int(max(peak, 0)), kind


def measure_cost(method: Any, image: Any, phrases: Sequence[str], device: str | torch.device | None = None,
                 memory: bool = True) -> Cost:
    """Time ``method.ground(image, phrases)`` for any grounding method (the cross-attention
    ``Grounder`` included) and measure its peak memory; ``device`` defaults to ``method.model``'s.

    On CUDA one call gives both. On CPU the wall time comes from a clean call and, with
    ``memory=True``, the peak from a second call under the torch profiler (so ``ground`` runs twice).
    """
    phrases = list(phrases)
    device = _device_of(method, device)
    name = getattr(method, "name", type(method).__name__)

    def call() -> None:
        method.ground(image, phrases)

    gc.collect()
    peak, kind = 0, "not_measured"
    if device.type == "cuda":
        peak, seconds = _cuda_peak(call, device)
        kind = "cuda_max_allocated"
    else:
        t0 = time.perf_counter()
        call()
        seconds = time.perf_counter() - t0
        if memory:
            gc.collect()
            peak, kind = _cpu_peak_profiled(call)
    n = len(phrases)
    return Cost(method=name, n_pairs=n, seconds=seconds, seconds_per_pair=seconds / max(n, 1),
                peak_bytes=int(max(peak, 0)), memory=kind, device=str(device))
