"""Pinned staging (compression/core/staging.py): same bytes as a plain copy, buffers reused safely."""

from __future__ import annotations

import pytest
import torch

from presso.compression.core import staging


def test_cpu_paths_are_plain_copies() -> None:
    t = torch.randn(300, 700)
    out = staging.to_device(t, "cpu")
    assert torch.equal(out, t) and out.data_ptr() != t.data_ptr()  # always a copy
    assert staging.to_host(t) is t
    dst = torch.empty_like(t)
    staging.copy_to_host_(dst, t)
    assert torch.equal(dst, t)


@pytest.mark.gpu
def test_staged_round_trips_match_plain_copies() -> None:
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    gen = torch.Generator().manual_seed(0)
    tensors = [torch.randn(1024, 2048, generator=gen).to(torch.bfloat16) for _ in range(3)]
    tensors.append(torch.randn(4096, 600, generator=gen).t())  # non-contiguous source (Conv1D layout)
    tensors.append(torch.randint(-8, 8, (4096, 1024), generator=gen, dtype=torch.int8))
    ups = [staging.to_device(t, "cuda") for t in tensors]  # back-to-back uploads reuse one buffer
    for t, u in zip(tensors, ups, strict=True):
        assert u.is_cuda and torch.equal(u.cpu(), t.contiguous())
    for u, t in zip(ups, tensors, strict=True):
        dst = torch.empty(t.shape, dtype=t.dtype)
        staging.copy_to_host_(dst, u * 1)
        assert torch.equal(dst, t)
        assert torch.equal(staging.to_host(u), t)
    staging.release()
    assert staging._up.buf is None and staging._down.buf is None
    assert torch.equal(staging.to_device(tensors[0], "cuda").cpu(), tensors[0])  # usable again
