"""Greedy-generation agreement: do both models write the same continuation of the same prompts?

Prompts are the first ``prompt_tokens`` of the first evaluation windows (all the same length, so one batch, no
padding). Each model continues them greedily (argmax, KV cache, no sampling, no generation config: repetition
penalties or sampling defaults of a checkpoint do not apply) for ``new_tokens`` tokens. Measures:

- ``generation_agreement``: mean over prompts of the length of the common prefix of both continuations divided
  by ``new_tokens`` (after the first differing token the two texts are conditioned differently, so later
  matches are not counted);
- ``generation_exact``: the fraction of prompts whose continuations are identical.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


@torch.no_grad()
def greedy(model: nn.Module, prompts: torch.Tensor, new_tokens: int, device: torch.device) -> torch.Tensor:
    """[n, new_tokens] greedy continuation of ``prompts`` [n, p] (one batch, KV cache)."""
    import inspect

    # transformers 5.x names the cache argument and output ``cache`` (``past_key_values`` before)
    key = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    ids = prompts.to(device)
    out = model(input_ids=ids, use_cache=True)
    past = out.get(key)
    nxt = out.logits[:, -1].float().argmax(-1)
    made = [nxt]
    for _ in range(new_tokens - 1):
        if past is None:  # a model that returns no cache: the whole sequence again
            ids = torch.cat([ids, nxt[:, None]], dim=1)
            out = model(input_ids=ids, use_cache=False)
        else:
            out = model(input_ids=nxt[:, None], use_cache=True, **{key: past})
            past = out.get(key)
        nxt = out.logits[:, -1].float().argmax(-1)
        made.append(nxt)
    return torch.stack(made, dim=1).cpu()


def prefix_agreement(a: torch.Tensor, b: torch.Tensor) -> dict[str, Any]:
    """The measures of two [n, t] continuations."""
    same = (a == b).long()
    prefix = same.cumprod(dim=1).sum(dim=1).float()  # tokens equal before the first difference
    t = a.shape[1]
    return {
        "generation_agreement": float((prefix / t).mean()),
        "generation_exact": float((prefix == t).float().mean()),
        "generation_prompts": int(a.shape[0]),
        "generation_new_tokens": int(t),
    }


def compare_generations(original: nn.Module, compressed: nn.Module, windows: torch.Tensor, device: torch.device,
                        *, prompts: int, prompt_tokens: int, new_tokens: int,
                        reference: dict[Any, torch.Tensor] | None = None) -> dict[str, Any]:
    """``reference``: the original's continuations, used when present and filled when not."""
    n = min(prompts, windows.shape[0])
    if n == 0:
        return {}
    batch = windows[:n, : min(prompt_tokens, windows.shape[1])]
    reference = {} if reference is None else reference
    key = (tuple(batch.shape), int(batch.sum()), new_tokens)
    if key not in reference:
        reference[key] = greedy(original, batch, new_tokens, device)
    return prefix_agreement(reference[key], greedy(compressed, batch, new_tokens, device))
