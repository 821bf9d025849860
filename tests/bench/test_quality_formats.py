"""bench/quality_formats.py and its peer side bench/peer_formats.py without the model or the peer venv: every row
parses as a Presso recipe and has a peer row; the ideal size of the int W4A16 rows (resolved groups, scales in
the model dtype, the untied head of a rotated model, KV scales); the peer's copy of the group resolution matches
the product's; the reduced (smoke) windows."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.usefixtures("one_torch_thread")
NEW_ROWS = ("int8_w8a8_smoothquant", "int8_w8a8_smoothquant_gptq", "gptq_w4a16_g128", "rotate_gptq_w4a16_g128",
            "gptq_w4a16_g128_kv_fp8")


def _load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"bench_{name}", REPO / "bench" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)  # the peer side: stdlib imports only at module level
    return mod


def _tiny_llama(tied: bool = True, hidden: int = 48, inter: int = 64):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(hidden_size=hidden, intermediate_size=inter, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, vocab_size=40, max_position_embeddings=32, tie_word_embeddings=tied)
    return LlamaForCausalLM(cfg).eval()


def test_rows_parse_and_have_a_peer_row() -> None:
    from presso.compression.recipe import parse_recipe

    qf, pf = _load("quality_formats"), _load("peer_formats")
    assert set(NEW_ROWS) <= set(qf.ROWS)
    assert set(qf.ROWS) == set(pf.ROWS)
    for row in qf.ROWS:
        parse_recipe(qf.recipe_of(row))
    kv = parse_recipe(qf.recipe_of("gptq_w4a16_g128_kv_fp8"))
    assert kv.kv_cache is not None and kv.kv_cache.format == "fp8"
    assert [s.method for s in parse_recipe(qf.recipe_of("rotate_gptq_w4a16_g128")).steps] == ["rotate", "gptq"]
    assert [s.method for s in parse_recipe(qf.recipe_of("int8_w8a8_smoothquant_gptq")).steps] == ["smoothquant",
                                                                                                  "int8"]


def test_peer_group_resolution_is_the_products() -> None:
    from presso.compression.core.quant import resolve_group

    pf = _load("peer_formats")
    for k in (48, 64, 96, 128, 576, 1536, 2047, 4096, 11008, 14336):
        for g in (-1, 32, 64, 100, 128, 256):
            assert pf._resolve_group(k, g) == resolve_group(k, g), (k, g)


def test_peer_reads_linear_widths_from_the_headers(tmp_path: Path) -> None:
    pf = _load("peer_formats")
    _tiny_llama(hidden=48, inter=64).save_pretrained(str(tmp_path), safe_serialization=True)
    widths = pf._block_linear_widths(tmp_path)
    assert widths == {"self_attn.q_proj": 48, "self_attn.k_proj": 48, "self_attn.v_proj": 48,
                      "self_attn.o_proj": 48, "mlp.gate_proj": 48, "mlp.up_proj": 48, "mlp.down_proj": 64}


def test_ideal_bytes_of_the_w4a16_rows() -> None:
    qf = _load("quality_formats")
    dense = _tiny_llama(tied=True, hidden=48, inter=64)
    shapes = qf.linear_shapes(dense)
    total, bits = qf.ideal_bytes(dense, "gptq_w4a16_g128", shapes)
    # K=48 resolves g128 to per channel (48 < 128), K=64 likewise: one float32 scale per row
    numel = sum(n * k for n, k in shapes.values())
    expect_bits = sum(n * k * 4 + 32 * n for n, k in shapes.values()) / numel
    assert math.isclose(bits, expect_bits)
    dense_total = sum(p.numel() * 4 for p in {id(p): p for p in dense.parameters()}.values())
    assert math.isclose(total, dense_total - numel * 4 + expect_bits * numel / 8)
    # SmolLM2's widths: 576 -> g96, 1536 -> g128
    assert math.isclose(qf._int_bits_per_weight(4, 128, 576, 576, 32), 4 + 32 / 96)
    assert math.isclose(qf._int_bits_per_weight(4, 128, 576, 1536, 16), 4 + 16 / 128)
    # a rotated model stores the untied head: the ideal counts it
    rotated = _tiny_llama(tied=True, hidden=48, inter=64)
    rotated.lm_head.weight = torch.nn.Parameter(rotated.lm_head.weight.detach().clone())
    total_rot, _ = qf.ideal_bytes(dense, "rotate_gptq_w4a16_g128", shapes, rotated)
    assert math.isclose(total_rot - total, rotated.lm_head.weight.numel() * 4)
    assert qf.ideal_bytes(dense, "no_such_row", shapes) == (None, None)
    assert qf._fmt(None) == "–"


def test_reduced_windows(tmp_path: Path) -> None:
    qf = _load("quality_formats")
    from bench.common import Windows

    full = Windows(torch.arange(64 * 8).view(64, 8), torch.arange(40 * 8).view(40, 8), tmp_path / "c.npy",
                   tmp_path / "e.npy", {"code": (torch.arange(40 * 8).view(40, 8) + 1, tmp_path / "o.npy")})
    small = qf.reduced_windows(full, 2, 1, tmp_path)
    assert small.calibration.shape == (2, 8) and small.evaluation.shape == (1, 8)
    assert torch.equal(torch.from_numpy(np.load(small.calibration_path)), full.calibration[:2])
    assert torch.equal(torch.from_numpy(np.load(small.evaluation_path)), full.evaluation[:1])
    w, path = small.ood["code"]
    assert torch.equal(w, full.ood["code"][0][:1]) and torch.equal(torch.from_numpy(np.load(path)), w)


def test_report_prints_a_missing_ideal_as_a_dash() -> None:
    qf = _load("quality_formats")
    row = {"presso": {"ppl": 20.0, "seconds": 1.0, "ideal_bits_per_weight": None, "size_vs_ideal": None,
                      "weights_bytes": 1e6}, "peer": {"status": "failed: boom"}}
    md = qf.report_md(json.loads(json.dumps({"gptq_w4a16_g128": row})))
    line = next(ln for ln in md.splitlines() if ln.startswith("| GPTQ W4A16"))
    assert "/ – |" in line and "| – |" in line and "failed: boom" in line
