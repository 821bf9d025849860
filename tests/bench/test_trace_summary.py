"""The timeline analysis of bench/trace_w4a16.py (its numbers are quoted in docs/kernels.md and BENCHMARKS
§3b) on a synthetic trace whose answers are known, and its plot."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def trace():
    spec = importlib.util.spec_from_file_location("trace_w4a16", REPO / "bench" / "trace_w4a16.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _synthetic(launches: int = 6, blocks: int = 4) -> np.ndarray:
    """Launch c, block b (on SM b % 2): enters at 10c - 1 + 0.5b µs, requests 0.2 µs later, is released
    at 10c + 3, has its activations 0.5 µs later, ends its loop at 10c + 8 and exits at 10c + 9 + 0.1b."""
    rows = []
    for c in range(launches):
        for b in range(blocks):
            entry = 10 * c - 1 + 0.5 * b + 1  # + 1: no negative times
            release = 10 * c + 3 + 1
            stamps = [entry, entry + 0.2, release, release + 0.5, release + 5, release + 6 + 0.1 * b]
            rows.append([1000 + c, b | (b % 2) << 32, *(round(t * 1000) for t in stamps), 12345])
    rec = np.array(rows, dtype=np.uint64)
    return rec[np.random.default_rng(0).permutation(len(rec))]  # records arrive in any order


def test_summary_of_a_known_timeline(trace):
    s = trace.summarize(_synthetic())
    assert s["launches"] == 6
    assert s["period_us"] == pytest.approx(10.0)
    assert s["release_lag_us"] == pytest.approx(10 + 3 - (9 + 0.3))  # next release - this launch's last exit
    assert s["started_before_prev_end"] == pytest.approx(0.25)  # block 0 enters at +9.0, before +9.3
    assert s["after_release_us"] == pytest.approx(6.3)
    assert s["block_us"]["entry->issued"] == pytest.approx(0.2)
    assert s["block_us"]["issued->waited"] == pytest.approx(np.median([3.8, 3.3, 2.8, 2.3]))
    assert s["block_us"]["waited->staged"] == pytest.approx(0.5)
    assert s["block_us"]["staged->loop"] == pytest.approx(4.5)
    assert s["blocks_per_sm"] == pytest.approx(2.0)
    assert s["timer_step_ns"] == 500


def test_timeline_plot_is_written(trace, tmp_path):
    out = tmp_path / "t.png"
    trace.plot_timeline(_synthetic(), out, "synthetic", sms=2, launches=3)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
