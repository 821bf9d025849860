"""Static order-0 rANS for one byte plane: frequency tables, payload layout, encode/decode.

Payload of an ``rans`` plane (little endian):
    u8 scale_bits | u8 groups (of 8 lanes) | 32-byte bitmap of the symbols present |
    u16 (freq - 1) for each present symbol, in symbol order | rANS stream (see _native.c).

scale_bits is 12 (the C decoder packs symbol, freq and offset of a slot into one u32); the
rounding of the frequencies to 1/4096 costs under 0.01% on weight planes.

The numpy functions here are the reference the C code is tested against and the fallback
where no compiler exists; both produce and accept identical streams.
"""

from __future__ import annotations

import numpy as np

from presso.codec import native
from presso.compression.errors import CodecError

RANS_L = 1 << 16
DEFAULT_SCALE_BITS = 12
DEFAULT_GROUPS = 8
GROUP = 8


def normalize(counts: np.ndarray, scale_bits: int = DEFAULT_SCALE_BITS) -> np.ndarray:
    """Integer frequencies (uint32[256]) summing to 2**scale_bits, >= 1 for every present symbol,
    chosen greedily to keep the coded size close to the empirical entropy."""
    total = int(counts.sum())
    m = 1 << scale_bits
    present = counts > 0
    if total == 0 or int(present.sum()) > m:
        raise ValueError("cannot normalise an empty histogram")
    c = counts.astype(np.float64)
    f = np.where(present, np.maximum(1.0, np.floor(c * m / total)), 0.0)
    diff = m - int(f.sum())
    with np.errstate(divide="ignore", invalid="ignore"):
        while diff > 0:  # give a unit where it saves the most bits
            gain = np.where(present, c * np.log2((f + 1) / f), -np.inf)
            f[int(np.argmax(gain))] += 1
            diff -= 1
        while diff < 0:  # take a unit where it costs the least bits
            loss = np.where(f > 1, c * np.log2(f / (f - 1)), np.inf)
            f[int(np.argmin(loss))] -= 1
            diff += 1
    return f.astype(np.uint32)


def coded_bits(counts: np.ndarray, freq: np.ndarray, scale_bits: int) -> float:
    """Size in bits of the stream body that ``freq`` gives for data with these counts."""
    nz = counts > 0
    return float((counts[nz] * (scale_bits - np.log2(freq[nz].astype(np.float64)))).sum())


def table_bytes(freq: np.ndarray, scale_bits: int, groups: int) -> bytes:
    present = freq > 0
    bitmap = np.packbits(present, bitorder="little").tobytes()
    freqs = (freq[present].astype(np.int64) - 1).astype("<u2").tobytes()
    return bytes([scale_bits, groups]) + bitmap + freqs


def parse_table(payload: np.ndarray) -> tuple[np.ndarray, int, int, int]:
    """(freq, scale_bits, groups, offset of the stream) from an rans payload."""
    if payload.size < 34:
        raise CodecError("rans plane: table truncated")
    scale_bits, groups = int(payload[0]), int(payload[1])
    if not 1 <= scale_bits <= 12 or not 1 <= groups <= 32:
        raise CodecError(f"rans plane: bad parameters (scale_bits {scale_bits}, groups {groups})")
    present = np.unpackbits(payload[2:34], bitorder="little").astype(bool)
    k = int(present.sum())
    end = 34 + 2 * k
    if k == 0 or payload.size < end:
        raise CodecError("rans plane: table truncated")
    freq = np.zeros(256, np.uint32)
    freq[present] = payload[34:end].view("<u2").astype(np.uint32) + 1
    if int(freq.sum()) != 1 << scale_bits:
        raise CodecError("rans plane: frequencies do not sum to the scale")
    if int(freq.max()) >= 4096:
        raise CodecError("rans plane: frequency out of range")
    return freq, scale_bits, groups, end


def _cum(freq: np.ndarray) -> np.ndarray:
    return (np.cumsum(freq, dtype=np.uint64) - freq).astype(np.uint64)


