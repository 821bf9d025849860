"""What every quantization engine shares: early shape checks and per-layer records."""

from __future__ import annotations

from typing import Any

from torch import nn

from presso.compression.configs.quantization import QuantArgs, QuantStep
from presso.compression.core.layout import in_out
from presso.compression.core.quant import resolve_group
from presso.compression.errors import InvalidRecipe


def schemes_for(chosen: dict[int, dict[str, nn.Module]], cfg: QuantStep) -> dict[str, QuantArgs | None]:
    """Resolve overrides for every chosen module and fail before any work on impossible shapes."""
    out: dict[str, QuantArgs | None] = {}
    for lins in chosen.values():
        for name, mod in lins.items():
            scheme = cfg.scheme_for(name)
            if scheme is not None:
                k, _ = in_out(mod)
                if scheme.group_size > k and cfg.group_is_explicit(name):
                    raise InvalidRecipe(
                        f"group_size {scheme.group_size} is larger than the input width {k} of {name}; "
                        "use a smaller group or -1 (per channel)"
                    )
                # an explicit group wider than the layer is an error (above); the default one falls back
                scheme = scheme.model_copy(update={"group_size": resolve_group(k, scheme.group_size)})
            out[name] = scheme
    return out


def layer_record(name: str, scheme: QuantArgs | None, error: float | None) -> dict[str, Any]:
    if scheme is None:
        return {"name": name, "skipped": "override"}
    return {
        "name": name,
        "bits": scheme.bits,
        "group_size": scheme.group_size,
        "symmetric": scheme.symmetric,
        "rel_error": error,
    }
