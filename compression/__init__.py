"""Presso's engine library: torch + transformers + safetensors only.

Importing this package is cheap and torch-free; engines import torch in their own modules.
"""
