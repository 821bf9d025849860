"""Low-rank modules on disk.

compressed format:
- ``FactorizedLinear`` at ``<name>``: stored as its factors ``<name>.A.weight`` [r, in],
  ``<name>.B.weight`` [out, r] (+ ``<name>.B.bias``), so a 20% parameter cut is a ~20% smaller file;
  the factors may themselves be pack-quantized (``<name>.A.weight_packed`` ...). config.json gets
  ``presso_lowrank.factorized = {name: {rank, in_features, out_features}}``; ``presso.load`` rebuilds
  the modules (plain transformers cannot: it would miss ``<name>.weight``).
- ``LoRAResidualLinear`` (EoRA): the base weight stays in the model files (packed when quantized);
  the residual goes to ``adapter/`` as a PEFT LoRA adapter (adapter_config.json +
  adapter_model.safetensors, alpha = r so the scale is 1) that PEFT and vLLM load on the base.

dense format: factorized layers are multiplied out to ``<name>.weight`` and residuals merged into
the base weight, so plain transformers loads the result.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn

from presso.compression.engines.lowrank.modules import FactorizedLinear, LoRAResidualLinear

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


class LowRankExporter:
    def export_(self, model: nn.Module, state: dict[str, torch.Tensor], config: dict[str, Any]) -> None:
        factorized = {
            n: {"rank": m.rank, "in_features": m.in_features, "out_features": m.out_features}
            for n, m in model.named_modules() if isinstance(m, FactorizedLinear)
        }
        residuals = _residuals(model)
        for name in residuals:
            state.pop(f"{name}.lora_A", None)
            state.pop(f"{name}.lora_B", None)
        entry: dict[str, Any] = {"version": 1}
        if factorized:
            entry["factorized"] = factorized
        if residuals:
            entry["adapter"] = ADAPTER_DIR
        if len(entry) > 1:
            config[CONFIG_KEY] = entry

    def densify_(self, model: nn.Module, state: dict[str, torch.Tensor], config: dict[str, Any]) -> None:
        for name, mod in model.named_modules():
            if isinstance(mod, FactorizedLinear):
                for key in ("A.weight", "B.weight", "B.bias"):
                    state.pop(f"{name}.{key}", None)
                state[f"{name}.weight"] = mod.weight.detach().cpu().contiguous()
                if mod.bias is not None:
                    state[f"{name}.bias"] = mod.bias.detach().cpu().contiguous()
            elif isinstance(mod, LoRAResidualLinear):
                state.pop(f"{name}.lora_A", None)
                state.pop(f"{name}.lora_B", None)
                state[f"{name}.weight"] = mod.merged_weight().detach().cpu().contiguous()

    def write_files(self, model: nn.Module, out_dir: Path) -> None:
        write_adapter(model, out_dir)
