"""Low-rank modules on disk: two formats.

``factorized`` (svd / svd_llm): a ``FactorizedLinear`` at ``<name>`` is stored as its factors
``<name>.A.weight`` [r, in], ``<name>.B.weight`` [out, r] (+ ``<name>.B.bias``), so a 20% parameter cut
is a ~20% smaller file; the factors may themselves be pack-quantized (``<name>.A.weight_packed`` ...).
config.json gets ``presso_lowrank.factorized = {name: {rank, in_features, out_features}}``;
``presso.load`` rebuilds the modules. Plain transformers cannot (it would miss ``<name>.weight`` and
initialize it at random), so the form is ``presso_only``: the artifact is marked and transformers refuses.

``lora-adapter`` (EoRA): the base weight stays in the model files (packed when quantized); the residual
goes to ``adapter/`` as a PEFT LoRA adapter (adapter_config.json + adapter_model.safetensors, alpha = r so
the scale is 1) that ``PeftModel.from_pretrained(base, dir + "/adapter")`` applies on the base.
Plain transformers reads the base alone (``base_loaders``), as documented.

With ``output.format = "dense"`` factorized layers are multiplied out to ``<name>.weight`` and residuals
merged into the base weight, so plain transformers loads the result.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn

from presso.compression.engines.lowrank.modules import FactorizedLinear, LoRAResidualLinear
from presso.compression.io.formats.base import Format, LoadContext, WriteOptions

log = logging.getLogger(__name__)
ADAPTER_DIR = "adapter"
CONFIG_KEY = "presso_lowrank"


def _residuals(model: nn.Module) -> dict[str, LoRAResidualLinear]:
    return {n: m for n, m in model.named_modules() if isinstance(m, LoRAResidualLinear)}


def adapter_config(residuals: dict[str, LoRAResidualLinear], task_type: str | None) -> dict[str, Any]:
    ranks = {n: m.rank for n, m in residuals.items()}
    r = max(set(ranks.values()), key=list(ranks.values()).count)
    pattern = {n: k for n, k in ranks.items() if k != r}
    return {
        "peft_type": "LORA", "task_type": task_type, "base_model_name_or_path": None, "inference_mode": True,
        "r": r, "lora_alpha": r, "rank_pattern": pattern, "alpha_pattern": dict(pattern),
        "target_modules": sorted(residuals), "lora_dropout": 0.0, "bias": "none", "fan_in_fan_out": False,
        "use_rslora": False, "use_dora": False, "init_lora_weights": True, "modules_to_save": None,
        "layers_to_transform": None, "layers_pattern": None,
    }


def write_adapter(model: nn.Module, out_dir: Path) -> Path | None:
    """Write ``out_dir/adapter`` when the model holds EoRA residuals; returns its path."""
    residuals = _residuals(model)
    if not residuals:
        return None
    path = out_dir / ADAPTER_DIR
    path.mkdir(parents=True, exist_ok=True)
    tensors = {}
    for name, mod in residuals.items():
        tensors[f"base_model.model.{name}.lora_A.weight"] = mod.lora_A.detach().cpu().contiguous()
        tensors[f"base_model.model.{name}.lora_B.weight"] = mod.lora_B.detach().cpu().contiguous()
    save_file(tensors, str(path / "adapter_model.safetensors"), metadata={"format": "pt"})
    task = "CAUSAL_LM" if hasattr(model, "lm_head") or type(model).__name__.endswith("ForCausalLM") else None
    (path / "adapter_config.json").write_text(json.dumps(adapter_config(residuals, task), indent=2, sort_keys=True))
    return path


class Factorized(Format):
    name = "factorized"
    loaders = ("presso.load",)
    presso_only = True

    def export(self, model: nn.Module, state: dict[str, torch.Tensor], config: dict[str, Any],
               options: WriteOptions) -> bool:
        factorized = {
            n: {"rank": m.rank, "in_features": m.in_features, "out_features": m.out_features}
            for n, m in model.named_modules() if isinstance(m, FactorizedLinear)
        }
        return _note(config, "factorized", factorized)

    def densify(self, model: nn.Module, state: dict[str, torch.Tensor], config: dict[str, Any]) -> None:
        for name, mod in model.named_modules():
            if isinstance(mod, FactorizedLinear):
                for key in ("A.weight", "B.weight", "B.bias"):
                    state.pop(f"{name}.{key}", None)
                state[f"{name}.weight"] = mod.weight.detach().cpu().contiguous()
                if mod.bias is not None:
                    state[f"{name}.bias"] = mod.bias.detach().cpu().contiguous()

    def present(self, ctx: LoadContext) -> bool:
        return bool(factorized_of(ctx.config))

    def load(self, model: nn.Module, state: dict[str, torch.Tensor], ctx: LoadContext) -> None:
        from presso.compression.engines.lowrank.modules import replace_module_

        for name, spec in factorized_of(ctx.config).items():
            mod = FactorizedLinear(int(spec["in_features"]), int(spec["out_features"]), int(spec["rank"]),
                                   bias=f"{name}.B.bias" in state, dtype=ctx.dtype)
            replace_module_(model, name, mod)


def _note(config: dict[str, Any], key: str, value: Any) -> bool:
    """Set ``config.json``'s ``presso_lowrank[key]`` when there is something to say; returns whether there was."""
    if value:
        config.setdefault(CONFIG_KEY, {"version": 1})[key] = value
    return bool(value)


