"""Model inputs that travel with calibration rows besides their token ids (image+text calibration of a VLM).

Row ``i`` of ``StepContext.calibration`` gets ``rows[i]``: ``pixel_values`` and the processor's other tensors
for the image of that sample (``{}`` for a text-only row). ``capture_inputs`` gives ``model(...)`` a batch's
tensors concatenated along dim 0. Extras belong to one calibration tensor (``ids``): a step that replaces the
calibration with other ids (the rotation's random probe) gets none, while a prefix of the same rows (svd_llm's
subset, the search's samples) keeps them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class CalibrationExtras:
    rows: list[dict[str, torch.Tensor]]  # one per calibration row
    ids: torch.Tensor  # the [n, seq_len] calibration tensor the rows belong to

    @property
    def with_images(self) -> int:
        return sum(1 for r in self.rows if r)

    def belongs_to(self, calibration: torch.Tensor) -> bool:
        """True for ``ids`` itself or a slice of its first rows (same storage, same start, same width)."""
        return (calibration.data_ptr() == self.ids.data_ptr() and calibration.dim() == 2
                and calibration.shape[1] == self.ids.shape[1] and calibration.shape[0] <= self.ids.shape[0])

    def batch(self, start: int, stop: int, device: torch.device, dtype: torch.dtype) -> dict[str, torch.Tensor]:
        """Rows [start, stop) merged: each key's tensors concatenated along dim 0 (rows without the key skipped),
        floating tensors cast to ``dtype``, all moved to ``device``."""
        return {k: (v.to(device, dtype) if v.is_floating_point() else v.to(device))
                for k, v in merge_rows(self.rows[start:stop]).items()}


def merge_rows(rows: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    keys = list(dict.fromkeys(k for r in rows for k in r))
    out = {}
    for k in keys:
        parts = [r[k] for r in rows if k in r]
        if len({tuple(p.shape[1:]) for p in parts}) > 1:  # e.g. LLaVA-NeXT's patch counts: zero-pad trailing dims
            top = [max(p.shape[d] for p in parts) for d in range(1, parts[0].dim())]
            parts = [_pad_to(p, top) for p in parts]
        out[k] = torch.cat(parts)
    return out


def _pad_to(t: torch.Tensor, sizes: list[int]) -> torch.Tensor:
    pad: list[int] = []
    for d in reversed(range(1, t.dim())):
        pad += [0, sizes[d - 1] - t.shape[d]]
    return F.pad(t, pad)
