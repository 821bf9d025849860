"""Weight copies between host memory and a CUDA device through reusable pinned buffers.

Layer-sequential engines move every weight to the GPU and its result back. From pageable memory
the driver copies through its own small bounce buffers, which on the GPU machine measured far
below the bus (BENCHMARKS §3a: an RTN pass over an 8B model spent most of its time copying).
Here one pinned buffer per direction is reused: host -> pinned is a CPU memcpy, pinned -> device
is a DMA at bus speed; the next upload waits (an event) until the previous DMA left the buffer.

Tensors under ``MIN_BYTES`` or over ``MAX_BYTES`` (embeddings) take the plain path, and
``PRESSO_PINNED_STAGING=0`` turns staging off. Not thread-safe: one engine per process uses it.
The buffers (the largest weight moved, at least 64 MiB, per direction) live until ``release()``,
which ``presso.compression.pipeline.compress`` calls at the end of every recipe.
"""

from __future__ import annotations

import os

import torch

MIN_BYTES = 1 << 20
MAX_BYTES = 1 << 30


class _Stage:
    def __init__(self) -> None:
        self.buf: torch.Tensor | None = None
        self.event: torch.cuda.Event | None = None

    def view(self, like: torch.Tensor) -> torch.Tensor:
        if self.event is not None:
            self.event.synchronize()  # the previous copy out of this buffer has finished
        nbytes = like.numel() * like.element_size()
        if self.buf is None or self.buf.numel() < nbytes:
            self.buf = None
            self.buf = torch.empty(max(nbytes, MIN_BYTES * 64), dtype=torch.uint8, pin_memory=True)
        return self.buf[:nbytes].view(like.dtype).view(like.shape)


_up, _down = _Stage(), _Stage()


def release() -> None:
    """Free both pinned buffers (after waiting for any copy still using them)."""
    for stage in (_up, _down):
        if stage.event is not None:
            stage.event.synchronize()
        stage.buf, stage.event = None, None


def _staged(t: torch.Tensor, device: torch.device) -> bool:
    nbytes = t.numel() * t.element_size()
    return (
        device.type == "cuda"
        and MIN_BYTES <= nbytes <= MAX_BYTES
        and os.environ.get("PRESSO_PINNED_STAGING", "1") != "0"
        and torch.cuda.is_available()
    )


def to_device(t: torch.Tensor, device: torch.device | str) -> torch.Tensor:
    """A copy of ``t`` on ``device`` (always a new tensor, even when it is already there)."""
    device = torch.device(device)
    if t.device.type != "cpu" or not _staged(t, device):
        return t.to(device=device, copy=True)
    stage = _up.view(t)
    stage.copy_(t)
    out = stage.to(device=device, non_blocking=True)
    _up.event = torch.cuda.Event()
    _up.event.record(torch.cuda.current_stream(out.device))
    return out


def copy_to_host_(dst: torch.Tensor, src: torch.Tensor) -> None:
    """``dst.copy_(src)`` for a host ``dst`` and a device ``src`` of the same dtype and shape."""
    if dst.device.type != "cpu" or src.device.type != "cuda" or not _staged(src, src.device):
        dst.copy_(src)
        return
    stage = _down.view(src)
    stage.copy_(src, non_blocking=True)
    torch.cuda.current_stream(src.device).synchronize()
    dst.copy_(stage)


def to_host(t: torch.Tensor) -> torch.Tensor:
    if t.device.type == "cpu":
        return t
    out = torch.empty(t.shape, dtype=t.dtype)
    copy_to_host_(out, t)
    return out
