"""Engines by family: quantization/, pruning/, lowrank/, lossless/. Discovered by compression.registry."""
