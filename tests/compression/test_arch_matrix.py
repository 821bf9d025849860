"""The architecture matrix (issue 20): tiny random-weight models of each family x the main methods.

For every (architecture, method) case: compress with Presso -> write the artifact -> load it with every loader
the artifact declares (``artifact_loaders(dir)``: ``presso.load`` always, plain transformers where declared)
-> the logits equal the in-memory compressed model's; and a count proves every targeted weight was compressed,
experts included: the expected number of targeted linears is computed from the *fused* model before Presso
touches it (the Linear/Conv1D layers of the block list minus MoE routers, plus 3 per expert), and is compared
with the report's compressed records and with the tensors the artifact stores (packed / FP8 / pruned).

Families that cannot work are cases too: they must raise the named error (``UNSUPPORTED``), never compress part
of the model silently. docs/architectures.md is the table this file proves.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors import safe_open
from torch import nn

from presso.compression.core.context import StepContext
from presso.compression.errors import CompressionError
from presso.compression.io.artifact import write_model
from presso.compression.io.formats import artifact_loaders
from presso.compression.pipeline import compress
from presso.compression.recipe import parse_recipe

pytest.importorskip("compressed_tensors")

IDS = torch.randint(0, 128, (2, 12), generator=torch.Generator().manual_seed(3))
CALIB = torch.randint(0, 128, (8, 32), generator=torch.Generator().manual_seed(4))
BASE = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, vocab_size=128, max_position_embeddings=64, tie_word_embeddings=False)
MOE4 = dict(num_experts=4, num_experts_per_tok=2)
ARCHS: dict[str, dict[str, Any]] = {
    "llama": BASE,
    "mistral": BASE,
    "qwen2": BASE,
    "qwen3": {**BASE, "head_dim": 16},
    "gemma3_text": {**BASE, "head_dim": 16, "sliding_window": 16},
    "phi3": {**BASE, "pad_token_id": 0},
    "gpt2": dict(n_embd=64, n_layer=2, n_head=4, n_positions=64, vocab_size=128),
    "mixtral": {**BASE, "num_local_experts": 4, "num_experts_per_tok": 2},
    "qwen3_moe": {**BASE, **MOE4, "moe_intermediate_size": 64, "head_dim": 16},
    "qwen2_moe": {**BASE, **MOE4, "moe_intermediate_size": 64, "shared_expert_intermediate_size": 64},
    "olmoe": {**BASE, **MOE4},
    "deepseek_v3": {**BASE, "n_routed_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 64,
                    "n_shared_experts": 1, "first_k_dense_replace": 0, "kv_lora_rank": 16, "q_lora_rank": 32,
                    "qk_rope_head_dim": 8, "qk_nope_head_dim": 8, "v_head_dim": 16, "n_group": 1, "topk_group": 1},
    "gpt_oss": {**BASE, "num_local_experts": 4, "num_experts_per_tok": 2, "head_dim": 16,
                "layer_types": ["full_attention"] * 2},
    "t5": dict(d_model=64, d_ff=128, num_layers=2, num_heads=4, d_kv=16, vocab_size=128),
}
MOE = {"mixtral", "qwen3_moe", "qwen2_moe", "olmoe", "deepseek_v3"}
RECIPES: dict[str, dict[str, Any]] = {
    "rtn": {"method": "rtn", "bits": 4, "group_size": 16},
    "gptq": {"method": "gptq", "bits": 4, "group_size": 16, "block_size": 16},
    "fp8": {"method": "fp8"},
    "awq": {"method": "awq", "bits": 4, "group_size": 16},
    "sparsegpt": {"method": "sparsegpt", "sparsity": 0.5, "block_size": 16},
    "hqq": {"method": "hqq", "bits": 4, "group_size": 16, "iters": 5},
    "nvfp4": {"method": "nvfp4"},
    "wanda": {"method": "wanda", "sparsity": 0.5},
    "magnitude": {"method": "magnitude", "sparsity": 0.5},
    "svd_llm": {"method": "svd_llm", "ratio": 0.2, "rank_multiple": 16},
    "prune_structured": {"method": "prune_structured", "mlp_ratio": 0.25},
}
PRESSO_ONLY = {"svd_llm"}  # factorized artifacts: transformers refuses them (docs/lowrank.md)
# methods whose MoE artifacts do not declare transformers (docs/architectures.md: measured, not loadable right)
NOT_TRANSFORMERS_MOE = {"fp8", "hqq", "nvfp4"}
# (arch, method) -> the error code the case must raise; every other case must compress, write and load
UNSUPPORTED: dict[tuple[str, str], str] = {
    **{("gpt_oss", m): "unsupported_model" for m in RECIPES},  # transposed, interleaved, biased experts
    **{("t5", m): "unsupported_model" for m in RECIPES},  # encoder-decoder: one stack would stay dense
    ("gpt2", "fp8"): "invalid_recipe",  # Conv1D: the compressed-tensors formats describe Linear layers
    # channel pruning would give experts different widths, which one config cannot describe
    ("mixtral", "prune_structured"): "unsupported_model",
    ("qwen3_moe", "prune_structured"): "unsupported_model",
}
FAST = ("rtn", "gptq", "fp8")  # every architecture
SLOW_ARCHS = ("llama", "qwen3_moe", "deepseek_v3", "gpt2")  # awq and sparsegpt on these
CASES = ([(a, m) for a in ARCHS for m in FAST] + [(a, m) for a in SLOW_ARCHS for m in ("awq", "sparsegpt")]
         + [(a, m) for a in ("mixtral", "qwen3_moe")
            for m in ("hqq", "nvfp4", "wanda", "magnitude", "svd_llm", "prune_structured")])


def _build(arch: str) -> nn.Module:
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM

    torch.manual_seed(0)
    cfg = AutoConfig.for_model(arch, **ARCHS[arch])
    cls = AutoModelForSeq2SeqLM if cfg.is_encoder_decoder else AutoModelForCausalLM
    return cls.from_config(cfg).eval()


@pytest.fixture(scope="module")
def models() -> Callable[[str], nn.Module]:
    cache: dict[str, nn.Module] = {}

    def get(arch: str) -> nn.Module:
        if arch not in cache:
            cache[arch] = _build(arch)
        return copy.deepcopy(cache[arch])

    return get


def expected_targets(model: nn.Module) -> int:
    """Linears a default step targets, counted on the fused model with transformers' own classes only:
    Linear/Conv1D layers of the largest block list except lm_head and MoE routers, plus 3 per fused expert."""
    from transformers.pytorch_utils import Conv1D

    lists = [m for m in model.modules() if isinstance(m, nn.ModuleList) and len(m) > 1
             and len({type(b) for b in m}) == 1]
    blocks = max(lists, key=lambda m: sum(p.numel() for p in m.parameters()))
    count = 0
    for name, mod in blocks.named_modules():
        leaf = name.rsplit(".", 1)[-1]
        if isinstance(mod, nn.Linear | Conv1D) and leaf not in ("gate", "shared_expert_gate"):
            count += 1
        gu = getattr(mod, "gate_up_proj", None)
        if isinstance(gu, torch.Tensor) and gu.dim() == 3:
            count += 3 * gu.shape[0]
    return count


def _artifact_counts(out: Path) -> dict[str, int]:
    counts = {"weight_packed": 0, "fp8": 0, "sparse": 0}
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        for key in f.keys():
            if not key.startswith(("model.layers.", "transformer.h.")):
                continue
            t = f.get_tensor(key)
            if key.endswith(".weight_packed"):
                counts["weight_packed"] += 1
            elif key.endswith(".weight") and t.dtype == torch.float8_e4m3fn:
                counts["fp8"] += 1
            elif key.endswith(".weight") and t.dim() == 2 and float((t == 0).float().mean()) >= 0.49:
                counts["sparse"] += 1
    return counts


def _load(loader: str, out: Path) -> nn.Module:
    if loader == "presso.load":
        from presso.load import load

        return load(out)
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(out)).eval()


@pytest.mark.parametrize(("arch", "method"), CASES, ids=[f"{a}-{m}" for a, m in CASES])
def test_compress_write_load(arch: str, method: str, models: Callable[[str], nn.Module], tmp_path: Path) -> None:
    model = models(arch)
    recipe = parse_recipe({"steps": [RECIPES[method]]})
    ctx = StepContext(calibration=CALIB, batch_size=4)
    if (arch, method) in UNSUPPORTED:
        with pytest.raises(CompressionError) as err:
            compress(model, recipe, ctx)
        assert err.value.code == UNSUPPORTED[(arch, method)], str(err.value)
        return
    expected = expected_targets(model)
    step = compress(model, recipe, ctx)["steps"][0]
    done = [r for r in step["layers"] if "skipped" not in r and ("rel_error" in r or "sparsity" in r or "rank" in r)]
    assert len(done) == len(step["layers"]) == expected
    if arch in MOE:
        experts = step["experts"]
        assert experts["expert_linears_compressed"] == experts["expert_linears"] == 3 * experts["experts"] > 0
    with torch.no_grad():
        ref = model(IDS).logits
    out = tmp_path / "artifact"
    write_model(model, None, out)

    counts = _artifact_counts(out)
    if method in ("rtn", "gptq", "awq", "hqq", "nvfp4") and arch != "gpt2":  # gpt2's Conv1D layers are written dense
        assert counts["weight_packed"] == expected
    elif method == "fp8":
        assert counts["fp8"] == expected
    elif method in ("sparsegpt", "wanda", "magnitude"):
        assert counts["sparse"] == expected

    declared = artifact_loaders(out)["loaders"]
    assert "presso.load" in declared
    if (method in NOT_TRANSFORMERS_MOE and arch in MOE) or method in PRESSO_ONLY:
        assert "transformers" not in declared
    else:
        assert "transformers" in declared
    for loader in ("presso.load", "transformers"):
        if loader in declared:
            with torch.no_grad():
                got = _load(loader, out)(IDS).logits
            torch.testing.assert_close(got, ref, rtol=0, atol=1e-5, msg=f"{loader}: logits differ")
    meta = json.loads((out / "config.json").read_text())
    assert meta.get("model_type") == model.config.model_type