def factorized_of(config: dict[str, Any]) -> dict[str, Any]:
    return dict((config.get(CONFIG_KEY) or {}).get("factorized") or {})


class LoraAdapter(Format):
    name = "lora-adapter"
    loaders = ("presso.load", "peft")
    base_loaders = ("transformers", "vllm")  # the base model without the EoRA residuals

    def export(self, model: nn.Module, state: dict[str, torch.Tensor], config: dict[str, Any],
               options: WriteOptions) -> bool:
        residuals = _residuals(model)
        for name in residuals:
            state.pop(f"{name}.lora_A", None)
            state.pop(f"{name}.lora_B", None)
        return _note(config, "adapter", ADAPTER_DIR if residuals else None)

    def densify(self, model: nn.Module, state: dict[str, torch.Tensor], config: dict[str, Any]) -> None:
        for name, mod in model.named_modules():
            if isinstance(mod, LoRAResidualLinear):
                state.pop(f"{name}.lora_A", None)
                state.pop(f"{name}.lora_B", None)
                state[f"{name}.weight"] = mod.merged_weight().detach().cpu().contiguous()

    def write_files(self, model: nn.Module, out_dir: Path, options: WriteOptions) -> None:
        if options.format == "compressed":
            write_adapter(model, out_dir)

    def present(self, ctx: LoadContext) -> bool:
        return ctx.reader.exists(f"{ADAPTER_DIR}/adapter_config.json")

    def after_load(self, model: nn.Module, ctx: LoadContext) -> None:
        if ctx.adapter:
            n = apply_adapter_(model, ctx.reader.json(f"{ADAPTER_DIR}/adapter_config.json"),
                               ctx.reader.tensors(f"{ADAPTER_DIR}/adapter_model.safetensors"))
            log.info("applied %d LoRA residuals from %s", n, ctx.reader.root / ADAPTER_DIR)


def apply_adapter_(model: nn.Module, cfg: dict[str, Any], tensors: dict[str, torch.Tensor]) -> int:
    """Add the LoRA residuals of a PEFT adapter (its config and tensors; alpha/r scaling applied) to ``model``."""
    from presso.compression.engines.lowrank.modules import replace_module_
    from presso.compression.errors import ModelLoadError
    from presso.compression.io.packed_linear import PackedLinear

    prefix = "base_model.model."
    names = sorted({k[len(prefix):].rsplit(".lora_", 1)[0] for k in tensors if k.startswith(prefix)})
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
    return len(names)
