"""The cheap fitness of an allocation: mean KL(dense || allocation) per token on a few calibration windows.

The dense model's log-probabilities are computed once; an allocation is scored by swapping the measured
quantized weights (compression/search/measure.py) into the model's linears (only the layers that differ from
the allocation scored last) and running the windows through it. ``close`` puts the dense weights back.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from presso.compression.search.measure import LayerTable

MAX_REFERENCE_FLOATS = 1 << 28  # dense log-probabilities kept: tokens x vocab float32 (1 GiB)


def fitness_windows(calibration: torch.Tensor, samples: int, vocab: int) -> torch.Tensor:
    """The first ``samples`` calibration windows, fewer when their dense log-probabilities would pass 1 GiB."""
    seq = calibration.shape[1]
    fit = max(1, MAX_REFERENCE_FLOATS // max(seq * vocab, 1))
    return calibration[: max(1, min(samples, fit))]


class KLFitness:
    def __init__(self, model: nn.Module, table: LayerTable, windows: torch.Tensor, device: torch.device,
                 batch_size: int = 4) -> None:
        self.model, self.table, self.device, self.batch_size = model, table, device, batch_size
        self.batches = [b.to(device) for b in windows.split(batch_size)]
        self.dense = [layer.module.weight.data for layer in table.layers]
        self.current: list[int | None] = [None] * len(table.layers)  # None: dense
        self.evaluated = 0
        model.to(device)
        with torch.no_grad():
            self.reference = [self._logprobs(b) for b in self.batches]
        self.tokens = sum(b.numel() for b in self.batches)

    def _logprobs(self, ids: torch.Tensor) -> torch.Tensor:
        return F.log_softmax(self.model(input_ids=ids, use_cache=False).logits.float(), dim=-1)

    def set(self, alloc: Sequence[int]) -> None:
        for k, j in enumerate(alloc):
            if self.current[k] != j:
                w = self.table.weights[k][j]
                self.table.layers[k].module.weight.data = w if w.device == self.device else w.to(self.device)
                self.current[k] = j

    @torch.no_grad()
    def __call__(self, alloc: Sequence[int]) -> float:
        self.set(alloc)
        total = 0.0
        for ids, ref in zip(self.batches, self.reference, strict=True):
            total += float(F.kl_div(self._logprobs(ids), ref, log_target=True, reduction="sum"))
        self.evaluated += 1
        return max(total / self.tokens, 0.0)

    def close(self) -> None:
        """The dense weights back, the model back on the CPU (where the job keeps it)."""
        for layer, w in zip(self.table.layers, self.dense, strict=True):
            layer.module.weight.data = w
        self.current = [None] * len(self.table.layers)
        self.reference = []
        self.model.to("cpu")
