"""Exporters turn compressed modules into on-disk tensors + config entries of the artifact.

Each exporter edits the flat ``state`` dict (tensor name -> tensor) in place for the modules it
owns and adds its part of config.json. They run in order; the first one that claims a module
(removes its ``<name>.weight``) owns it.
"""

from __future__ import annotations

from typing import Any, Protocol

import torch
from torch import nn

from presso.compression.io.exporters.lowrank import LowRankExporter
from presso.compression.io.exporters.quantized import PackQuantizedExporter
from presso.compression.io.exporters.sparse import SparseBitmaskExporter


class Exporter(Protocol):
    def export_(self, model: nn.Module, state: dict[str, torch.Tensor], config: dict[str, Any]) -> None: ...


EXPORTERS: list[Exporter] = [PackQuantizedExporter(), LowRankExporter(), SparseBitmaskExporter()]
