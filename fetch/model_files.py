"""Which files a model may bring, and checks on their contents (names, safetensors headers, configs)."""

from __future__ import annotations

import fnmatch
import json
import logging
import math
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from presso.fetch.errors import (
    FetchError,
    ModelFileCorrupt,
    NotFoundError,
    TooLarge,
    TransientFetchError,
    UnsafeModelFile,
)

log = logging.getLogger(__name__)

WEIGHT_SUFFIXES = (".safetensors", ".gguf")
INDEX_SUFFIX = ".safetensors.index.json"
CONFIG_FILES = frozenset({"config.json", "generation_config.json"})
# Tokenizer, chat template and processor files, as fnmatch patterns of lower-case names (also the Hub's
# allow_patterns): every one a model comes with is kept into its artifact (compression.io.artifact.KEPT_FILES).
TOKENIZER_FILES = frozenset(
    {
        "tokenizer*.json", "tokenizer.model", "tokenizer*.txt", "*.jinja", "chat_template.json",
        "special_tokens_map.json", "added_tokens.json",
        "vocab.json", "vocab.txt", "merges.txt", "spiece.model", "sentencepiece.bpe.model", "*.tiktoken",
        "preprocessor_config.json", "processor_config.json", "video_preprocessor_config.json",
    }
)  # fmt: skip
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle", ".joblib")
# Config keys that make transformers import code shipped with the model (with trust_remote_code).
CODE_KEYS = frozenset({"auto_map", "custom_pipelines", "trust_remote_code"})
SANITIZED_FILES = ("config.json", "tokenizer_config.json", "processor_config.json", "preprocessor_config.json",
                   "video_preprocessor_config.json")
MAX_HEADER_BYTES = 100 * 2**20
DTYPE_BITS = {
    "BOOL": 8, "U8": 8, "I8": 8, "F8_E4M3": 8, "F8_E5M2": 8, "F8_E8M0": 8, "F4": 4, "F6_E2M3": 6,
    "F6_E3M2": 6, "I16": 16, "U16": 16, "F16": 16, "BF16": 16, "I32": 32, "U32": 32, "F32": 32,
    "I64": 64, "U64": 64, "F64": 64, "C64": 64,
}  # fmt: skip


def check_name(name: str) -> str:
    """Refuse names that could escape the job directory; return the name unchanged when safe."""
    bad = (
        not name
        or len(name) > 1024
        or "\\" in name
        or name.startswith("/")
        or any(ord(c) < 32 or ord(c) == 127 for c in name)
        or (len(name) > 1 and name[1] == ":")
    )
    if bad or any(part in ("", ".", "..") or len(part) > 255 for part in name.split("/")):
        raise UnsafeModelFile(f"refused file name {name!r}: absolute, traversal or control characters")
    return name


def classify(name: str) -> str:
    """'weights', 'index', 'config', 'tokenizer', 'pickle' or 'other' (skipped) for a checked name."""
    base = name.rsplit("/", 1)[-1].lower()
    if base.endswith(INDEX_SUFFIX):
        return "index"
    if base.endswith(WEIGHT_SUFFIXES):
        return "weights"
    if base.endswith(PICKLE_SUFFIXES):
        return "pickle"
    if base in CONFIG_FILES:
        return "config"
    if any(fnmatch.fnmatchcase(base, pattern) for pattern in TOKENIZER_FILES):
        return "tokenizer"
    return "other"


@dataclass
class Selection:
    files: list[tuple[str, int | None]] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


def select_model_files(
    entries: Iterable[tuple[str, int | None]], *, max_files: int, peek: Peek | None = None
) -> Selection:
    """Keep the safe files of a model listing (relative names); refuse hostile or pickle-only ones.

    ``peek(name)`` (the first bytes of a file), when given, lets the refusal of a pickle-only listing say
    what the file actually is (:func:`refuse_checkpoint`)."""
    selection, pickles = Selection(), []
    for name, size in entries:
        kind = classify(check_name(name))
        if "/" in name or kind == "other":
            selection.skipped.append(name)
        elif kind == "pickle":
            pickles.append(name)
        else:
            selection.files.append((name, size))
    if not any(classify(n) == "weights" for n, _ in selection.files):
        if pickles:
            raise refuse_checkpoint(pickles[0], peek)
        raise NotFoundError("no model weights found: expected *.safetensors or *.gguf files")
    if pickles:
        log.warning("skipping pickle files next to safe weights: %s", pickles)
        selection.skipped.extend(pickles)
    if len(selection.files) > max_files:
        raise TooLarge(f"model has {len(selection.files)} files, over the limit of {max_files}")
    if selection.skipped:
        log.info("skipping files that a model does not need: %s", selection.skipped[:20])
    return selection


