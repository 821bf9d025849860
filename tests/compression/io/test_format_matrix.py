"""The artifact contract, format x loader: every form Presso writes, opened with every loader of the ecosystem.

For each case an artifact is written from a tiny random Llama (module-scoped, built once) and opened with each
loader of compression.io.formats.LOADERS:

- a loader the artifact declares (``artifact_loaders(dir)["loaders"]``, pinned per case below) must load it
  and give the logits of Presso's in-memory compressed model (atol 1e-5, fp32);
- a ``base_loaders`` one (EoRA: plain transformers) must give the in-memory model's base, without the residual;
- any other loader must fail loudly (raise), never load something else.

Loaders: ``presso.load`` = ``presso.load(dir)``; ``transformers`` = ``AutoModelForCausalLM.from_pretrained(dir)``;
``peft`` = that base, then ``PeftModel.from_pretrained(base, dir + "/adapter")`` when the artifact has an
adapter, else a fresh LoRA on every linear of the blocks (``get_peft_model``; identity at init), which is what
fine-tuning an adapter on a compressed artifact starts from; ``vllm`` is skipped (declared from the
compressed-tensors spec, never run here).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import torch

from presso.compression.core.context import StepContext
from presso.compression.engines.lowrank.modules import LoRAResidualLinear
from presso.compression.io.artifact import encode, write_model
from presso.compression.io.formats import LOADERS, artifact_loaders
from presso.compression.pipeline import compress
from presso.compression.recipe import parse_recipe

pytest.importorskip("compressed_tensors")
pytest.importorskip("peft")

ALL = ("presso.load", "transformers", "peft", "vllm")
RTN = {"method": "rtn", "bits": 4, "group_size": 16}
ASYM = {**RTN, "symmetric": False}
MIXED = [{"pattern": "down_proj", "bits": 8}]  # a second quantization scheme: two config groups

# case: (recipe steps, write options, encoding, declared loaders, base-only loaders)
CASES: dict[str, tuple[list[dict[str, Any]], dict[str, Any], str | None, tuple[str, ...], tuple[str, ...]]] = {
    "quantized-symmetric": ([RTN], {}, None, ALL, ()),
    "quantized-asymmetric": ([ASYM], {}, None, ALL, ()),
    "hqq-asymmetric": ([{"method": "hqq", "bits": 4, "group_size": 16, "iters": 5}], {}, None, ALL, ()),
    "gptq": ([{"method": "gptq", "bits": 4, "group_size": 16, "block_size": 16}], {}, None, ALL, ()),
    "awq-asymmetric": ([{"method": "awq", "bits": 4, "group_size": 16, "symmetric": False}], {}, None, ALL, ()),
    "quantized-two-schemes-symmetric": ([{**RTN, "overrides": MIXED}], {}, None,
                                        ("presso.load", "transformers", "vllm"), ()),
    "quantized-two-schemes-asymmetric": ([{**ASYM, "overrides": MIXED}], {}, None, ("presso.load", "vllm"), ()),
    "sparse-default-dense": ([{"method": "magnitude", "sparsity": 0.5}], {}, None, ALL, ()),
    "sparse-bitmask": ([{"method": "magnitude", "sparsity": 0.5}], {"sparse_format": "sparse-bitmask"}, None,
                       ("presso.load",), ()),
    "sparse+quantized": ([{"method": "sparsegpt", "sparsity": 0.5, "bits": 4, "group_size": 16, "block_size": 16}],
                         {"sparse_format": "sparse-bitmask"}, None, ALL, ()),
    "structured-pruning": ([{"method": "prune_structured", "mlp_ratio": 0.25}], {}, None, ALL, ()),
    "svd-factors": ([{"method": "svd", "ratio": 0.3}], {}, None, ("presso.load",), ()),
    "svd_llm+rtn-factors": ([{"method": "svd_llm", "ratio": 0.2, "rank_multiple": 16}, RTN], {}, None,
                            ("presso.load",), ()),
    "eora": ([RTN, {"method": "eora", "rank": 4}], {}, None, ("presso.load", "peft"), ("transformers", "vllm")),
    "dense-output": ([ASYM, {"method": "eora", "rank": 4}], {"fmt": "dense"}, None, ALL, ()),
    "dense-output-svd": ([{"method": "svd", "ratio": 0.3}], {"fmt": "dense"}, None, ALL, ()),
    "lossless-encoded": ([RTN], {}, "lossless", ("presso.load",), ()),
}
IDS = torch.randint(0, 128, (2, 12), generator=torch.Generator().manual_seed(3))
CALIB = torch.randint(0, 128, (8, 32), generator=torch.Generator().manual_seed(4))
VLLM_SKIP = "vLLM is not run by this matrix (not installed, no GPU here): its column is declared, not tested"
LINEARS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def _tiny_llama() -> torch.nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, vocab_size=128, tie_word_embeddings=False, max_position_embeddings=64)
    return LlamaForCausalLM(cfg).eval()


def _base_of(model: torch.nn.Module) -> torch.nn.Module:
    """The model without its EoRA residuals (what the artifact's model files hold)."""
    base = copy.deepcopy(model)
    for mod in base.modules():
        if isinstance(mod, LoRAResidualLinear):
            mod.lora_B.data.zero_()
    return base


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return {"root": tmp_path_factory.mktemp("formats"), "built": {}}


def _artifact(artifacts: dict[str, Any], case: str) -> dict[str, Any]:
    built = artifacts["built"]
    if case not in built:
        steps, options, encoding, _, _ = CASES[case]
        model = _tiny_llama()
        compress(model, parse_recipe({"steps": steps}), StepContext(calibration=CALIB, batch_size=4))
        out = artifacts["root"] / case
        write_model(model, None, out, **options)
        if encoding:
            encode(out, encoding)
        with torch.no_grad():
            built[case] = {"dir": out, "logits": model(IDS).logits, "base": _base_of(model)(IDS).logits}
    return built[case]


def _open(loader: str, path: Path) -> torch.nn.Module:
    from transformers import AutoModelForCausalLM

    if loader == "presso.load":
        from presso.load import load

        return load(path)
    if loader == "vllm":
        pytest.skip(VLLM_SKIP)
    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32).eval()
    if loader == "transformers":
        return model
    from peft import LoraConfig, PeftModel, get_peft_model

    if (path / "adapter").is_dir():
        return PeftModel.from_pretrained(model, str(path / "adapter")).eval()
    return get_peft_model(model, LoraConfig(r=2, target_modules=LINEARS, init_lora_weights=True)).eval()


