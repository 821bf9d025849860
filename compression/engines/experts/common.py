"""What the expert-level methods share: finding each MoE layer's router, measuring the experts on the routed
calibration tokens, and removing experts (their weights and router rows) so the model stays a standard
checkpoint of its architecture with a smaller expert count."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, cast

import torch
from torch import nn

from presso.compression.core.experts import ExpertMLP, UnfusedExperts, experts_modules
from presso.compression.core.layout import find_layout
from presso.compression.errors import InvalidRecipe, UnsupportedModel

log = logging.getLogger(__name__)

# config fields holding the routed-expert count, across the MoE families of transformers
COUNT_FIELDS = ("num_experts", "num_local_experts", "n_routed_experts")
TOP_K_FIELDS = ("num_experts_per_tok", "moe_topk", "top_k")


@dataclass
class MoELayer:
    """One MoE layer: its unfused experts and the router whose rows are the experts' logits."""

    name: str  # the experts module's name in the model
    experts: UnfusedExperts
    router: nn.Module
    router_name: str
    top_k: int


def _router(model: nn.Module, name: str, experts: UnfusedExperts) -> tuple[str, nn.Module]:
    parent_name = name.rpartition(".")[0]
    parent = model.get_submodule(parent_name) if parent_name else model
    n = experts.num_experts
    hidden = cast(ExpertMLP, experts[0]).linears()[0].in_features
    found = [(f"{parent_name}.{child_name}", child) for child_name, child in parent.named_children()
             if child is not experts and isinstance(w := getattr(child, "weight", None), torch.Tensor)
             and tuple(w.shape) == (n, hidden)]
    if len(found) != 1:
        raise UnsupportedModel(f"{name}: expected one router with a [{n}, {hidden}] weight next to the experts, "
                               f"found {len(found)}; expert-level methods need the router to remove experts")
    return found[0]


def _top_k(model: nn.Module, router: nn.Module) -> int:
    k = getattr(router, "top_k", None)
    if k is None:
        config = getattr(model, "config", None)
        k = next((getattr(config, f) for f in TOP_K_FIELDS if isinstance(getattr(config, f, None), int)), None)
    if not isinstance(k, int):
        raise UnsupportedModel("the number of experts routed per token (top_k) is not known for this model")
    return k


def moe_layers(model: nn.Module, method: str) -> list[MoELayer]:
    """Every MoE layer of ``model`` (fused experts are unfused by ``find_layout``); ``unsupported_model`` for a
    model without any, for routers Presso cannot find, for group-limited routing and for uneven expert counts."""
    find_layout(model)
    layers = []
    for name, experts in experts_modules(model):
        router_name, router = _router(model, name, experts)
        layers.append(MoELayer(name, experts, router, router_name, _top_k(model, router)))
    if not layers:
        raise UnsupportedModel(f"{method} needs a mixture-of-experts model; {type(model).__name__} has no "
                               "experts modules")
    config = getattr(model, "config", None)
    n_group = getattr(config, "n_group", None)
    if isinstance(n_group, int) and n_group > 1:
        raise UnsupportedModel(f"{method}: group-limited routing (n_group={n_group}) ties experts to router groups; "
                               "removing experts would change the groups")
    counts = {m.experts.num_experts for m in layers}
    if len(counts) != 1:
        raise UnsupportedModel(f"{method}: MoE layers with different expert counts {sorted(counts)}")
    return layers


def removal_count(num_experts: int, top_k: int, ratio: float | None, count: int | None) -> int:
    """Experts removed per layer for ``ratio`` / ``count``; ``invalid_recipe`` when it removes none, or leaves
    fewer experts than the router sends each token to."""
    n = count if count is not None else round(float(ratio or 0.0) * num_experts)
    if n < 1:
        raise InvalidRecipe(f"ratio={ratio} removes no expert of {num_experts}; raise it or give count")
    if num_experts - n < top_k:
        raise InvalidRecipe(f"removing {n} of {num_experts} experts leaves {num_experts - n}, fewer than the "
                            f"{top_k} experts each token is routed to (num_experts_per_tok)")
    return n


@dataclass
class Removal:
    """What a step that removes experts knows before its pass: the MoE layers, the expert count before, how many
    go from each layer, and the model's parameter count before."""

    layers: list[MoELayer]
    before: int
    n_remove: int
    params_before: int


def plan_removal(model: nn.Module, cfg: Any, streamed: bool = False) -> Removal:
    """The checks ``expert_prune`` / ``expert_merge`` make at preflight and when they start (``cfg`` has
    ``method``, ``ratio``, ``count``): a MoE model, a removable amount, and not a streamed model."""
    if streamed:
        raise InvalidRecipe(f"{cfg.method} changes the model's shape; it does not run on a streamed model")
    layers = moe_layers(model, cfg.method)
    before = layers[0].experts.num_experts
    n_remove = removal_count(before, max(m.top_k for m in layers), cfg.ratio, cfg.count)
    return Removal(layers, before, n_remove, sum(p.numel() for p in model.parameters()))


