"""The lossless step: PZST-encode the written artifact's safetensors (presso.codec)."""
