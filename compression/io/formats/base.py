"""What every on-disk form of an artifact is: a :class:`Format` with ``export`` and ``load``.

A format owns some modules of the model. Writing, it turns them into tensors of the flat ``state`` dict
(tensor name -> tensor) and entries of config.json (``export``, or ``densify`` for ``output.format =
"dense"``), and writes side files (``write_files``). Reading, ``load`` turns its tensors back into the
modules ``presso.load`` builds (before ``load_state_dict``), ``after_load`` adds what lives beside the
model files. ``loaders`` names the ecosystem loaders that read the form correctly, as
tests/compression/io/test_format_matrix.py checks them:

- ``presso.load``: ``presso.load(dir)``;
- ``transformers``: ``AutoModelForCausalLM.from_pretrained(dir)`` (with compressed-tensors installed);
- ``peft``: that base, then ``PeftModel.from_pretrained(base, dir + "/adapter")``;
- ``vllm``: ``vllm.LLM(dir)`` (declared from the compressed-tensors spec; the matrix runs it only where
  vLLM is installed).

A format that plain transformers cannot build (``presso_only``) marks the artifact so that transformers
refuses it instead of initializing the missing weights at random (:func:`mark_presso_only`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    import torch
    from torch import nn

    from presso.compression.io.formats.lossless import Encoding

LOADERS = ("presso.load", "transformers", "peft", "vllm")
MARK = "presso_format"


@dataclass(frozen=True)
class WriteOptions:
    """How the writer stores the model (the job's ``output`` options)."""

    format: str = "compressed"  # "compressed": each form's compact tensors; "dense": plain weights everywhere
    sparse_format: str = "dense"  # sparse layers: "dense" (loads everywhere) or "sparse-bitmask" (opt-in)


class Format:
    """One on-disk form. Subclasses override what they need; every hook defaults to doing nothing."""

    name: ClassVar[str]
    loaders: ClassVar[tuple[str, ...]]
    # loaders that read the artifact WITHOUT this form, as documented (EoRA: transformers reads the base)
    base_loaders: ClassVar[tuple[str, ...]] = ()
    # plain transformers would build these modules with random weights: the artifact is marked to refuse
    presso_only: ClassVar[bool] = False
    # present() reads the compressed-tensors quantization_config (any other one is not Presso's)
    reads_quantization_config: ClassVar[bool] = False

    def export(self, model: nn.Module, state: dict[str, torch.Tensor], config: dict[str, Any],
               options: WriteOptions) -> bool:
        """Claim modules: replace their ``<name>.weight`` in ``state`` by this form's tensors, add config
        entries. Returns whether the artifact uses this form."""
        return False

    def densify(self, model: nn.Module, state: dict[str, torch.Tensor], config: dict[str, Any]) -> None:
        """For ``output.format = "dense"``: make sure the modules of this form are plain ``<name>.weight``."""

    def write_files(self, model: nn.Module, out_dir: Path, options: WriteOptions) -> None:
        """Side files beside the model files (after the state is saved)."""

    def present(self, ctx: LoadContext) -> bool:
        """Whether the artifact holds this form."""
        return False

    def loaders_for(self, ctx: LoadContext) -> tuple[str, ...]:
        """The loaders that read this artifact's instance of the form (``loaders`` unless it depends on it)."""
        return self.loaders

    def load(self, model: nn.Module, state: dict[str, torch.Tensor], ctx: LoadContext) -> None:
        """Turn this form's tensors in ``state`` into what ``model`` expects (before ``load_state_dict``)."""

    def after_load(self, model: nn.Module, ctx: LoadContext) -> None:
        """Apply what lives beside the model files (after ``load_state_dict``)."""


class ArtifactReader:
    """Reads an artifact directory, plain or encoded (``*.safetensors.pzst`` + ``pack.json``)."""

    def __init__(self, root: Path, encoding: Encoding | None = None) -> None:
        self.root = Path(root)
        self.encoding = encoding

    def exists(self, rel: str) -> bool:
        if (self.root / rel).is_file():
            return True
        return self.encoding is not None and self.encoding.holds(self.root, rel)

    def json(self, rel: str) -> dict[str, Any]:
        data: dict[str, Any] = json.loads((self.root / rel).read_text())
        return data

    def tensors(self, rel: str) -> dict[str, torch.Tensor]:
        from safetensors.torch import load, load_file

        if (self.root / rel).is_file():
            return load_file(str(self.root / rel))
        if self.encoding is None:
            raise FileNotFoundError(self.root / rel)
        return load(self.encoding.read_bytes(self.root, rel))

    def weight_files(self) -> list[str]:
        """The model's top-level ``*.safetensors`` (original names when encoded)."""
        if self.encoding is not None:
            return self.encoding.weight_files(self.root)
        return sorted(p.name for p in self.root.glob("*.safetensors"))

    def state(self) -> dict[str, torch.Tensor]:
        state: dict[str, torch.Tensor] = {}
        for name in self.weight_files():
            state.update(self.tensors(name))
        return state


@dataclass
class LoadContext:
    reader: ArtifactReader
    config: dict[str, Any]  # config.json as written
    dtype: Any = None  # torch.dtype of the built model
    packed: bool = False  # keep pack-quantized layers packed (PackedLinear)
    adapter: bool = True  # apply adapter/ (EoRA residuals)
    notes: list[str] = field(default_factory=list)

    @property
    def qcfg(self) -> dict[str, Any]:
        return ct_config(self.config)


def mark_presso_only(config: dict[str, Any], names: list[str]) -> None:
    """Make plain transformers refuse the artifact (it raises on a ``quantization_config`` without
    ``quant_method``) and say why in config.json; the compressed-tensors part is kept under
    ``compressed_tensors`` for :func:`ct_config`."""
    ct = config.pop("quantization_config", None)
    config["quantization_config"] = {
        MARK: names,
        "load_with": "presso.load(dir)  # from presso.load import load",
        "why": f"{', '.join(names)}: plain transformers would build these layers with random weights, so this "
               "quantization_config has no quant_method and transformers refuses it; write the artifact with "
               "output.format='dense' (and the default sparse_format 'dense') for plain transformers",
        "compressed_tensors": ct,
    }


def ct_config(config: dict[str, Any]) -> dict[str, Any]:
    """The compressed-tensors ``quantization_config`` of a config.json, marked or not ({} when none)."""
    qc = config.get("quantization_config") or {}
    if MARK in qc:
        return dict(qc.get("compressed_tensors") or {})
    return dict(qc)


class Dense(Format):
    """Plain ``<name>.weight`` tensors: every module no other format claims (and all of them in a dense
    artifact, a structurally pruned model, or sparse layers stored dense)."""

    name = "dense"
    loaders = LOADERS

    def present(self, ctx: LoadContext) -> bool:
        return True