@dataclass
class ExpertStats:
    """Per expert, over the calibration tokens routed to it: token count, sum of gate weights, sum of
    gate weight x ||output||."""

    tokens: torch.Tensor
    gate: torch.Tensor
    contribution: torch.Tensor
    logit_gram: torch.Tensor | None = None  # [E, E] sum over tokens of router logits' outer products
    handles: list[Any] = field(default_factory=list)

    @classmethod
    def watch(cls, experts: UnfusedExperts, router_weight: torch.Tensor | None = None) -> ExpertStats:
        """Hook ``experts``; with ``router_weight`` also accumulate the Gram matrix of the router logits
        ``hidden @ router_weight.T`` over the tokens (the experts see the router's input)."""
        n = experts.num_experts
        stats = cls(torch.zeros(n, dtype=torch.long), torch.zeros(n, dtype=torch.float64),
                    torch.zeros(n, dtype=torch.float64),
                    torch.zeros(n, n, dtype=torch.float64) if router_weight is not None else None)

        def hook(module: UnfusedExperts, args: tuple[Any, ...], kwargs: dict[str, Any], _out: Any) -> None:
            values = list(args) + [kwargs[k] for k in ("hidden_states", "top_k_index", "top_k_weights")
                                   if k in kwargs]
            hidden, index, weights = values[:3]
            with torch.no_grad():
                if router_weight is not None and stats.logit_gram is not None:
                    logits = (hidden.float() @ router_weight.to(hidden.device).float().T).double()
                    stats.logit_gram += (logits.T @ logits).cpu()
                for e in range(n):
                    tok, pos = torch.where(index == e)
                    if tok.numel() == 0:
                        continue
                    out = module[e](hidden[tok]).float()
                    w = weights[tok, pos].float()
                    stats.tokens[e] += tok.numel()
                    stats.gate[e] += float(w.sum())
                    stats.contribution[e] += float((w * out.norm(dim=-1)).sum())

        stats.handles.append(experts.register_forward_hook(hook, with_kwargs=True))
        return stats

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles.clear()

    def similarity(self) -> torch.Tensor:
        """[E, E] cosine similarity of the experts' router-logit columns over the calibration tokens."""
        assert self.logit_gram is not None
        d = self.logit_gram.diagonal().clamp(min=1e-30).sqrt()
        return self.logit_gram / (d[:, None] * d[None, :])

    def scores(self, criterion: str) -> torch.Tensor:
        if criterion == "frequency":
            return self.tokens.double()
        if criterion == "contribution":
            return self.contribution.clone()  # summed over the calibration tokens: frequency x REAP
        return self.contribution / self.tokens.clamp(min=1).double()  # never routed: 0


def keep_experts_(model: nn.Module, layer: MoELayer, keep: list[int]) -> None:
    """Keep only the experts ``keep`` (in their order) of ``layer``: its experts module and the router's rows
    (and any router parameter or buffer indexed by expert, e.g. a score-correction bias)."""
    old = layer.experts
    n = old.num_experts
    idx = torch.tensor(keep, dtype=torch.long)
    kept: list[ExpertMLP] = []
    for e in keep:
        ex = old[e]
        assert isinstance(ex, ExpertMLP)
        kept.append(ex)
    new = UnfusedExperts(kept, old.fused_class)
    parent_name, _, attr = layer.name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, attr, new)
    layer.experts = new
    router = layer.router
    with torch.no_grad():
        for pname, p in list(router.named_parameters(recurse=False)):
            if p.dim() >= 1 and p.shape[0] == n:
                setattr(router, pname, nn.Parameter(p.data.index_select(0, idx.to(p.device)).clone(),
                                                    requires_grad=p.requires_grad))
        for bname, b in list(router.named_buffers(recurse=False)):
            if b is not None and b.dim() >= 1 and b.shape[0] == n:
                router.register_buffer(bname, b.index_select(0, idx.to(b.device)).clone())
    for attr_name in ("num_experts", "num_local_experts", "n_routed_experts"):
        if getattr(router, attr_name, None) == n:
            setattr(router, attr_name, len(keep))


def update_config_(model: nn.Module, before: int, after: int) -> list[str]:
    """Set the config's routed-expert count fields from ``before`` to ``after``; returns the fields changed."""
    config = getattr(model, "config", None)
    changed = [f for f in COUNT_FIELDS if getattr(config, f, None) == before]
    if not changed:
        raise UnsupportedModel(f"the model config has no expert count field ({', '.join(COUNT_FIELDS)}) equal to "
                               f"{before}; the result would not load")
    for f in changed:
        setattr(config, f, after)
    return changed
