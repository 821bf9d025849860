"""``load(dir)``: open a Presso artifact as a torch module, whatever forms it holds.

No trust_remote_code, no code from the artifact. The forms are those of ``presso.compression.io.formats``
(the registry the writer uses too); for each one the artifact holds, its ``load`` turns the stored tensors
into modules:

- the architecture is built from config.json with ``from_config``; factorized (svd / svd_llm) layers
  become ``FactorizedLinear``; pack-quantized tensors are dequantized (``unpack_int`` x scales) into plain
  Linear weights, or with ``packed=True`` kept packed as ``PackedLinear`` layers that compute with
  ``presso.kernels.w4a16_matmul``; sparse-bitmask tensors are decoded; then the state dict is loaded
  strictly (a mismatch raises ``ModelLoadError``);
- ``adapter/`` (EoRA residuals) is applied as ``LoRAResidualLinear`` modules unless ``adapter=False``
  (PEFT is not needed; ``PeftModel.from_pretrained`` on the base gives the same);
- a losslessly encoded artifact (``pack.json`` + ``*.safetensors.pzst``) is decoded in memory;
- a checkpoint in a quantization format Presso does not write: transformers' own ``from_pretrained``.

Importing this module is cheap: torch and transformers are imported on the first call.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    from torch import nn


def load(path: str | Path, *, adapter: bool = True, dtype: Any = None, device: str = "cpu",
         packed: bool = False) -> nn.Module:
    """The model of the artifact directory ``path``, in eval mode, on ``device``.

    ``packed=True`` keeps pack-quantized layers packed (``PackedLinear``: the W4A16 kernels on a GPU,
    the reference elsewhere) instead of dequantizing them into dense Linear weights."""
    from presso.compression.io.formats import formats_in, open_artifact

    ctx = open_artifact(Path(path), adapter=adapter, packed=packed)
    forms = formats_in(ctx)
    if ctx.qcfg and not any(form.reads_quantization_config for form in forms):  # a format Presso does not write
        from presso.compression.io.loading import load_model

        model = load_model(Path(path), dtype=dtype).model
        for form in forms:
            form.after_load(model, ctx)
        return model.to(device).eval()
    model = _build(ctx, dtype)
    state = ctx.reader.state()
    _expert_view_(model, state, ctx.config)
    for form in forms:
        form.load(model, state, ctx)
    _load_state_(model, state, ctx.dtype)
    for form in forms:
        form.after_load(model, ctx)
    return model.to(device).eval()


def _build(ctx: Any, dtype: Any) -> nn.Module:
    import torch
    from transformers import AutoConfig

    from presso.compression.io.formats.lowrank import CONFIG_KEY
    from presso.compression.io.loading import auto_class

    config = AutoConfig.from_pretrained(str(ctx.reader.root), trust_remote_code=False)
    for key in ("quantization_config", CONFIG_KEY):
        if hasattr(config, key):
            delattr(config, key)
    dtype = dtype or getattr(config, "dtype", None) or torch.float32
    ctx.dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype
    cls: Any = auto_class(config)[0]
    with _no_init():
        return cls.from_config(config, dtype=ctx.dtype)


def _expert_view_(model: nn.Module, state: dict[str, torch.Tensor], config: dict[str, Any]) -> None:
    """Artifacts store mixture-of-experts weights per expert, under the checkpoint's names
    (compression.core.experts): give the freshly built model the same per-expert view when its fused
    experts' keys are not in the artifact, and the state and quantization config the model's names."""
    from presso.compression.core.experts import checkpoint_renames, is_fused_experts, rename_artifact_, unfuse_experts_

    fused = [f"{n}.gate_up_proj" for n, m in model.named_modules() if is_fused_experts(m)]
    if fused and not all(k in state for k in fused):
        unfuse_experts_(model)
        rename_artifact_(state, config, checkpoint_renames(model), to_checkpoint=False)


def _load_state_(model: nn.Module, state: dict[str, torch.Tensor], dtype: torch.dtype) -> None:
    from presso.compression.errors import ModelLoadError

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
        model.tie_weights()  # type: ignore[operator]  # a transformers PreTrainedModel


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
