"""The expert view: fused 3-D mixture-of-experts parameters as per-expert ``nn.Linear`` layers.

transformers 5 stores the experts of Mixtral, Qwen2/3-MoE, OLMoE, DeepSeek-V3, ... as two fused
parameters on one ``*Experts`` module: ``gate_up_proj`` [E, 2I, H] and ``down_proj`` [E, H, I].
:func:`unfuse_experts_` replaces each such module by :class:`UnfusedExperts`, a ``ModuleList`` of
one :class:`ExpertMLP` per expert whose ``gate`` / ``up`` / ``down`` are plain ``nn.Linear`` holding
row slices of the fused tensors. Its forward is the fused module's routing loop with the same
arithmetic (``act(x Wg^T) * (x Wu^T)``, then ``Wd``, times the routing weight, index-added), so:

- every engine that walks ``select_linears`` / ``targeted_linears`` sees each expert's matrices as
  linears, with no engine-specific code;
- calibration hooks on an expert's linears see exactly the tokens routed to that expert;
- :attr:`UnfusedExperts.tokens_seen` counts those tokens per expert, for the per-expert report
  and the fallback of experts that received too few (:func:`starved_experts`);
- the state dict has the per-expert keys of the original checkpoints
  (``mlp.experts.{e}.gate_proj.weight``, or Mixtral's ``w1``/``w3``/``w2``), which transformers'
  conversion mapping fuses back when it loads, and which compressed-tensors / vLLM read per expert.

The expert names come from transformers' own checkpoint conversion mapping of the model type, so a
new architecture with a standard mapping needs no table here. Experts modules whose layout is not
concatenated ``[gate; up]`` without biases (GPT-OSS: transposed, interleaved, biased, clamped
activation) raise :class:`UnsupportedModel` rather than being left uncompressed.
"""

from __future__ import annotations

import inspect
import logging
import re
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from presso.compression.errors import UnsupportedModel

log = logging.getLogger(__name__)

DEFAULT_NAMES = ("gate_proj", "up_proj", "down_proj")
_EXPERT_KEY = re.compile(r"experts\.\*\.(\w+)\.weight")


def is_fused_experts(module: nn.Module) -> bool:
    """A transformers 5 experts module holding 3-D ``gate_up_proj`` / ``down_proj`` parameters."""
    if isinstance(module, UnfusedExperts):
        return False
    gu, down = getattr(module, "gate_up_proj", None), getattr(module, "down_proj", None)
    return isinstance(gu, torch.Tensor) and isinstance(down, torch.Tensor) and gu.dim() == 3 and down.dim() == 3


def expert_names(model_type: str | None) -> tuple[str, str, str]:
    """(gate, up, down) names of one expert's linears in the checkpoints of ``model_type``.

    Read from transformers' checkpoint conversion mapping: the sources of the converter whose target
    is ``experts.gate_up_proj`` (gate, up) and ``experts.down_proj`` (down).
    """
    try:
        from transformers.conversion_mapping import get_checkpoint_conversion_mapping

        mapping = get_checkpoint_conversion_mapping(model_type) if model_type else None
    except Exception:  # pragma: no cover - a transformers without conversion mappings
        mapping = None
    gate_up: list[str] = []
    down: list[str] = []
    for conv in mapping or []:
        targets = getattr(conv, "target_patterns", None)
        sources = getattr(conv, "source_patterns", None)
        targets = [targets] if isinstance(targets, str) else list(targets or [])
        sources = [sources] if isinstance(sources, str) else list(sources or [])
        names = [m.group(1) for s in sources if (m := _EXPERT_KEY.search(s))]
        if any(t.endswith("experts.gate_up_proj") for t in targets) and len(names) == 2:
            gate_up = names
        elif any(t.endswith("experts.down_proj") for t in targets) and len(names) == 1:
            down = names
    if gate_up and down:
        return gate_up[0], gate_up[1], down[0]
    return DEFAULT_NAMES


class ExpertMLP(nn.Module):
    """One expert: ``down(act(gate(x)) * up(x))`` with three bias-free ``nn.Linear`` layers."""

    def __init__(self, names: tuple[str, str, str], hidden: int, inter: int, act: nn.Module,
                 dtype: torch.dtype, device: torch.device) -> None:
        super().__init__()
        self.names = names
        gate, up, down = names
        setattr(self, gate, nn.Linear(hidden, inter, bias=False, dtype=dtype, device=device))
        setattr(self, up, nn.Linear(hidden, inter, bias=False, dtype=dtype, device=device))
        setattr(self, down, nn.Linear(inter, hidden, bias=False, dtype=dtype, device=device))
        self.act_fn = act

    def linears(self) -> tuple[nn.Linear, nn.Linear, nn.Linear]:
        gate, up, down = (getattr(self, n) for n in self.names)
        return gate, up, down

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up, down = self.linears()
        return down(self.act_fn(gate(x)) * up(x))


