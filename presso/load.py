"""``load(dir)``: open a Presso artifact as a torch module, factorized layers and EoRA residuals included.

Plain transformers loads every Presso artifact except those with factorized (svd / svd_llm)
layers, whose ``<name>.weight`` is stored as ``<name>.A.weight`` / ``<name>.B.weight``. This loader
needs no trust_remote_code and runs no code from the artifact:

- dense, pack-quantized and/or factorized weights: the architecture is built from config.json
  with ``from_config``, each factorized layer is replaced by a ``FactorizedLinear``, pack-quantized
  tensors are dequantized (``unpack_int`` x scales) into plain Linear weights and the state dict is
  loaded strictly (memory: the dequantized weights, and the factors, never their dense product);
  with ``packed=True`` they stay packed instead, as ``PackedLinear`` layers that compute with
  ``presso.kernels.w4a16_matmul`` (memory: the codes and scales);
- any other quantization format: transformers' own ``from_pretrained``;
- ``adapter/`` (EoRA residuals) is applied as ``LoRAResidualLinear`` modules unless
  ``adapter=False`` (PEFT is not needed; ``PeftModel.from_pretrained`` on the base gives the same).

Importing this module is cheap: torch and transformers are imported on the first call.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    from torch import nn

log = logging.getLogger(__name__)
LOWRANK_KEY = "presso_lowrank"


def load(path: str | Path, *, adapter: bool = True, dtype: Any = None, device: str = "cpu",
         packed: bool = False) -> nn.Module:
    """The model of the artifact directory ``path``, in eval mode, on ``device``.

    ``packed=True`` keeps pack-quantized layers packed (``PackedLinear``: the W4A16 kernels on a GPU,
    the reference elsewhere) instead of dequantizing them into dense Linear weights."""
    path = Path(path)
    raw = json.loads((path / "config.json").read_text())
    factorized = (raw.get(LOWRANK_KEY) or {}).get("factorized") or {}
    qcfg = raw.get("quantization_config") or {}
    presso_written = qcfg.get("format") in ("pack-quantized", "dense") or "sparsity_config" in qcfg
    if factorized or not qcfg or presso_written:
        model = _load_state_dict(path, raw, factorized, dtype, packed)
    else:
        from presso.compression.io.loading import load_model

        model = load_model(path, dtype=dtype).model
    if adapter and (path / "adapter" / "adapter_config.json").exists():
        apply_adapter_(model, path / "adapter")
    return model.to(device).eval()


def _load_state_dict(path: Path, raw: dict[str, Any], factorized: dict[str, Any], dtype: Any,
                     packed: bool = False) -> nn.Module:
    import torch
    from transformers import AutoConfig

    from presso.compression.engines.lowrank.modules import FactorizedLinear, replace_module_
    from presso.compression.errors import ModelLoadError
    from presso.compression.io.exporters.sparse import decompress_state_
    from presso.compression.io.loading import _auto_class

    config = AutoConfig.from_pretrained(str(path), trust_remote_code=False)
    for key in ("quantization_config", LOWRANK_KEY):
        if hasattr(config, key):
            delattr(config, key)
    dtype = dtype or getattr(config, "dtype", None) or torch.float32
    dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype
    state = _read_state(path)
    decompress_state_(state)  # sparse-bitmask layers back to dense weights (no-op without them)
    qcfg = raw.get("quantization_config") or {}
    if qcfg.get("config_groups") and not packed:
        dequantize_packed_(state, qcfg, dtype)
    cls: Any = _auto_class(config)[0]
    with _no_init():
        model = cls.from_config(config, dtype=dtype)
    for name, spec in factorized.items():
        mod = FactorizedLinear(int(spec["in_features"]), int(spec["out_features"]), int(spec["rank"]),
                               bias=f"{name}.B.bias" in state, dtype=dtype)
        replace_module_(model, name, mod)
    if qcfg.get("config_groups") and packed:
        log.info("kept %d pack-quantized layers packed", pack_layers_(model, state, qcfg, dtype))
    try:
        result = model.load_state_dict(
            {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}, strict=False)
    except RuntimeError as exc:  # shape mismatches
        raise ModelLoadError(f"artifact does not match its architecture: {exc}") from exc
    tied = _tied_keys(model) | _packed_keys(model)
    missing = [k for k in result.missing_keys if k not in tied]
    if missing or result.unexpected_keys:
        raise ModelLoadError(f"artifact does not match its architecture: missing {missing[:5]}, "
                             f"unexpected {result.unexpected_keys[:5]}")
    if tied:
        model.tie_weights()
    return model


def _no_init() -> Any:
    try:
        from transformers.initialization import no_init_weights
    except ImportError:  # pragma: no cover - older transformers
        from contextlib import nullcontext

        return nullcontext()
    return no_init_weights()


def _tied_keys(model: nn.Module) -> set[str]:
    if not getattr(model.config, "tie_word_embeddings", False):
        return set()
    getter = getattr(model, "get_output_embeddings", None)
    out = getter() if callable(getter) else None
    if out is None:
        return set()
    return {f"{n}.weight" for n, m in model.named_modules() if m is out}


def _packed_keys(model: nn.Module) -> set[str]:
    """State-dict keys of PackedLinear layers: filled when they were built, not by load_state_dict."""
    from presso.compression.io.packed_linear import PackedLinear

    return {f"{n}.{k}" for n, m in model.named_modules() if isinstance(m, PackedLinear) for k in m.state_dict()}


def _read_state(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    state: dict[str, torch.Tensor] = {}
    for f in sorted(path.glob("*.safetensors")):
        state.update(load_file(str(f)))
    return state


def _weight_args(name: str, qcfg: dict[str, Any]) -> dict[str, Any]:
    groups = list((qcfg.get("config_groups") or {}).values())
    for group in groups:
        for t in group.get("targets", []):
            if (t.startswith("re:") and re.match(t[3:], name)) or t in (name, "Linear"):
                return group.get("weights") or {}
    return (groups[0].get("weights") or {}) if groups else {}


def dequantize_packed_(state: dict[str, torch.Tensor], qcfg: dict[str, Any], dtype: torch.dtype) -> None:
    """Replace every ``<name>.weight_packed`` (+ scale / zero point / shape) by a dense ``<name>.weight``."""
    import torch

    from presso.compression.core.packing import unpack_int, unpack_zero_points
    from presso.compression.core.quant import dequantize_codes
    from presso.compression.errors import ModelLoadError

    if qcfg.get("format") not in (None, "pack-quantized"):
        raise ModelLoadError(f"presso.load reads pack-quantized factors, not {qcfg.get('format')!r}")
    for key in [k for k in state if k.endswith(".weight_packed")]:
        name = key[: -len(".weight_packed")]
        bits = int(_weight_args(name, qcfg).get("num_bits", 4))
        n, k = (int(d) for d in state.pop(f"{name}.weight_shape").tolist())
        q = unpack_int(state.pop(key), bits, k)
        scale = state.pop(f"{name}.weight_scale").float()
        zp = state.pop(f"{name}.weight_zero_point", None)
        zero = unpack_zero_points(zp, bits, n).float() if zp is not None else torch.zeros_like(scale)
        group = _group_size(_weight_args(name, qcfg), k, scale.shape[1]) or k
        state[f"{name}.weight"] = dequantize_codes(q, scale, zero, group).to(dtype)


def _group_size(args: dict[str, Any], k: int, n_groups: int) -> int | None:
    """The layer's group size (None: one scale per output channel), checked against its scales."""
    from presso.compression.errors import ModelLoadError

    if n_groups == 1:
        return None
    group = args.get("group_size")
    if not group:  # an older writer without the field: the only size that yields n_groups groups
        group = -(-k // n_groups)
    if -(-k // int(group)) != n_groups:
        raise ModelLoadError(f"{n_groups} scale groups do not fit K={k} with group_size={group}")
    return int(group)


def pack_layers_(model: nn.Module, state: dict[str, torch.Tensor], qcfg: dict[str, Any], dtype: torch.dtype) -> int:
    """Replace every pack-quantized Linear by a ``PackedLinear`` holding its codes (removed from ``state``)."""
    import torch

    from presso.compression.engines.lowrank.modules import replace_module_
    from presso.compression.errors import ModelLoadError
    from presso.compression.io.packed_linear import PackedLinear

    if qcfg.get("format") not in (None, "pack-quantized"):
        raise ModelLoadError(f"presso.load reads pack-quantized layers, not {qcfg.get('format')!r}")
    names = [k[: -len(".weight_packed")] for k in state if k.endswith(".weight_packed")]
    for name in names:
        args = _weight_args(name, qcfg)
        n, k = (int(d) for d in state.pop(f"{name}.weight_shape").tolist())
        scale = state.pop(f"{name}.weight_scale")
        scale = scale.to(dtype) if dtype in (torch.bfloat16, torch.float16) else scale.float()
        bias = state.pop(f"{name}.bias", None)
        mod = PackedLinear(k, n, int(args.get("num_bits", 4)), _group_size(args, k, scale.shape[1]),
                           state.pop(f"{name}.weight_packed"), scale, state.pop(f"{name}.weight_zero_point", None),
                           None if bias is None else bias.to(dtype))
        replace_module_(model, name, mod)
    return len(names)



def apply_adapter_(model: nn.Module, adapter_dir: Path) -> None:
    """Add the LoRA residuals of a PEFT adapter directory (alpha/r scaling applied) to ``model``."""
    import torch
    from safetensors.torch import load_file

    from presso.compression.engines.lowrank.modules import LoRAResidualLinear, replace_module_
    from presso.compression.errors import ModelLoadError

    cfg = json.loads((adapter_dir / "adapter_config.json").read_text())
    tensors = load_file(str(adapter_dir / "adapter_model.safetensors"))
    prefix = "base_model.model."
    names = sorted({k[len(prefix):].rsplit(".lora_", 1)[0] for k in tensors if k.startswith(prefix)})
    from presso.compression.io.packed_linear import PackedLinear

    for name in names:
        base = model.get_submodule(name)
        a = tensors[f"{prefix}{name}.lora_A.weight"]
        b = tensors[f"{prefix}{name}.lora_B.weight"]
        r = cfg.get("rank_pattern", {}).get(name, cfg["r"])
        alpha = cfg.get("alpha_pattern", {}).get(name, cfg.get("lora_alpha", r))
        if isinstance(base, PackedLinear):
            base.add_residual_(b * (alpha / r), a)
            continue
        if not isinstance(base, torch.nn.Linear):
            raise ModelLoadError(f"adapter targets {name}, which is not a Linear layer")
        replace_module_(model, name, LoRAResidualLinear.wrap(base, b * (alpha / r), a))
    log.info("applied %d LoRA residuals from %s", len(names), adapter_dir)