@pytest.mark.parametrize("case", list(CASES))
def test_declared_loaders(artifacts: dict[str, Any], case: str) -> None:
    """What the registry declares for the written artifact is what this matrix pins (README: Artifacts)."""
    art = _artifact(artifacts, case)
    *_, loaders, base = CASES[case]
    assert artifact_loaders(art["dir"]) == {"loaders": list(loaders), "base_loaders": list(base)}


@pytest.mark.parametrize("loader", LOADERS)
@pytest.mark.parametrize("case", list(CASES))
def test_format_x_loader(artifacts: dict[str, Any], case: str, loader: str) -> None:
    art = _artifact(artifacts, case)
    *_, loaders, base = CASES[case]
    if loader in loaders or loader in base:
        model = _open(loader, art["dir"])
        with torch.no_grad():
            got = model(IDS).logits
        want = art["logits"] if loader in loaders else art["base"]
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    elif loader == "vllm":
        pytest.skip(VLLM_SKIP)
    else:
        with pytest.raises((ValueError, OSError, RuntimeError, AttributeError)):
            _open(loader, art["dir"])


def test_lossless_artifact_unpacks_to_its_inner_forms(artifacts: dict[str, Any], tmp_path: Path) -> None:
    from presso.codec.files import unpack_dir

    art = _artifact(artifacts, "lossless-encoded")
    unpack_dir(art["dir"], tmp_path / "plain")
    assert artifact_loaders(tmp_path / "plain") == {"loaders": list(ALL), "base_loaders": []}
    with torch.no_grad():
        got = _open("transformers", tmp_path / "plain")(IDS).logits
    torch.testing.assert_close(got, art["logits"], rtol=1e-5, atol=1e-5)


def test_transformers_refusal_says_where_to_go(artifacts: dict[str, Any]) -> None:
    """A presso-only artifact stops plain transformers before any weight is read, and config.json says why."""
    import json

    art = _artifact(artifacts, "svd-factors")
    qc = json.loads((art["dir"] / "config.json").read_text())["quantization_config"]
    assert qc["presso_format"] == ["factorized"] and "presso.load" in qc["load_with"]
    with pytest.raises(ValueError, match="quant_method"):
        _open("transformers", art["dir"])
