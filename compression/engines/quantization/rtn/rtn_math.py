"""Round-to-nearest is the shared quantizer itself; re-exported here so the method has one home."""

from presso.compression.core.quant import quantize_rtn

__all__ = ["quantize_rtn"]
