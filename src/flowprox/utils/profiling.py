"""Peak memory of a region of code, on CPU (resident set size) or CUDA (allocator).

On CPU the kernel's high-water mark is reset by writing ``5`` to ``/proc/self/clear_refs`` and
the peak read from ``VmHWM``, above ``VmRSS`` at the start (Linux; elsewhere ``ru_maxrss``,
right only when the region beats every earlier peak). Freed memory returns to the OS only after
``malloc_trim``, so a CPU peak is an upper bound of what the region needed. On CUDA:
``torch.cuda.max_memory_allocated`` above ``memory_allocated`` at the start.
"""

from __future__ import annotations

import ctypes
import gc
import resource

import torch


def _proc_status_kib(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not found in /proc/self/status")


def _reset_rss_high_water_mark() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")
    except OSError:
        return False
    return True


def _malloc_trim() -> None:
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


class PeakMeter:
    """Peak memory of a region above the memory held when it starts (see the module docstring)."""

    def __init__(self, device: str | torch.device) -> None:
        device = torch.device(device).type
        self.device = device
        self.method = ""
        self.baseline = 0
        self._ru_start = 0

    def start(self) -> None:
        gc.collect()
        if self.device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.baseline = torch.cuda.memory_allocated()
            self.method = "torch.cuda.max_memory_allocated - memory_allocated before the step"
            return
        _malloc_trim()
        if _reset_rss_high_water_mark():
            self.method = "VmHWM - VmRSS before the step (high-water mark reset via clear_refs)"
        else:
            self.method = (
                "ru_maxrss - VmRSS before the step (clear_refs not writable: the high-water mark "
                "cannot be reset, so this is only right when the step beats every earlier peak)"
            )
        self.baseline = _proc_status_kib("VmRSS") * 1024
        self._ru_start = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

    def stop(self) -> int:
        if self.device == "cuda":
            torch.cuda.synchronize()
            return torch.cuda.max_memory_allocated() - self.baseline
        if self.method.startswith("VmHWM"):
            peak = _proc_status_kib("VmHWM") * 1024
        else:
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        return max(peak - self.baseline, 0)