class UnfusedExperts(nn.ModuleList):
    """Per-expert modules in place of a fused experts module; same call signature and routing."""

    def __init__(self, experts: list[ExpertMLP], fused_class: str) -> None:
        super().__init__(experts)
        self.num_experts = len(experts)
        self.fused_class = fused_class
        first = experts[0].linears()[0].weight
        # tokens routed to each expert since the last reset (not in the state dict), and the counts a
        # calibrated step recorded after its observation pass (starved_experts), for the report
        self.tokens_seen = torch.zeros(self.num_experts, dtype=torch.long, device=first.device)
        self.calibration_tokens: dict[int, int] = {}
        # expert_calibration="all": every token goes through every expert (the hooks see them all, for
        # statistics); the output still sums only the routed experts' contributions
        self.route_all = False

    def reset_counts_(self) -> None:
        self.tokens_seen = torch.zeros(self.num_experts, dtype=torch.long)
        self.calibration_tokens = {}

    def forward(self, hidden_states: torch.Tensor, top_k_index: torch.Tensor,
                top_k_weights: torch.Tensor) -> torch.Tensor:
        final = torch.zeros_like(hidden_states)
        with torch.no_grad():
            mask = nn.functional.one_hot(top_k_index, num_classes=self.num_experts + 1).permute(2, 1, 0)
            hit = torch.greater(mask.sum(dim=(-1, -2)), 0).nonzero()
        counts = self.tokens_seen
        if counts.device != hidden_states.device:
            counts = counts.to(hidden_states.device)
        experts = range(self.num_experts) if self.route_all else [int(e[0]) for e in hit]
        for e in experts:
            if e == self.num_experts:
                continue
            top_k_pos, token_idx = torch.where(mask[e])
            if self.route_all:  # statistics from every token, output from the routed ones
                counts[e] += hidden_states.shape[0]
                out = self[e](hidden_states)[token_idx]
            else:
                counts[e] += token_idx.numel()
                out = self[e](hidden_states[token_idx])
            out = out * top_k_weights[token_idx, top_k_pos, None]
            final.index_add_(0, token_idx, out.to(final.dtype))
        self.tokens_seen = counts
        return final


def _unfuse(module: nn.Module, names: tuple[str, str, str]) -> UnfusedExperts:
    if getattr(module, "is_transposed", False) or getattr(module, "has_bias", False) \
            or not getattr(module, "is_concatenated", True) or not getattr(module, "has_gate", True) \
            or getattr(module, "has_post_expert_norm", False):
        raise UnsupportedModel(
            f"{type(module).__name__}: fused experts with a transposed, interleaved or biased layout are "
            "not supported by Presso's expert view (only concatenated [gate; up] without bias); no expert "
            "would be left uncompressed, so the model is refused")
    params = list(inspect.signature(module.forward).parameters)
    if len(params) != 3:  # (hidden_states, top_k_index, top_k_weights): the routing happens outside
        raise UnsupportedModel(f"{type(module).__name__}: fused experts called as forward({', '.join(params)}); "
                               "Presso's expert view replaces experts called with (hidden_states, indices, weights)")
    gu: torch.Tensor = getattr(module, "gate_up_proj").data  # noqa: B009 - checked by is_fused_experts
    down: torch.Tensor = getattr(module, "down_proj").data  # noqa: B009
    n, two_i, hidden = gu.shape
    inter = two_i // 2
    if down.shape != (n, hidden, inter):
        raise UnsupportedModel(f"{type(module).__name__}: down_proj {tuple(down.shape)} does not match "
                               f"gate_up_proj {tuple(gu.shape)}")
    act = getattr(module, "act_fn", None)
    if not isinstance(act, nn.Module):
        raise UnsupportedModel(f"{type(module).__name__}: no act_fn module on the fused experts")
    experts = []
    for e in range(n):
        ex = ExpertMLP(names, hidden, inter, act, gu.dtype, gu.device)
        g, u, d = ex.linears()
        g.weight.data.copy_(gu[e, :inter])
        u.weight.data.copy_(gu[e, inter:])
        d.weight.data.copy_(down[e])
        experts.append(ex)
    return UnfusedExperts(experts, type(module).__name__)


def _model_type(model: nn.Module) -> str | None:
    config = getattr(model, "config", None)
    return getattr(config, "model_type", None)


