"""Without the C library (PRESSO_CODEC_NATIVE=0) streams are identical and cross-decodable."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np

from presso.codec import pzst as codec

from .conftest import bf16_bytes, build_safetensors

ROOT = Path(__file__).resolve().parents[3]


def test_numpy_fallback_produces_the_same_stream(tmp_path: Path) -> None:
    w = np.random.default_rng(0).standard_normal(20_000).astype(np.float32)
    data = build_safetensors({"w": ("BF16", bf16_bytes(w)), "f": ("F32", w[:3000].tobytes())})
    src = tmp_path / "m.safetensors"
    src.write_bytes(data)
    native_enc = codec.encode_bytes(data, chunk_bytes=1 << 14)
    code = (
        "import sys; from pathlib import Path; from presso.codec import native; from presso.codec import pzst as codec;"
        "assert not native.available();"
        "d = Path(sys.argv[1]).read_bytes(); e = Path(sys.argv[2]).read_bytes();"
        "assert codec.decode_bytes(e) == d;"
        "sys.stdout.buffer.write(codec.encode_bytes(d, chunk_bytes=1 << 14))"
    )
    (tmp_path / "enc").write_bytes(native_enc)
    env = {"PRESSO_CODEC_NATIVE": "0", "PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}
    args = [sys.executable, "-c", code, str(src), str(tmp_path / "enc")]
    res = subprocess.run(args, capture_output=True, cwd=ROOT, env=env, check=True, timeout=120)
    assert res.stdout == native_enc
