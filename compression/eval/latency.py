"""Forward latency and tokens/s on the worker's device (median of a few timed runs)."""

from __future__ import annotations

import statistics
import time

import torch
from torch import nn


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def forward_latency(
    model: nn.Module, device: torch.device, *, vocab: int, batch: int, seq_len: int = 128, repeats: int = 3
) -> dict[str, float]:
    ids = torch.randint(0, vocab, (batch, seq_len), generator=torch.Generator().manual_seed(0)).to(device)
    model(input_ids=ids)  # warm-up
    times = []
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        model(input_ids=ids)
        _sync(device)
        times.append(time.perf_counter() - t0)
    med = statistics.median(times)
    return {"batch": batch, "seq_len": seq_len, "seconds": med, "tokens_per_s": batch * seq_len / med}