@torch.no_grad()
def unfuse_experts_(model: nn.Module) -> int:
    """Replace every fused experts module of ``model`` by its per-expert view; returns how many were
    replaced (0 when there are none or they are already unfused). Idempotent."""
    fused = [(name, m) for name, m in model.named_modules() if is_fused_experts(m)]
    if not fused:
        return 0
    names = expert_names(_model_type(model))
    for name, module in fused:
        parent_name, _, attr = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, attr, _unfuse(module, names))
    log.info("expert view: %d fused experts modules unfused (%s)", len(fused), "/".join(names))
    return len(fused)


def experts_modules(model: nn.Module) -> Iterator[tuple[str, UnfusedExperts]]:
    for name, m in model.named_modules():
        if isinstance(m, UnfusedExperts):
            yield name, m


def enclosing_expert(block: nn.Module, name: str) -> tuple[str, ExpertMLP] | None:
    """``(name, module)`` of the expert that holds the module ``name`` (relative to ``block``), if any.

    A fold or a verification inside one expert must be checked on that expert's own function: the block's
    output on a calibration batch hardly depends on an expert few of its tokens reach."""
    parts = name.split(".")
    for i in range(len(parts) - 1, 0, -1):
        sub_name = ".".join(parts[:i])
        sub = block.get_submodule(sub_name)
        if isinstance(sub, ExpertMLP):
            return sub_name, sub
    return None


def reset_counts_(model: nn.Module) -> None:
    for _, m in experts_modules(model):
        m.reset_counts_()


def route_all_(model: nn.Module, on: bool) -> None:
    """Send every token through every expert (calibration statistics for all experts) or only the routed ones."""
    for _, m in experts_modules(model):
        m.route_all = on


def expert_of(model: nn.Module) -> dict[str, tuple[UnfusedExperts, int]]:
    """Linear name -> (its experts module, expert index) for every expert linear of ``model``."""
    out: dict[str, tuple[UnfusedExperts, int]] = {}
    for name, m in experts_modules(model):
        for e, ex in enumerate(m):
            assert isinstance(ex, ExpertMLP)
            for leaf in ex.names:
                out[f"{name}.{e}.{leaf}"] = (m, e)
    return out


def starved_experts(model: nn.Module, names: Any, min_tokens: int) -> dict[str, str]:
    """Of the linear ``names``, the expert linears whose expert saw fewer than ``min_tokens`` routed
    calibration tokens, with the reason the report gives. Call it right after the step's observation
    pass over a block: it also records each named expert's count for the report."""
    where = expert_of(model)
    out: dict[str, str] = {}
    for n in names:
        if n not in where:
            continue
        mod, e = where[n]
        seen = int(mod.tokens_seen[e])
        mod.calibration_tokens[e] = seen
        if seen < max(min_tokens, 1):  # an expert no token reached has no statistics at all
            out[n] = (f"expert received {seen} routed calibration tokens (< expert_min_tokens={min_tokens}); "
                      "data-free rounding in the same scheme")
    return out


def expert_summary(model: nn.Module, records: list[dict[str, Any]]) -> dict[str, Any]:
    """``{"experts": {...}}`` for a step's report, or ``{}`` for a model without experts.

    Adds ``expert`` (index) and, for calibrated steps, ``tokens_seen`` to the per-layer records of
    expert linears; the summary counts the experts and expert linears of the model, those this step
    compressed (a record with an error, sparsity or rank, neither ``skipped`` nor ``kept_dense``) and lists
    the fallbacks."""
    where = expert_of(model)
    if not where:
        return {}
    done = 0
    fallbacks: dict[str, str] = {}
    for rec in records:
        name = rec.get("name")
        if name not in where:
            continue
        mod, e = where[name]
        rec["expert"] = e
        if e in mod.calibration_tokens:
            rec["tokens_seen"] = mod.calibration_tokens[e]
        if not rec.get("skipped") and not rec.get("kept_dense") and any(
                k in rec for k in ("rel_error", "sparsity", "error", "rank")):
            done += 1
        if "fallback" in rec:
            fallbacks[name] = rec["fallback"]
    n_experts = len({(id(m), e) for m, e in where.values()})
    routing = "all" if any(m.route_all for m, _ in where.values()) else "routed"
    return {"experts": {"experts": n_experts, "expert_linears": len(where), "expert_linears_compressed": done,
                        "calibration_tokens": routing, "fallbacks": fallbacks}}


_LITERAL = re.compile(r"^[\w.]+$")


