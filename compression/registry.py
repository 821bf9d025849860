"""One registry of engines: ``@register(ConfigClass)`` on the engine class.

Engines are discovered by importing every ``presso.compression.engines.<family>.<method>.engine``
module, so adding a method touches compression/ only.
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from presso.compression.configs import CONFIGS, StepConfig

if TYPE_CHECKING:
    from torch import nn

    from presso.compression.core.context import StepContext


class Engine(Protocol):
    def apply_(self, model: nn.Module, cfg: Any, ctx: StepContext) -> dict[str, Any]:
        """Compress ``model`` in place; return this step's report (JSON-able)."""
        ...


_ENGINES: dict[type[StepConfig], type] = {}
_discovered = False
E = TypeVar("E", bound=type)


def register(config_cls: type[StepConfig]):  # noqa: ANN201 - decorator
    def deco(engine_cls: E) -> E:
        if config_cls in _ENGINES and _ENGINES[config_cls] is not engine_cls:
            raise RuntimeError(f"two engines registered for {config_cls.__name__}")
        _ENGINES[config_cls] = engine_cls
        return engine_cls

    return deco


def _discover() -> None:
    global _discovered
    if _discovered:
        return
    import presso.compression.engines as pkg

    for info in pkgutil.walk_packages(pkg.__path__, prefix=pkg.__name__ + "."):
        if info.name.endswith(".engine"):
            importlib.import_module(info.name)
    _discovered = True


class _ExpertReport:
    """Wraps an engine: a step whose per-layer records touch mixture-of-experts linears gets the expert
    summary and per-expert fields (compression.core.experts.expert_summary), for every method alike."""

    def __init__(self, engine: Any) -> None:
        self.engine = engine

    def __getattr__(self, name: str) -> Any:
        return getattr(self.engine, name)

    def apply_(self, model: nn.Module, cfg: Any, ctx: StepContext) -> dict[str, Any]:
        from presso.compression.core.experts import expert_summary, route_all_

        try:
            result = self.engine.apply_(model, cfg, ctx) or {}
            if isinstance(result.get("layers"), list) and "experts" not in result:
                result.update(expert_summary(model, result["layers"]))
            if "experts" in result and "expert_observation" in result:  # chunked observation (core.expertchunks)
                result["experts"].update(result.pop("expert_observation"))
        finally:
            route_all_(model, False)  # expert_calibration="all" lasts one step
        return result


def engine_for(cfg: StepConfig) -> Any:
    _discover()
    try:
        return _ExpertReport(_ENGINES[type(cfg)]())
    except KeyError:
        raise NotImplementedError(f"no engine registered for method {cfg.method!r}") from None


def registered_methods() -> dict[str, type]:
    _discover()
    return {cls.model_fields["method"].default: eng for cls, eng in _ENGINES.items()}


def unregistered_methods() -> list[str]:
    """Config classes with no engine (a test keeps this empty)."""
    have = registered_methods()
    return sorted(m for m in CONFIGS if m not in have)