def _encode_group(sym: np.ndarray, f64: np.ndarray, cum: np.ndarray, scale_bits: int) -> tuple[np.ndarray, np.ndarray]:
    """One group of 8 lanes over ``sym`` (length a multiple of 8 but for the last round)."""
    x = np.full(GROUP, RANS_L, np.uint64)
    pieces: list[np.ndarray] = []
    for t in range(-(-sym.size // GROUP) - 1, -1, -1):
        s = sym[t * GROUP : (t + 1) * GROUP]
        m = s.size
        xs, f = x[:m], f64[s]
        need = xs >= ((RANS_L >> scale_bits) << 16) * f
        pieces.append(xs[need] & np.uint64(0xFFFF))
        xs = np.where(need, xs >> np.uint64(16), xs)
        x[:m] = ((xs // f) << np.uint64(scale_bits)) + xs % f + cum[s]
    words = np.concatenate(pieces[::-1]) if pieces else np.empty(0, np.uint64)
    return x, words


def _group_symbols(n: int, groups: int, g: int) -> np.ndarray:
    """Indices of the symbols of group g, in symbol order."""
    lanes = GROUP * groups
    i = np.arange(n)
    return i[(i % lanes) // GROUP == g]


def encode_reference(sym: np.ndarray, freq: np.ndarray, scale_bits: int, groups: int) -> bytes:
    """numpy rANS encoder (vectorised over the 8 lanes of a group): the C encoder's exact output."""
    f64, cum = freq.astype(np.uint64), _cum(freq)
    states, streams = [], []
    for g in range(groups):
        x, words = _encode_group(sym[_group_symbols(sym.size, groups, g)], f64, cum, scale_bits)
        states.append(x)
        streams.append(words)
    counts = np.array([w.size for w in streams[:-1]], "<u4")
    body = b"".join(w.astype("<u2").tobytes() for w in streams)
    return np.concatenate(states).astype("<u4").tobytes() + counts.tobytes() + body


def _split_streams(stream: np.ndarray, groups: int) -> tuple[np.ndarray, list[np.ndarray]]:
    lanes = GROUP * groups
    head = 4 * lanes + 4 * (groups - 1)
    if stream.size < head or (stream.size - head) % 2:
        raise CodecError("rans plane: stream truncated")
    x = stream[: 4 * lanes].copy().view("<u4").astype(np.uint64)
    counts = stream[4 * lanes : head].copy().view("<u4").astype(np.int64)
    words = stream[head:].copy().view("<u2").astype(np.uint64)
    bounds = np.concatenate([[0], np.cumsum(counts)])
    if bounds[-1] > words.size:
        raise CodecError("rans plane: stream truncated")
    parts = [words[bounds[g] : bounds[g + 1]] for g in range(groups - 1)] + [words[bounds[-1] :]]
    return x, parts


def decode_reference(stream: np.ndarray, freq: np.ndarray, scale_bits: int, groups: int, n: int) -> np.ndarray:
    x_all, parts = _split_streams(stream, groups)
    if (x_all < RANS_L).any():
        raise CodecError("rans plane: bad initial state")
    f64, cum = freq.astype(np.uint64), _cum(freq)
    symtab = np.repeat(np.arange(256, dtype=np.uint8), freq.astype(np.int64))
    mask = np.uint64((1 << scale_bits) - 1)
    out = np.empty(n, np.uint8)
    for g in range(groups):
        idx = _group_symbols(n, groups, g)
        x, words, p = x_all[g * GROUP : (g + 1) * GROUP], parts[g], 0
        for t in range(-(-idx.size // GROUP)):
            ii = idx[t * GROUP : (t + 1) * GROUP]
            m = ii.size
            xs = x[:m]
            slot = xs & mask
            s = symtab[slot]
            xs = f64[s] * (xs >> np.uint64(scale_bits)) + slot - cum[s]
            need = xs < RANS_L
            k = int(need.sum())
            if p + k > words.size:
                raise CodecError("rans plane: stream truncated")
            xs[need] = (xs[need] << np.uint64(16)) | words[p : p + k]
            p += k
            x[:m] = xs
            out[ii] = s
        if p != words.size or (x != RANS_L).any():
            raise CodecError("rans plane: stream does not end cleanly (corrupt)")
    return out


def encode(plane: np.ndarray, counts: np.ndarray, cap: int) -> bytes | None:
    """Code a contiguous plane; None when it would take more than ``cap`` bytes."""
    n, scale_bits, groups = plane.size, DEFAULT_SCALE_BITS, DEFAULT_GROUPS
    freq = normalize(counts, scale_bits)
    if int(freq.max()) >= 4096:  # one symbol only: the caller codes it as const
        return None
    head = table_bytes(freq, scale_bits, groups)
    body_cap = cap - len(head)
    fixed = 4 * GROUP * groups + 4 * (groups - 1)
    if body_cap <= fixed or coded_bits(counts, freq, scale_bits) / 8 + fixed > body_cap:
        return None
    if native.LIB is None:
        body = encode_reference(plane, freq, scale_bits, groups)
        return head + body if len(body) <= body_cap else None
    buf = np.empty(body_cap, np.uint8)
    scratch = np.empty(body_cap, np.uint8)
    written = native.LIB.pz_rans_encode(
        plane.ctypes.data, n, 1, freq.ctypes.data, scale_bits, groups, buf.ctypes.data, body_cap, scratch.ctypes.data
    )
    return head + buf[:written].tobytes() if written else None


def decode(payload: np.ndarray, n: int, out: np.ndarray | None = None) -> np.ndarray:
    """Decode an rans payload to n contiguous bytes (into ``out`` when given); CodecError when corrupt."""
    freq, scale_bits, groups, off = parse_table(payload)
    stream = np.ascontiguousarray(payload[off:])
    if native.LIB is None:
        res = decode_reference(stream, freq, scale_bits, groups, n)
        if out is None:
            return res
        out[:n] = res
        return out
    dst = np.empty(n, np.uint8) if out is None else out
    rc = native.LIB.pz_rans_decode(
        stream.ctypes.data, stream.size, freq.ctypes.data, scale_bits, groups, dst.ctypes.data, n
    )
    if rc != 0:
        raise CodecError("rans plane: corrupt or truncated stream")
    return dst