def checkpoint_renames(model: nn.Module) -> list[tuple[str, str]]:
    """(checkpoint, model) name pieces of the model type's literal renamings in transformers' conversion
    mapping, e.g. Mixtral's ``(".block_sparse_moe.", ".mlp.")``; only for a model with unfused experts, whose
    artifact stores the per-expert checkpoint form (transformers' save_pretrained writes the same names)."""
    if not any(True for _ in experts_modules(model)):
        return []
    try:
        from transformers.conversion_mapping import get_checkpoint_conversion_mapping

        mapping = get_checkpoint_conversion_mapping(_model_type(model)) or []
    except Exception:  # pragma: no cover
        return []
    out = []
    for conv in mapping:
        if type(conv).__name__ != "WeightRenaming":
            continue
        src, dst = list(conv.source_patterns), list(conv.target_patterns)
        if len(src) == len(dst) == 1 and _LITERAL.match(src[0]) and _LITERAL.match(dst[0]):
            out.append((src[0], dst[0]))
    return out


def _rename(text: str, pairs: list[tuple[str, str]]) -> str:
    for old, new in pairs:
        text = text.replace(old, new).replace(re.escape(old), re.escape(new))
    return text


def _rename_config(obj: Any, pairs: list[tuple[str, str]]) -> Any:
    if isinstance(obj, str):
        return _rename(obj, pairs)
    if isinstance(obj, list):
        return [_rename_config(o, pairs) for o in obj]
    if isinstance(obj, dict):
        return {k: _rename_config(v, pairs) for k, v in obj.items()}
    return obj


def rename_artifact_(state: dict[str, torch.Tensor], config: dict[str, Any], pairs: list[tuple[str, str]],
                     *, to_checkpoint: bool) -> None:
    """Rename ``state``'s keys (order kept) and the module names in ``config["quantization_config"]`` from the
    model's names to the checkpoint's (``to_checkpoint``) or back. ``pairs``: :func:`checkpoint_renames`."""
    if not pairs:
        return
    pairs = [(m, c) for c, m in pairs] if to_checkpoint else pairs
    renamed = {_rename(k, pairs): v for k, v in state.items()}
    state.clear()
    state.update(renamed)
    if "quantization_config" in config:
        config["quantization_config"] = _rename_config(config["quantization_config"], pairs)


def renamed(names: list[str], pairs: list[tuple[str, str]], *, to_checkpoint: bool) -> list[str]:
    pairs = [(m, c) for c, m in pairs] if to_checkpoint else pairs
    return [_rename(n, pairs) for n in names]


_EXACT = re.compile(r"^re:\^\((.*)\)\$$")


def vllm_moe_aliases_(config: dict[str, Any], model: nn.Module) -> int:
    """Add vLLM's lookup names of expert linears to the quantization config's exact-name targets.

    vLLM's compressed-tensors MoE method picks a fused-MoE layer's scheme by matching
    ``<layer>.experts.0.gate_proj`` / ``.up_proj`` / ``.down_proj`` against the targets
    (``CompressedTensorsMoEMethod.get_moe_method``), whatever the checkpoint calls them. Where the
    checkpoint's names differ (Mixtral's ``w1``/``w3``/``w2``), each expert linear's group also targets
    its alias, which names no module in transformers. Returns the number of aliases added."""
    names = expert_names(_model_type(model))
    if names == DEFAULT_NAMES or not any(True for _ in experts_modules(model)):
        return 0
    alias = dict(zip(names, DEFAULT_NAMES, strict=True))
    pattern = re.compile(r"^(.*\.experts\.\d+)\.(" + "|".join(map(re.escape, names)) + r")$")
    added = 0
    qcfg = config.get("quantization_config") or {}
    groups = list((qcfg.get("config_groups") or {}).values())
    groups += list(((qcfg.get("compressed_tensors") or {}).get("config_groups") or {}).values())
    for group in groups:
        targets = []
        for t in group.get("targets", []):
            m = _EXACT.match(t)
            if m:
                members = m.group(1).split("|")
                extra = [re.escape(f"{hit.group(1)}.{alias[hit.group(2)]}")
                         for n in members if (hit := pattern.match(n.replace("\\", "")))]
                added += len(extra)
                t = "re:^(" + "|".join(members + extra) + ")$"
            targets.append(t)
        group["targets"] = targets
    return added


_EXPERT_IN_TARGET = re.compile(r"experts\\?\.\d+\\?\.")  # an expert linear's name in a (re.escape'd) target


def group_targets_experts(group: dict[str, Any]) -> bool:
    """Whether a compressed-tensors config group (Presso's exact-name targets) holds expert linears.

    transformers 5.25 + compressed-tensors 0.20.1 load per-expert tensors by decompressing each expert and
    fusing them (conversion mapping); measured on tiny Qwen3-MoE / Mixtral: symmetric pack-quantized,
    FP8 and MXFP4 weights load exactly; asymmetric pack-quantized (zero points) and INT8 W8A8 fail to
    convert; NVFP4 loads wrong weights; activation quantization of experts is not applied. The formats
    use this to leave transformers out of such artifacts' loaders."""
    return any(_EXPERT_IN_TARGET.search(t) for t in group.get("targets", []))
