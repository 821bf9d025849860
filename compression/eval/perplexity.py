"""Perplexity and KL divergence: the one harness the product and the benchmarks share.

Each window is scored on its own (labels = inputs): mean token NLL over all predicted tokens,
perplexity = exp(mean NLL). KL is the mean over tokens of KL(P_original || P_compressed).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def _logits(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    return model(input_ids=ids, use_cache=False).logits.float()


@torch.no_grad()
def token_nll(model: nn.Module, windows: torch.Tensor, device: torch.device, batch_size: int = 4) -> torch.Tensor:
    """Per-token NLL [n, seq_len - 1]."""
    out = []
    for batch in windows.split(batch_size):
        ids = batch.to(device)
        logits = _logits(model, ids)[:, :-1]
        nll = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1), reduction="none")
        out.append(nll.view(ids.shape[0], -1).cpu())
    return torch.cat(out)


def perplexity(model: nn.Module, windows: torch.Tensor, device: torch.device, batch_size: int = 4) -> float:
    return math.exp(float(token_nll(model, windows, device, batch_size).double().mean()))


@torch.no_grad()
def compare(
    original: nn.Module, compressed: nn.Module, windows: torch.Tensor, device: torch.device, batch_size: int = 4
) -> dict[str, float]:
    """Perplexity of both models and KL(original || compressed) on the same windows, in one pass."""
    nll_a, nll_b, kl_sum, n_tok = 0.0, 0.0, 0.0, 0
    for batch in windows.split(batch_size):
        ids = batch.to(device)
        la = F.log_softmax(_logits(original, ids)[:, :-1], dim=-1)
        lb = F.log_softmax(_logits(compressed, ids)[:, :-1], dim=-1)
        tgt = ids[:, 1:].unsqueeze(-1)
        nll_a -= float(la.gather(-1, tgt).sum())
        nll_b -= float(lb.gather(-1, tgt).sum())
        kl_sum += float(F.kl_div(lb, la, log_target=True, reduction="sum"))
        n_tok += tgt.numel()
    return {
        "ppl_before": math.exp(nll_a / n_tok),
        "ppl_after": math.exp(nll_b / n_tok),
        "kl": max(kl_sum / n_tok, 0.0),
        "eval_tokens": n_tok,
    }