def check_single_name(name: str, peek: Peek | None = None) -> str:
    """A URI naming one file must name a .safetensors or .gguf file (``peek`` as for select_model_files)."""
    kind = classify(check_name(name))
    if kind == "pickle":
        raise refuse_checkpoint(name, peek)
    if kind != "weights":
        from presso.fetch.errors import InvalidURI

        raise InvalidURI(f"{name!r} is not a model: name a .safetensors or .gguf file, or a directory")
    return name


# -- what a pickle-suffixed file really is ------------------------------------------------------------

Peek = Callable[[str], bytes]
PEEK_BYTES = 64


def describe_checkpoint(head: bytes) -> tuple[bool, str]:
    """(is a pickle, what it is) from a file's first bytes, never unpickling anything."""
    if head.startswith(b"PK\x03\x04"):
        return True, "a zip archive holding a pickle (the PyTorch checkpoint format)"
    if head[:1] == b"\x80":  # PROTO, the first opcode of every pickle since protocol 2
        protocol = f" (protocol {head[1]})" if len(head) > 1 else ""
        return True, f"a pickle stream{protocol} (a legacy PyTorch checkpoint)"
    if not head:
        return False, "an empty file"
    if head.startswith(b"GGUF"):
        return False, "a GGUF file under another name (name it *.gguf)"
    if len(head) > 9 and head[8:9] == b"{" and 2 <= struct.unpack("<Q", head[:8])[0] <= MAX_HEADER_BYTES:
        return False, "a safetensors file under another name (name it *.safetensors)"
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as exc:  # a multi-byte character cut at the end of the prefix is still text
        text = head[: exc.start].decode("utf-8") if exc.start >= len(head) - 3 else ""
    if text and all(c.isprintable() or c in "\t\r\n" for c in text):
        shown = " ".join(text.split())[:40]
        return False, f"it looks like text: {shown!r}"
    return True, "binary data of no format Presso reads, possibly a pickle"  # when unsure: refused as unsafe


def refuse_checkpoint(name: str, peek: Peek | None = None) -> FetchError:
    """The error for a pickle-suffixed file that would be the model's only weights, saying what it is."""
    head = None
    if peek is not None:
        try:
            head = peek(name)[:PEEK_BYTES]
        except (FetchError, TransientFetchError, OSError) as exc:  # the refusal stands; only the detail is lost
            log.info("could not read the start of %s to describe it: %s", name, exc)
    if head is None:
        return UnsafeModelFile(
            f"refused pickle checkpoint {name!r}: Presso loads safetensors or GGUF weights only "
            "(convert the checkpoint to .safetensors)"
        )
    pickle, what = describe_checkpoint(head)
    if pickle:
        return UnsafeModelFile(
            f"refused {name!r}: it is {what}, which loading would unpickle; Presso loads safetensors or GGUF "
            "weights only (convert the checkpoint to .safetensors)"
        )
    return ModelFileCorrupt(
        f"{name} is not a PyTorch checkpoint ({what}), and the model has no safetensors or GGUF weights"
    )


# -- safetensors --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SafetensorsHeader:
    header_len: int
    params: int
    data_end: int  # largest end offset of any tensor, relative to the data section


def header_length(prefix: bytes, *, max_header_bytes: int = MAX_HEADER_BYTES) -> int:
    if len(prefix) < 8:
        raise ModelFileCorrupt("safetensors file is truncated (shorter than its 8-byte header length)")
    (length,) = struct.unpack("<Q", prefix[:8])
    if length < 2 or length > max_header_bytes:
        raise ModelFileCorrupt(f"safetensors header length {length} is implausible (cap {max_header_bytes})")
    return int(length)


def parse_header(prefix: bytes, *, max_header_bytes: int = MAX_HEADER_BYTES) -> SafetensorsHeader:
    """Parse the header at the start of ``prefix`` (8-byte length + JSON); count declared parameters."""
    length = header_length(prefix, max_header_bytes=max_header_bytes)
    raw = prefix[8 : 8 + length]
    if len(raw) < length:
        raise ModelFileCorrupt("safetensors file is truncated inside its header")
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, ValueError) as exc:
        raise ModelFileCorrupt("safetensors header is not valid JSON") from exc
    if not isinstance(header, dict):
        raise ModelFileCorrupt("safetensors header is not a JSON object")
    params, data_end = 0, 0
    for tensor, info in header.items():
        if tensor == "__metadata__":
            continue
        numel, end = _check_tensor(tensor, info)
        params += numel
        data_end = max(data_end, end)
    return SafetensorsHeader(header_len=length, params=params, data_end=data_end)


def _int_list(value: Any) -> list[int] | None:
    if isinstance(value, list) and all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value):
        return value
    return None


