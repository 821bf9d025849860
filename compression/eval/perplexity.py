"""Perplexity and KL divergence: the one harness the product and the benchmarks share.

Each window is scored on its own (labels = inputs): mean token NLL over all predicted tokens,
perplexity = exp(mean NLL). KL is the mean over tokens of KL(P_original || P_compressed); top-1 agreement the
fraction of tokens where both models' argmax agrees.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

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
    original: nn.Module, compressed: nn.Module, windows: torch.Tensor, device: torch.device, batch_size: int = 4,
    *, progress: Callable[[float], None] | None = None, max_seconds: float | None = None, min_windows: int = 1,
) -> dict[str, float]:
    """Perplexity of both models, KL(original || compressed) and top-1 agreement (the fraction of predicted
    tokens where both models' most likely next token is the same) on the same windows, in one pass.

    ``max_seconds``: stop after the batch that passes it, once ``min_windows`` windows are scored (the
    default-sized evaluation, compression/eval/budget.py); ``eval_windows`` says how many were scored."""
    t0 = time.perf_counter()
    nll_a, nll_b, kl_sum, agree, n_tok, n_win = 0.0, 0.0, 0.0, 0, 0, 0
    for batch in windows.split(batch_size):
        ids = batch.to(device)
        la = F.log_softmax(_logits(original, ids)[:, :-1], dim=-1)
        lb = F.log_softmax(_logits(compressed, ids)[:, :-1], dim=-1)
        tgt = ids[:, 1:].unsqueeze(-1)
        nll_a -= float(la.gather(-1, tgt).sum())
        nll_b -= float(lb.gather(-1, tgt).sum())
        kl_sum += float(F.kl_div(lb, la, log_target=True, reduction="sum"))
        agree += int((la.argmax(-1) == lb.argmax(-1)).sum())
        n_tok += tgt.numel()
        n_win += ids.shape[0]
        if progress is not None:
            progress(n_win / windows.shape[0])
        if max_seconds is not None and n_win >= min_windows and time.perf_counter() - t0 >= max_seconds:
            break
    return {
        "ppl_before": math.exp(nll_a / n_tok),
        "ppl_after": math.exp(nll_b / n_tok),
        "kl": max(kl_sum / n_tok, 0.0),
        "top1_agreement": agree / n_tok,
        "eval_tokens": n_tok,
        "eval_windows": n_win,
    }
