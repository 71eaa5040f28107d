"""Resolve `execution.device` (auto, cpu, cuda, cuda:N) and `execution.amp` to what training runs on."""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING

from .errors import DeviceError

if TYPE_CHECKING:  # torch is imported only when a CUDA device is asked about
    import torch


def device_problem(name: str) -> str | None:
    """None when `name` can train here; otherwise what is missing (for 'auto' and 'cpu' never)."""
    if name in ("auto", "cpu"):
        return None
    import torch

    if not torch.cuda.is_available():
        if torch.version.cuda is None:
            why = f"this torch build ({torch.__version__}) has no CUDA support"
        else:
            why = "torch finds no CUDA GPU (no GPU, no driver, or CUDA_VISIBLE_DEVICES hides it)"
        return f"{name!r} needs a CUDA GPU, but {why}; use 'auto' or 'cpu'"
    index = int(name.split(":")[1]) if ":" in name else 0
    count = torch.cuda.device_count()
    if index >= count:
        return f"{name!r} asks for GPU {index}, but torch sees {count} (cuda:0 to cuda:{count - 1})"
    return None


def resolve_device(name: str) -> "torch.device":
    """The torch device `execution.device` means in this process (each worker resolves its own)."""
    import torch

    problem = device_problem(name)
    if problem:
        raise DeviceError(f"execution.device {problem}")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device(name)


def amp_dtype(device: "torch.device", amp: bool) -> "torch.dtype | None":
    """The autocast dtype for `amp` on `device`: bf16 where the GPU has it, else fp16; None for float32.

    On the CPU (only reachable through 'auto' on a machine without a GPU: 'cpu' with amp is refused
    when the spec is validated) training stays float32, and a warning says so.
    """
    import torch

    if not amp:
        return None
    if device.type != "cuda":
        warnings.warn("execution.amp is on but training runs on the CPU (no GPU found): training in float32", stacklevel=2)
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
