"""Find the repeated block list and its Linear layers on any transformers model.

No per-architecture tables: the block list is the largest ``nn.ModuleList`` whose children
all share one class; its linear layers are ``nn.Linear`` or GPT-2's ``Conv1D`` (whose weight
is stored transposed; :func:`get_weight` / :func:`set_weight_` hide that). Fused mixture-of-experts
parameters are first turned into per-expert linears (:mod:`presso.compression.core.experts`), so the
experts are linears like any other; routers stay out of the selection unless a target names them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from presso.compression.configs.base import matches, selected
from presso.compression.core.experts import UnfusedExperts, unfuse_experts_
from presso.compression.core.quant import QuantizedWeight
from presso.compression.core.staging import copy_to_host_, to_device
from presso.compression.errors import NoTargetModules, UnsupportedModel

try:  # transformers' GPT-2 style linear
    from transformers.pytorch_utils import Conv1D
except ImportError:  # pragma: no cover
    Conv1D = None  # type: ignore[assignment,misc]


@dataclass
class Layout:
    prefix: str  # e.g. "model.layers"
    blocks: nn.ModuleList

    def block_name(self, i: int) -> str:
        return f"{self.prefix}.{i}"


def is_linear(module: nn.Module) -> bool:
    return isinstance(module, nn.Linear) or (Conv1D is not None and isinstance(module, Conv1D))


def find_layout(model: nn.Module) -> Layout:
    """The model's block list. Unfuses fused experts first (numerically the same forward).

    Vision-language models: the search stays inside the language model (its blocks are what a recipe
    compresses by default; vision tower and projector are kept). Encoder-decoder models are refused:
    one block list would leave the other stack uncompressed."""
    config = getattr(model, "config", None)
    if getattr(config, "is_encoder_decoder", False):
        raise UnsupportedModel(
            f"{type(model).__name__}: encoder-decoder models ({getattr(config, 'model_type', '?')}) are not "
            "supported: Presso compresses one repeated block list and would leave the other stack uncompressed")
    unfuse_experts_(model)
    best: tuple[int, str, nn.ModuleList] | None = None
    for name, module in _search_space(model):
        if not isinstance(module, nn.ModuleList) or len(module) == 0 or isinstance(module, UnfusedExperts):
            continue
        if len({type(m) for m in module}) != 1:
            continue
        if not any(is_linear(m) for m in module[0].modules()):
            continue
        size = sum(p.numel() for p in module.parameters())
        if best is None or size > best[0]:
            best = (size, name, module)
    if best is None:
        raise UnsupportedModel(
            f"{type(model).__name__}: no repeated block list with linear layers found; "
            "Presso needs a transformer-style stack of identical blocks"
        )
    return Layout(prefix=best[1], blocks=best[2])


def _search_space(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Named modules to search for the block list: the language model's where there is one (VLMs)."""
    for name, module in model.named_modules():
        if name.rsplit(".", 1)[-1] == "language_model" and any(isinstance(m, nn.ModuleList) for m in module.modules()):
            return [(f"{name}.{n}" if n else name, m) for n, m in module.named_modules()]
    return list(model.named_modules())


def block_linears(block: nn.Module, block_name: str) -> dict[str, nn.Module]:
    """Full name -> linear module, in definition order."""
    return {f"{block_name}.{n}": m for n, m in block.named_modules() if is_linear(m)}


ROUTER_LEAVES = ("gate", "router", "shared_expert_gate")


def router_linears(block: nn.Module, block_name: str) -> set[str]:
    """Names of a block's MoE routing linears: a ``gate``/``router`` beside an ``experts`` module, and
    ``shared_expert_gate``. They stay in high precision unless a step's targets name them explicitly."""
    out = set()
    for name, mod in block.named_modules():
        parent_name, _, leaf = name.rpartition(".")
        if not is_linear(mod) or leaf not in ROUTER_LEAVES:
            continue
        parent = block.get_submodule(parent_name) if parent_name else block
        if leaf == "shared_expert_gate" or hasattr(parent, "experts"):
            out.add(f"{block_name}.{name}")
    return out


def _router_targeted(name: str, targets: list[str]) -> bool:
    """A router is targeted only by name: its leaf (``gate``), its full name, or a regular expression."""
    leaf = name.rsplit(".", 1)[-1]
    return any(p in (leaf, name) or (p.startswith("re:") and p != "re:.*" and matches(name, p)) for p in targets)


def select_linears(
    model: nn.Module, layout: Layout, targets: list[str], ignore: list[str]
) -> dict[int, dict[str, nn.Module]]:
    """Block index -> {name: linear} chosen by the step's patterns. Fails early when none match.
    MoE routers are left out unless a target other than ``*`` names them."""
    chosen: dict[int, dict[str, nn.Module]] = {}
    for i, block in enumerate(layout.blocks):
        routers = router_linears(block, layout.block_name(i))
        lin = {n: m for n, m in block_linears(block, layout.block_name(i)).items()
               if selected(n, targets, ignore) and (n not in routers or _router_targeted(n, targets))}
        chosen[i] = lin
    if not any(chosen.values()):
        raise NoTargetModules(f"targets {targets} (ignore {ignore}) match no linear layer in {layout.prefix}")
    return chosen


def get_weight(module: nn.Module, device: torch.device | str | None = None) -> torch.Tensor:
    """A float32 COPY of the weight as [out_features, in_features] (Conv1D is transposed).

    Always a copy: engines may edit it freely, and comparing it with the module's weight after
    :func:`set_weight_` compares before with after.
    """
    w: torch.Tensor = getattr(module, "weight").data  # noqa: B009 - nn.Module attributes are untyped
    w = w.t() if not isinstance(module, nn.Linear) else w
    return to_device(w, device or w.device).to(torch.float32)  # move (pinned staging), then widen


def set_weight_(module: nn.Module, w: torch.Tensor) -> None:
    """Write a [out, in] weight back in the module's own layout and dtype; drops stale quant state."""
    target: torch.Tensor = getattr(module, "weight").data  # noqa: B009
    src = w.t() if not isinstance(module, nn.Linear) else w
    src = src.to(dtype=target.dtype)  # narrow where the result is, then move
    if src.device != target.device and target.device.type == "cpu":
        copy_to_host_(target, src)
    else:
        target.copy_(src)
    for attr in ("presso_quant", "presso_format"):  # codes of an earlier quantization no longer match
        if hasattr(module, attr):
            delattr(module, attr)


def in_out(module: nn.Module) -> tuple[int, int]:
    """(in_features, out_features) from the weight's shape; no copy (an 8B model has 224 linears)."""
    w: torch.Tensor = getattr(module, "weight")  # noqa: B009
    out_f, in_f = w.shape if isinstance(module, nn.Linear) else w.shape[::-1]
    return int(in_f), int(out_f)


def set_quantized_(module: nn.Module, qw: QuantizedWeight, device: torch.device | str | None = None) -> torch.Tensor:
    """Store the dequantized weight in the module and keep the codes for the packed artifact.

    Returns the dequantized float32 weight [out, in], computed on ``device`` (default: where the
    codes are), so engines can measure the error there without dequantizing twice. The codes are
    dequantized where they were made and only then copied to host memory: one device-to-host copy
    of the codes, no round trip.
    """
    w_hat = qw.dequantize(device)
    set_weight_(module, w_hat)
    module.presso_quant = qw.cpu()  # type: ignore[assignment]
    return w_hat


def quantized_of(module: nn.Module) -> QuantizedWeight | None:
    return getattr(module, "presso_quant", None)
