"""Which dtype a network's autocast runs in: ``model.network_precision`` resolved on a device.

``"float32"``: no autocast. ``"bfloat16"``: bfloat16 autocast wherever the network runs.
``"auto"``: bfloat16 where the hardware computes it natively (CPUs with AVX-512 BF16 or AMX,
CUDA GPUs of compute capability 8.0 or newer), float32 elsewhere: without native support
oneDNN emulates bfloat16, which can be slower than float32.
"""

from __future__ import annotations

import functools
from pathlib import Path

import torch
from torch import Tensor, nn

#: the values of ``model.network_precision``
NETWORK_PRECISIONS = ("float32", "bfloat16", "auto")

#: /proc/cpuinfo flags of native bfloat16 arithmetic
_CPU_BFLOAT16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})


@functools.cache
def cpu_has_native_bfloat16() -> bool:
    """Whether this CPU has AVX-512 BF16 or AMX (Linux ``/proc/cpuinfo``; False elsewhere)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    for line in text.splitlines():
        if line.startswith("flags"):
            return bool(_CPU_BFLOAT16_FLAGS & set(line.split(":", 1)[1].split()))
    return False


@functools.cache
def _cuda_has_native_bfloat16(index: int) -> bool:
    return torch.cuda.get_device_capability(index)[0] >= 8


def native_bfloat16(device: torch.device) -> bool:
    """Whether ``device`` computes bfloat16 natively (see the module docstring)."""
    if device.type == "cuda":
        return _cuda_has_native_bfloat16(device.index or 0)
    return device.type == "cpu" and cpu_has_native_bfloat16()


def check_network_precision(precision: str) -> str:
    """``precision`` if it is one of ``NETWORK_PRECISIONS``; a clear error otherwise."""
    if precision not in NETWORK_PRECISIONS:
        raise ValueError(
            f"unknown network precision {precision!r}; choose one of "
            f"{', '.join(NETWORK_PRECISIONS)}."
        )
    return precision


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of a network at ``precision`` on ``device`` (None: float32)."""
    if precision == "bfloat16" or (precision == "auto" and native_bfloat16(device)):
        return torch.bfloat16
    check_network_precision(precision)
    return None


def run_network(network: nn.Module, x: Tensor, precision: str) -> Tensor:
    """``network(x)`` at ``precision``: as it is in float32; at a precision that resolves to
    bfloat16, in its autocast on a channels-last copy of ``x`` (oneDNN's fast path), the output
    cast back to ``x``'s dtype and NCHW layout. Deterministic: the same ``x`` gives the same
    output, which keeps a coupling layer exactly invertible."""
    dtype = autocast_dtype(precision, x.device)
    if dtype is None:
        return network(x)
    with torch.autocast(x.device.type, dtype=dtype):
        out = network(x.contiguous(memory_format=torch.channels_last))
    return out.to(x.dtype).contiguous()


def exact_float32_on_cuda() -> None:
    """TF32 off for CUDA matrix products and cuDNN convolutions. On GPUs of compute capability
    8.0 and newer torch lets cuDNN run float32 convolutions in TF32 (a 10-bit mantissa) by
    default; the flows' inverse must undo their forward to float32 rounding and their
    log-determinants stay float32, so float32 means float32 on every CUDA device flowprox
    resolves. Faster networks are chosen explicitly: ``model.network_precision``."""
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
