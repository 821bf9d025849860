"""Quality of compressed encoders: cosine similarity of mean-pooled embeddings before and after."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


@torch.no_grad()
def pooled(model: nn.Module, windows: torch.Tensor, device: torch.device, batch_size: int = 8) -> torch.Tensor:
    out = []
    for batch in windows.split(batch_size):
        hs = model(input_ids=batch.to(device)).last_hidden_state.float()
        out.append(hs.mean(dim=1).cpu())
    return torch.cat(out)


def compare_encoders(
    original: nn.Module, compressed: nn.Module, windows: torch.Tensor, device: torch.device
) -> dict[str, float]:
    a, b = pooled(original, windows, device), pooled(compressed, windows, device)
    cos = F.cosine_similarity(a, b, dim=-1)
    return {"cosine_mean": float(cos.mean()), "cosine_min": float(cos.min()), "eval_sequences": int(a.shape[0])}
