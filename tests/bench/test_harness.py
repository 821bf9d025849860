"""The perplexity harness (compression.eval.perplexity) that the product and bench/quality.py share,
checked against a value computed by hand, and the peer's copy of it (bench/peer_llmcompressor.py,
which runs in another venv and cannot import Presso) checked against the product's."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import torch

from presso.compression.eval.perplexity import perplexity

REPO = Path(__file__).resolve().parents[2]


def _tiny_llama(vocab: int = 37):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(hidden_size=16, intermediate_size=24, num_hidden_layers=1, num_attention_heads=2,
                      num_key_value_heads=1, vocab_size=vocab, max_position_embeddings=32, tie_word_embeddings=False)
    return LlamaForCausalLM(cfg).eval()


def _windows(vocab: int, n: int = 3, seq: int = 7) -> torch.Tensor:
    return torch.randint(0, vocab, (n, seq), generator=torch.Generator().manual_seed(1))


def _by_hand(model, windows: torch.Tensor) -> float:
    """Each window through the model on its own; log-softmax with explicit loops in float64 Python;
    NLL of token t+1 given the prefix up to t; mean over every predicted token; exp."""
    total, count = 0.0, 0
    for w in windows:
        with torch.no_grad():
            logits = model(input_ids=w.unsqueeze(0)).logits[0].double().tolist()
        ids = w.tolist()
        for t in range(len(ids) - 1):
            row = logits[t]
            m = max(row)
            log_z = m + math.log(sum(math.exp(v - m) for v in row))
            total += log_z - row[ids[t + 1]]
            count += 1
    return math.exp(total / count)


def test_perplexity_equals_hand_computed_value():
    model, windows = _tiny_llama(), _windows(37)
    expected = _by_hand(model, windows)
    for batch_size in (1, 2, 4):  # batching (including a short last batch) must not change the value
        got = perplexity(model, windows, torch.device("cpu"), batch_size=batch_size)
        assert math.isclose(got, expected, rel_tol=1e-5), (batch_size, got, expected)


def test_uniform_model_has_perplexity_equal_to_vocab_size():
    model = _tiny_llama(vocab=29)
    with torch.no_grad():
        model.lm_head.weight.zero_()  # every logit 0: each token has probability 1/29
    got = perplexity(model, _windows(29), torch.device("cpu"))
    assert math.isclose(got, 29.0, rel_tol=1e-6)


def test_peer_copy_of_the_harness_matches_the_product():
    spec = importlib.util.spec_from_file_location("peer_llmcompressor", REPO / "bench" / "peer_llmcompressor.py")
    assert spec is not None and spec.loader is not None
    peer = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(peer)  # stdlib imports only at module level: loads without llmcompressor
    model, windows = _tiny_llama(), _windows(37, n=5)
    ours = perplexity(model, windows, torch.device("cpu"))
    assert math.isclose(peer.perplexity(model, windows), ours, rel_tol=1e-9)