def _check_tensor(tensor: str, info: Any) -> tuple[int, int]:
    if not isinstance(info, dict):
        raise ModelFileCorrupt(f"safetensors entry {tensor!r} is not an object")
    dtype, shape, offsets = (
        info.get("dtype"),
        _int_list(info.get("shape")),
        _int_list(info.get("data_offsets")),
    )
    if dtype not in DTYPE_BITS:
        raise ModelFileCorrupt(f"tensor {tensor!r} has unknown dtype {dtype!r}")
    if shape is None:
        raise ModelFileCorrupt(f"tensor {tensor!r} has an invalid shape")
    if offsets is None or len(offsets) != 2 or offsets[0] > offsets[1]:
        raise ModelFileCorrupt(f"tensor {tensor!r} has invalid data offsets")
    numel = math.prod(shape)
    if offsets[1] - offsets[0] != (numel * DTYPE_BITS[dtype] + 7) // 8:
        raise ModelFileCorrupt(f"tensor {tensor!r}: data offsets do not match its shape and dtype")
    return numel, offsets[1]


def check_data_size(name: str, header: SafetensorsHeader, file_size: int | None) -> None:
    if file_size is None:
        return
    if file_size < 8 + header.header_len + header.data_end:
        raise ModelFileCorrupt(f"{name} is truncated: its header declares more data than the file holds")


def safetensors_header_params(source: Path | bytes | bytearray, *, max_header_bytes: int = MAX_HEADER_BYTES) -> int:
    """Declared parameter count of a safetensors file, reading only its header.

    ``source`` is a path, or the file's bytes (whole file: offsets are checked against its length).
    Raises ``ModelFileCorrupt`` (code ``model_load_error``) for a truncated or malformed header.
    """
    if isinstance(source, bytes | bytearray):
        header = parse_header(bytes(source), max_header_bytes=max_header_bytes)
        check_data_size("safetensors data", header, len(source))
        return header.params
    path = Path(source)
    with path.open("rb") as fh:
        length = header_length(fh.read(8), max_header_bytes=max_header_bytes)
        header = parse_header(struct.pack("<Q", length) + fh.read(length), max_header_bytes=max_header_bytes)
    check_data_size(path.name, header, path.stat().st_size)
    return header.params


# -- after download -----------------------------------------------------------------------------------


def strip_code_keys(value: Any, path: str = "") -> list[str]:
    """Remove code-pointing keys from a JSON value in place, at any depth; return the removed paths."""
    removed: list[str] = []
    if isinstance(value, dict):
        for key in list(value):
            if key in CODE_KEYS:
                del value[key]
                removed.append(f"{path}{key}")
            else:
                removed += strip_code_keys(value[key], f"{path}{key}.")
    elif isinstance(value, list):
        for i, item in enumerate(value):
            removed += strip_code_keys(item, f"{path}{i}.")
    return removed


def _load_json(path: Path, max_bytes: int) -> Any:
    if path.stat().st_size > max_bytes:
        raise TooLarge(f"{path.name} is over the {max_bytes}-byte limit for JSON files")
    try:
        return json.loads(path.read_bytes())
    except (UnicodeDecodeError, ValueError) as exc:
        raise ModelFileCorrupt(f"{path.name} is not valid JSON") from exc


def validate_model_dir(root: Path, names: Iterable[str], *, max_json_bytes: int) -> list[str]:
    """Check fetched files and sanitize configs in place; return the removed config keys."""
    names = list(names)
    removed: list[str] = []
    for name in names:
        path = root / name
        kind = classify(name)
        if name.lower().endswith(".safetensors"):
            safetensors_header_params(path)
        elif name.lower().endswith(".gguf"):
            with path.open("rb") as fh:
                if fh.read(4) != b"GGUF":
                    raise ModelFileCorrupt(f"{name} is not a GGUF file (bad magic)")
        elif kind == "index":
            _check_index(path, names, max_json_bytes)
        elif name in SANITIZED_FILES:
            data = _load_json(path, max_json_bytes)
            if not isinstance(data, dict):
                raise ModelFileCorrupt(f"{name} is not a JSON object")
            dropped = strip_code_keys(data)
            if dropped:
                log.warning("removed code-pointing keys from %s: %s", name, dropped)
                path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
                removed += [f"{name}:{key}" for key in dropped]
    return removed


def _check_index(path: Path, names: list[str], max_json_bytes: int) -> None:
    data = _load_json(path, max_json_bytes)
    weight_map = data.get("weight_map") if isinstance(data, dict) else None
    if not isinstance(weight_map, dict):
        raise ModelFileCorrupt(f"{path.name} has no weight_map")
    for shard in set(weight_map.values()):
        if not isinstance(shard, str) or classify(check_name(shard)) != "weights" or shard not in names:
            raise ModelFileCorrupt(f"{path.name} names shard {shard!r}, which is not among the model's files")
