"""The cost profiler measures any grounding method (here the text-blind baselines, no Captum needed)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from groundiff_core.methods.baselines import CentrePrior
from groundiff_core.util import profiling


class _Allocates:
    """A stand-in method that holds a known tensor allocation while it grounds."""

    name = "allocates"

    def __init__(self, n_bytes: int) -> None:
        self.n_bytes = n_bytes
        self.calls = 0

    def ground(self, image, phrases):
        self.calls += 1
        buf = torch.ones(self.n_bytes // 4, dtype=torch.float32)
        return float(buf.sum())


def test_measure_cost_of_a_method_without_model(textured_image):
    cost = profiling.measure_cost(CentrePrior(), textured_image, ["a", "b", "c"])
    assert cost.method == "centre" and cost.n_pairs == 3 and cost.device == "cpu"
    assert cost.seconds > 0 and cost.seconds_per_pair == pytest.approx(cost.seconds / 3)
    assert cost.memory == "torch_cpu_profiler" and cost.peak_bytes == 0  # numpy only: no torch allocation to see
    json.dumps(cost.as_dict())


def test_cpu_peak_sees_tensor_allocations():
    method = _Allocates(8 * 2**20)
    cost = profiling.measure_cost(method, np.zeros((4, 4), np.float32), ["x"])
    assert method.calls == 2  # one timed call, one under the profiler
    assert cost.memory == "torch_cpu_profiler" and cost.peak_bytes >= 8 * 2**20
    no_mem = profiling.measure_cost(method, None, ["x"], memory=False)
    assert no_mem.memory == "not_measured" and no_mem.peak_bytes == 0 and method.calls == 3


def test_rss_fallback_is_a_lower_bound():
    """In a fresh process (in the test run's own one, memory freed by earlier tests can stay resident
    and be reused, so the resident set need not grow): 64 MiB touched during the call are seen."""
    import subprocess
    import sys

    if profiling._rss_bytes() is None:
        pytest.skip("no /proc/self/statm on this system")
    code = ("import numpy as np\nfrom groundiff_core.util import profiling\nheld = []\n"
            "peak, kind = profiling._cpu_peak_rss(lambda: held.append(np.ones(64 * 2**20 // 8)))\n"
            "print(kind, peak)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out[0] == "cpu_rss_peak" and int(out[1]) >= 32 * 2**20


def test_peak_memory_is_one_untimed_call():
    method = _Allocates(8 * 2**20)
    peak, how = profiling.peak_memory(method, np.zeros((4, 4), np.float32), ["x"])
    assert method.calls == 1  # measure_cost would have called it twice on CPU
    assert how == "torch_cpu_profiler" and peak >= 8 * 2**20
    small, _ = profiling.peak_memory(_Allocates(2**20), None, ["x"])
    assert 2**20 <= small < 8 * 2**20


def test_the_cpu_peak_prints_nothing_of_the_cpp_profiler():
    """torch's profiler writes 'profiler_start' / 'profiler_stop' lines to fd 2 from C++; a notebook
    shows them as output. The measurement silences them, and only them."""
    import subprocess
    import sys

    code = ("import sys, torch\n"
            "from groundiff_core.util.profiling import _cpu_peak_profiled\n"
            "peak, how = _cpu_peak_profiled(lambda: torch.ones(1000) * 2)\n"
            "assert peak > 0, peak\n"
            "print('after', file=sys.stderr)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stderr == "after\n"
