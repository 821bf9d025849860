"""Conformance of the deployment-format artifacts (fp8, int8, nvfp4, mxfp4) with what vLLM and transformers read.

vLLM cannot run here (no GPU, not installed), so each scheme's test checks the artifact against vLLM's own source,
read through the code-search tool (vllm-project/vllm, commits named per test), and against compressed-tensors
0.20.1 (installed), then loads it with transformers + compressed-tensors and compares the logits with Presso's
in-memory quantized model (the model the job evaluated).

vLLM's path, common to every scheme (vllm/model_executor/layers/quantization/compressed_tensors/
compressed_tensors.py @ be696453 and 004dadbe): ``CompressedTensorsConfig._quantization_scheme_map_from_config``
parses each config group's ``weights`` / ``input_activations`` with compressed-tensors' ``QuantizationArgs`` and
keeps ``input_activations`` only when the group's ``format`` (else the top-level one) is an activation format
(``utils.is_activation_quantization_format``: naive-, int-, float-, nvfp4-pack-quantized); ``get_scheme`` matches
the layer name against the targets (``re:`` regexes) and ``_get_scheme_from_parts`` picks the scheme class by the
predicates mirrored in :func:`vllm_scheme`; the scheme's ``create_weights`` registers the parameters the
checkpoint must hold, by name, dtype and shape (checked per test).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from presso.compression.core import actquant
from presso.compression.core.context import StepContext
from presso.compression.io.artifact import write_model
from presso.compression.pipeline import compress
from presso.compression.recipe import parse_recipe

pytest.importorskip("compressed_tensors")

VOCAB = 300
HIDDEN, INTER, KV = 128, 256, 64  # multiples of 128: FP8_BLOCK's activation groups fit every layer
SHAPES = {"q_proj": (HIDDEN, HIDDEN), "k_proj": (KV, HIDDEN), "v_proj": (KV, HIDDEN), "o_proj": (HIDDEN, HIDDEN),
          "gate_proj": (INTER, HIDDEN), "up_proj": (INTER, HIDDEN), "down_proj": (HIDDEN, INTER)}


def _llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(hidden_size=HIDDEN, intermediate_size=INTER, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, vocab_size=VOCAB, max_position_embeddings=128, tie_word_embeddings=True)
    return LlamaForCausalLM(cfg).eval()


@pytest.fixture
def ids():
    return torch.randint(0, VOCAB, (2, 16), generator=torch.Generator().manual_seed(2))


def _artifact(tmp_path: Path, steps: list[dict[str, Any]], calib: torch.Tensor):
    model = _llama()
    recipe = parse_recipe({"steps": steps})
    compress(model, recipe, StepContext(calibration=calib if recipe.needs_calibration else None, batch_size=4))
    forms = write_model(model, None, tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    from safetensors.torch import load_file

    return model, forms, config["quantization_config"], load_file(str(tmp_path / "model.safetensors"))


def _check_config(qcfg: dict[str, Any], fmt: str, preset: str) -> dict[str, Any]:
    """One config group over all 14 linears, equal to compressed-tensors' preset ``preset``; valid for its
    ``QuantizationConfig`` model; returns the group."""
    from compressed_tensors.quantization import QuantizationConfig, preset_name_to_scheme

    assert qcfg["quant_method"] == "compressed-tensors" and qcfg["format"] == fmt
    assert qcfg["quantization_status"] == "compressed" and "dequantize" not in qcfg
    QuantizationConfig.model_validate(qcfg)
    (group,) = qcfg["config_groups"].values()
    assert group["format"] == fmt
    want = preset_name_to_scheme(preset, ["Linear"]).model_dump(mode="json")
    assert group["weights"] == want["weights"] and group["input_activations"] == want["input_activations"]
    import re

    target = re.compile(group["targets"][0][3:])
    names = [f"model.layers.{i}.{p}.{n}" for i in range(2) for p, ns in
             (("self_attn", ("q_proj", "k_proj", "v_proj", "o_proj")), ("mlp", ("gate_proj", "up_proj", "down_proj")))
             for n in ns]
    assert all(target.match(n) for n in names) and not target.match("lm_head")
    return group


def _check_tensors(state: dict[str, torch.Tensor], want: dict[str, tuple[torch.dtype, Any]]) -> None:
    """Every quantized linear has exactly the tensors ``want`` (suffix -> dtype, shape or shape function)."""
    for i in range(2):
        for leaf, (n, k) in SHAPES.items():
            part = "self_attn" if leaf in ("q_proj", "k_proj", "v_proj", "o_proj") else "mlp"
            prefix = f"model.layers.{i}.{part}.{leaf}."
            got = {key[len(prefix):]: t for key, t in state.items() if key.startswith(prefix)}
            assert set(got) == set(want), (prefix, set(got))
            for suffix, (dtype, shape) in want.items():
                shape = shape(n, k) if callable(shape) else shape
                assert got[suffix].dtype == dtype and tuple(got[suffix].shape) == tuple(shape), (prefix + suffix,
                                                                                                got[suffix].dtype,
                                                                                                got[suffix].shape)


def vllm_scheme(group: dict[str, Any], top_format: str) -> str:
    """The CompressedTensorsScheme class vLLM's ``_get_scheme_from_parts`` picks for a config group (its
    predicates as read in compressed_tensors.py, newest stored version: ``_is_nvfp4_format``, ``_is_mxfp4``,
    ``_is_wNa16_group_channel``, ``_is_fp8_w8a8``, ``_is_static_tensor_w8a8``, ``_is_dynamic_token_w8a8``;
    an sm100+ GPU for W4A4 NVFP4, sm89+ for FP8 W8A8)."""
    from compressed_tensors.quantization import QuantizationArgs

    fmt = group.get("format") or top_format
    act_format = fmt in ("naive-quantized", "int-quantized", "float-quantized", "nvfp4-pack-quantized")
    w = QuantizationArgs.model_validate(group["weights"])
    a = QuantizationArgs.model_validate(group["input_activations"]) if (act_format or group["input_activations"]) \
        and group["input_activations"] else None

    def nvfp4(q: QuantizationArgs | None) -> bool:
        return q is not None and q.strategy == "tensor_group" and q.symmetric and q.group_size == 16 \
            and q.type == "float" and q.num_bits == 4

    if nvfp4(w) and a is None:
        return "CompressedTensorsW4A16Fp4"
    if w.strategy == "group" and w.symmetric and w.group_size == 32 and w.type == "float" and w.num_bits == 4:
        return "CompressedTensorsW4A16Mxfp4"
    if a is None and w.strategy in ("channel", "group") and not w.dynamic and fmt == "pack-quantized":
        return "CompressedTensorsWNA16"
    if act_format:
        if nvfp4(w) and nvfp4(a):
            return "CompressedTensorsW4A4Fp4"
        if a is not None and w.type == "float" and a.type == "float" and w.symmetric and not w.dynamic \
                and w.strategy in ("tensor", "channel", "block") \
                and (a.dynamic or (a.symmetric and a.strategy == "tensor")):
            return "CompressedTensorsW8A8Fp8"
        if a is not None and w.num_bits == a.num_bits == 8 and w.strategy in ("tensor", "channel") \
                and w.symmetric and not w.dynamic:
            if a.strategy == "tensor" and not a.dynamic:
                return "CompressedTensorsW8A8Int8 (static input)"
            if a.strategy == "token" and a.dynamic:
                return "CompressedTensorsW8A8Int8 (dynamic token)"
    raise AssertionError(f"no vLLM scheme for {group}")


def _transformers(path: Path, fp4: bool = False):
    """``AutoModelForCausalLM.from_pretrained`` in float32. For FP4 formats compressed-tensors 0.20.1 unpacks the
    codes into bfloat16 (``unpack_fp4_from_uint8``'s default dtype) whatever the model's dtype, so a float32 model's
    first forward fails ("expected m1 and m2 to have the same dtype"); the test decompresses
    (``ModelCompressor.decompress_model``) and casts those weights to float32 (bfloat16 loads run as they are)."""
    from transformers import AutoModelForCausalLM

    tm = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32).eval()
    if fp4:
        tm.hf_quantizer.compressor.decompress_model(tm)
        for p in tm.parameters():
            if p.dtype == torch.bfloat16:
                p.data = p.data.float()
    return tm


def _logits(model, ids):
    with torch.no_grad():
        out = model(ids).logits
        with actquant.disabled(model):
            weight_only = model(ids).logits
    return out, weight_only


def _presso_load_matches(path: Path, model, ids) -> None:
    from presso.load import load

    loaded = load(path)
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, model(ids).logits, rtol=0, atol=0)


FP8_TENSORS = {"weight": (torch.float8_e4m3fn, lambda n, k: (n, k))}


@pytest.mark.parametrize(("scheme", "strategy_scale"), [
    ("FP8_DYNAMIC", lambda n, k: (n, 1)),
    ("FP8", (1,)),
    ("FP8_BLOCK", lambda n, k: (-(-n // 128), -(-k // 128))),
])
def test_fp8_float_quantized(tmp_path, calib_ids, ids, scheme, strategy_scale):
    """FP8 W8A8: ``float-quantized``.

    vLLM (vllm-project/vllm): compressed_tensors.py ``_is_fp8_w8a8`` (float weights and inputs, symmetric static
    weights per tensor / channel / block; dynamic inputs always, static ones symmetric per tensor) ->
    schemes/compressed_tensors_w8a8_fp8.py ``CompressedTensorsW8A8Fp8.create_weights`` @ de4766a1: ``weight``
    float8_e4m3fn [N, K]; ``weight_scale`` float32 [N, 1] (ChannelQuantScaleParameter) or one per partition
    (PerTensorScaleParameter); ``input_scale`` float32, one per partition, when the input scheme is static;
    for blocks quantization/utils/fp8_utils.py ``create_fp8_scale_parameter`` @ 364d0192: BlockQuantScaleParameter
    [ceil(N/bn), ceil(K/bk)] float32. compressed-tensors: compressors/naive_quantized/base.py
    ``FloatQuantizationCompressor`` (weight cast to float8, scales kept), presets FP8_DYNAMIC / FP8 / FP8_BLOCK in
    quantization/quant_scheme.py. transformers runs compressed-tensors' forward, which quantizes the inputs as
    the scheme says: its logits equal the in-memory model's with quantized activations, exactly."""
    model, forms, qcfg, state = _artifact(tmp_path, [{"method": "fp8", "scheme": scheme}], calib_ids)
    assert forms == ["dense", "float-quantized"]
    group = _check_config(qcfg, "float-quantized", scheme)
    assert vllm_scheme(group, qcfg["format"]) == "CompressedTensorsW8A8Fp8"
    want = {**FP8_TENSORS, "weight_scale": (torch.float32, strategy_scale)}
    if scheme == "FP8":
        want["input_scale"] = (torch.float32, (1,))
    _check_tensors(state, want)
    ours, weight_only = _logits(model, ids)
    theirs = _transformers(tmp_path)(ids).logits.detach()
    torch.testing.assert_close(theirs, ours, rtol=1e-5, atol=1e-5)
    assert (theirs - weight_only).abs().max() > 1e-3  # transformers quantized the activations too
    _presso_load_matches(tmp_path, model, ids)


@pytest.mark.parametrize("activations", ["dynamic_token", "static_tensor"])
def test_int8_w8a8_int_quantized(tmp_path, calib_ids, ids, activations):
    """INT8 W8A8: ``int-quantized``.

    vLLM: compressed_tensors.py ``_is_dynamic_token_w8a8`` (8-bit weights per tensor / channel, symmetric, static;
    inputs per token, dynamic) and ``_is_static_tensor_w8a8`` (inputs per tensor, static) ->
    schemes/compressed_tensors_w8a8_int8.py ``CompressedTensorsW8A8Int8.create_weights`` @ c45614b5: ``weight``
    int8 [N, K]; ``weight_scale`` float32 [N, 1] (channel); static inputs ``input_scale`` float32 [1] (and
    ``input_zero_point`` only for asymmetric inputs, which Presso does not write). compressed-tensors:
    ``IntQuantizationCompressor`` (naive_quantized/base.py), preset W8A8 (INT8_W8A8: channel weights, dynamic
    per-token inputs). Logits in transformers equal the in-memory model's with quantized activations, exactly."""
    model, forms, qcfg, state = _artifact(tmp_path, [{"method": "int8", "activations": activations}], calib_ids)
    assert forms == ["dense", "int-quantized"]
    if activations == "dynamic_token":
        group = _check_config(qcfg, "int-quantized", "W8A8")
        assert vllm_scheme(group, qcfg["format"]) == "CompressedTensorsW8A8Int8 (dynamic token)"
    else:
        from compressed_tensors.quantization import QuantizationConfig

        QuantizationConfig.model_validate(qcfg)
        (group,) = qcfg["config_groups"].values()
        assert group["input_activations"] == {"num_bits": 8, "type": "int", "symmetric": True, "group_size": None,
                                              "strategy": "tensor", "dynamic": False, "observer": "static_minmax"}
        assert vllm_scheme(group, qcfg["format"]) == "CompressedTensorsW8A8Int8 (static input)"
    want = {"weight": (torch.int8, lambda n, k: (n, k)), "weight_scale": (torch.float32, lambda n, k: (n, 1))}
    if activations == "static_tensor":
        want["input_scale"] = (torch.float32, (1,))
    _check_tensors(state, want)
    ours, weight_only = _logits(model, ids)
    theirs = _transformers(tmp_path)(ids).logits.detach()
    torch.testing.assert_close(theirs, ours, rtol=1e-5, atol=1e-5)
    assert (theirs - weight_only).abs().max() > 1e-4
    _presso_load_matches(tmp_path, model, ids)


NVFP4_TENSORS = {
    "weight_packed": (torch.uint8, lambda n, k: (n, k // 2)),
    "weight_scale": (torch.float8_e4m3fn, lambda n, k: (n, k // 16)),
    "weight_global_scale": (torch.float32, (1,)),
}


@pytest.mark.parametrize("scheme", ["NVFP4", "NVFP4A16"])
def test_nvfp4_pack_quantized(tmp_path, calib_ids, ids, scheme):
    """NVFP4 (W4A4 and W4A16): ``nvfp4-pack-quantized``.

    vLLM: compressed_tensors.py ``_is_nvfp4_format`` (tensor_group, symmetric, group 16, float, 4 bits) for weights
    and inputs -> schemes/compressed_tensors_w4a4_nvfp4.py ``CompressedTensorsW4A4Fp4.create_weights`` @ 85f1f913:
    ``weight_packed`` uint8 [N, K/2], ``weight_global_scale`` float32 [1], ``weight_scale`` float8_e4m3fn [N, K/16],
    ``input_global_scale`` float32 [1]; ``process_weights_after_loading``: ``alpha = 1 / (input_global_scale *
    weight_global_scale)``, i.e. the stored global scales are compressed-tensors' multipliers 448·6/amax. Weight only
    (no input_activations): ``CompressedTensorsW4A16Fp4`` (compressed_tensors_w4a16_nvfp4.py @ 17b6501a, the same
    three weight tensors; "ct stores the inverse of what is expected by the marlin kernel"). compressed-tensors:
    compressors/nvfp4/base.py ``NVFP4PackedCompressor`` (``compression_param_names``: weight_packed, weight_scale,
    weight_global_scale, + input_global_scale for static-global inputs), nvfp4/helpers.py ``pack_fp4_to_uint8``.

    transformers: compressed-tensors decompresses FP4 weights into bfloat16 (see _transformers), so its weights are
    Presso's dequantized weights rounded to bfloat16: its logits equal the in-memory model's with those weights
    rounded the same way, exactly (activations quantized by both for NVFP4, by neither for NVFP4A16)."""
    model, forms, qcfg, state = _artifact(tmp_path, [{"method": "nvfp4", "scheme": scheme}], calib_ids)
    assert forms == ["dense", "nvfp4-pack-quantized"]
    group = _check_config(qcfg, "nvfp4-pack-quantized", scheme)
    want = dict(NVFP4_TENSORS)
    if scheme == "NVFP4":
        want["input_global_scale"] = (torch.float32, (1,))
        assert vllm_scheme(group, qcfg["format"]) == "CompressedTensorsW4A4Fp4"
    else:
        assert vllm_scheme(group, qcfg["format"]) == "CompressedTensorsW4A16Fp4"
    _check_tensors(state, want)
    for i in range(2):  # vLLM fuses q/k/v and gate/up into one layer with ONE weight global scale (it takes the
        # max over the partitions): fused siblings share theirs, from their joint absmax, as llm-compressor writes
        # (llmcompressor/observers/helpers.py fuse_weight_observers, FUSED_LAYER_NAMES)
        for part, leaves in (("self_attn", ("q_proj", "k_proj", "v_proj")), ("mlp", ("gate_proj", "up_proj"))):
            scales = [state[f"model.layers.{i}.{part}.{leaf}.weight_global_scale"] for leaf in leaves]
            assert all(torch.equal(s, scales[0]) for s in scales)
            amax = max(float(model.get_submodule(f"model.layers.{i}.{part}.{leaf}").presso_format.dequantize()
                             .abs().max()) for leaf in leaves)
            assert scales[0].item() == pytest.approx(448 * 6 / amax, rel=0.02)
    _presso_load_matches(tmp_path, model, ids)
    ours, _ = _logits(model, ids)
    theirs = _transformers(tmp_path, fp4=True)(ids).logits.detach()
    for mod in model.modules():
        if getattr(mod, "presso_format", None) is not None:
            mod.weight.data = mod.weight.data.to(torch.bfloat16).float()
    rounded, weight_only = _logits(model, ids)
    torch.testing.assert_close(theirs, rounded, rtol=1e-5, atol=1e-5)
    assert (theirs - ours).abs().max() < 0.5  # the bfloat16 rounding alone
    assert torch.equal(rounded, weight_only) == (scheme == "NVFP4A16")


@pytest.mark.parametrize("scheme", ["MXFP4", "MXFP4A16"])
def test_mxfp4_pack_quantized(tmp_path, calib_ids, ids, scheme):
    """MXFP4: ``mxfp4-pack-quantized``.

    vLLM: compressed_tensors.py ``_is_mxfp4`` (group strategy, symmetric, group 32, float, 4 bits), checked before
    the activation formats (mxfp4-pack-quantized is not one: ``is_activation_quantization_format``), so vLLM serves
    both MXFP4 and MXFP4A16 artifacts as ``CompressedTensorsW4A16Mxfp4`` (schemes/compressed_tensors_w4a16_mxfp4.py
    @ 1a6da548, ``create_weights``: ``weight_packed`` uint8 [N, K/2], ``weight_scale`` uint8 [N, K/32], E8M0, no
    global scale), i.e. with activations unquantized; its W4A4 emulation (compressed_tensors_w4a4_mxfp4.py @ ac2c0392,
    ``dq_mxfp4_torch``: ``2^(e - 127)`` scales, low nibble first) reads the same tensors. compressed-tensors:
    compressors/mxfp4/base.py ``MXFP4PackedCompressor`` (``compress_mx_scale``: 127 + floor(log2 scale)), presets
    MXFP4 / MXFP4A16 (``scale_dtype`` uint8, which is what makes compressed-tensors use E8M0 scales).

    transformers (compressed-tensors) quantizes MXFP4 activations in its forward: its logits equal the in-memory
    model's exactly (power-of-two scales and E2M1 codes are exact in bfloat16)."""
    model, forms, qcfg, state = _artifact(tmp_path, [{"method": "mxfp4", "scheme": scheme}], calib_ids)
    assert forms == ["dense", "mxfp4-pack-quantized"]
    group = _check_config(qcfg, "mxfp4-pack-quantized", scheme)
    assert vllm_scheme(group, qcfg["format"]) == "CompressedTensorsW4A16Mxfp4"
    _check_tensors(state, {"weight_packed": (torch.uint8, lambda n, k: (n, k // 2)),
                           "weight_scale": (torch.uint8, lambda n, k: (n, k // 32))})
    ours, weight_only = _logits(model, ids)
    theirs = _transformers(tmp_path, fp4=True)(ids).logits.detach()
    torch.testing.assert_close(theirs, ours, rtol=1e-5, atol=1e-5)
    assert torch.equal(ours, weight_only) == (scheme == "MXFP4A16")
    _presso_load_matches(tmp_path, model, ids)
    # vLLM's emulation dequantizes the stored bytes to Presso's weights
    lin = model.model.layers[0].mlp.down_proj
    packed, e = state["model.layers.0.mlp.down_proj.weight_packed"], state["model.layers.0.mlp.down_proj.weight_scale"]
    lo, hi = (packed & 0x0F).long(), (packed >> 4).long()
    codes = torch.stack((lo, hi), dim=-1).reshape(packed.shape[0], -1)
    mag = torch.tensor([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0])[codes & 7] * (1 - 2 * (codes >> 3))
    w = (mag.reshape(mag.shape[0], -1, 32) * torch.exp2(e.float() - 127)[..., None]).reshape(mag.shape)
    assert torch.equal(w, lin.weight)


def test_mixed_pack_quantized_and_fp8_in_one_artifact(tmp_path, ids):
    """rtn (pack-quantized) on the MLPs and fp8 on attention: one quantization_config, format ``mixed-precision``,
    each group with its own ``format`` (vLLM uses the group's format when it has one: ``_get_scheme_from_parts``'s
    ``format`` argument); no ``dequantize`` flag (it would apply one scheme to every layer). presso.load and
    transformers both give the in-memory model's logits."""
    model = _llama()
    steps = [{"method": "rtn", "bits": 4, "group_size": 32, "targets": ["*mlp*"]},
             {"method": "fp8", "targets": ["*self_attn*"]}]
    compress(model, parse_recipe({"steps": steps}), StepContext())
    assert write_model(model, None, tmp_path) == ["dense", "pack-quantized", "float-quantized"]
    qcfg = json.loads((tmp_path / "config.json").read_text())["quantization_config"]
    assert qcfg["format"] == "mixed-precision" and "dequantize" not in qcfg
    groups = list(qcfg["config_groups"].values())
    assert [g["format"] for g in groups] == ["pack-quantized", "float-quantized"]
    assert [vllm_scheme(g, qcfg["format"]) for g in groups] == ["CompressedTensorsWNA16", "CompressedTensorsW8A8Fp8"]
    _presso_load_matches(tmp_path, model, ids)
    with torch.no_grad():
        torch.testing.assert_close(_transformers(tmp_path)(ids).logits, model(ids).logits, rtol=1e-5, atol=1e-5)


def test_presso_load_reinstalls_activation_quantization(tmp_path, calib_ids, ids):
    """presso.load gives the model the job evaluated: static scales from the artifact, the same quantizers."""
    from presso.load import load

    model, _, _, state = _artifact(tmp_path, [{"method": "fp8", "scheme": "FP8"}], calib_ids)
    loaded = load(tmp_path)
    lin = loaded.model.layers[1].self_attn.o_proj
    q = actquant.quantizer_of(lin)
    assert (q.scheme.kind, q.scheme.strategy, q.scheme.dynamic) == ("fp8", "tensor", False)
    assert torch.equal(q.static_scale, state["model.layers.1.self_attn.o_proj.input_scale"])
    ours, weight_only = _logits(loaded, ids)
    assert torch.equal(ours, model(ids).logits.detach()) and not torch.equal(ours, weight_only)


def test_lossless_encoding_on_top(tmp_path, calib_ids, ids):
    """The lossless encoding of the finished directory applies to these forms too; presso.load decodes in memory."""
    from presso.compression.io.artifact import encode
    from presso.load import load

    model, _, _, _ = _artifact(tmp_path, [{"method": "nvfp4"}], calib_ids)
    encode(tmp_path, "lossless")
    assert not (tmp_path / "model.safetensors").exists() and (tmp_path / "model.safetensors.pzst").exists()
    with torch.no_grad():
        assert torch.equal(load(tmp_path)(ids).logits, model(ids).logits)
