"""File-name rules, safetensors header checks and config sanitizing (no network)."""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import pytest

from presso.fetch.api import (
    ModelFileCorrupt,
    NotFoundError,
    TooLarge,
    UnsafeModelFile,
    safetensors_header_params,
)
from presso.fetch.model_files import check_name, select_model_files, strip_code_keys, validate_model_dir


def test_header_params_counts_declared_parameters(h: Any, tmp_path: Path) -> None:
    data = h.make_safetensors({"a": ("F32", [3, 4]), "b": ("BF16", [5])}, metadata={"format": "pt"})
    assert safetensors_header_params(data) == 17
    path = tmp_path / "m.safetensors"
    path.write_bytes(data)
    assert safetensors_header_params(path) == 17


def test_builder_matches_the_safetensors_library(h: Any, tmp_path: Path) -> None:
    from safetensors.numpy import load

    tensors = load(h.make_safetensors({"a": ("F32", [3, 4]), "b": ("F16", [5])}))
    assert tensors["a"].shape == (3, 4) and tensors["b"].shape == (5,)


def test_header_declaring_1e13_params_is_counted_from_header_alone(h: Any) -> None:
    from presso.fetch.model_files import parse_header

    assert parse_header(h.huge_header()).params == 10**13


@pytest.mark.parametrize(
    "mutate",
    [
        lambda d: d[:5],  # shorter than the length prefix
        lambda d: d[:20],  # cut inside the header
        lambda d: d[:-3],  # cut inside the data
        lambda d: struct.pack("<Q", 2**40) + d[8:],  # absurd header length
        lambda d: d[:8] + b"[" + d[9:],  # not JSON
    ],
)
def test_truncated_or_corrupt_safetensors(h: Any, mutate: Any) -> None:
    data = h.make_safetensors({"a": ("F32", [8, 8])})
    with pytest.raises(ModelFileCorrupt) as info:
        safetensors_header_params(mutate(data))
    assert info.value.code == "model_load_error"


@pytest.mark.parametrize(
    "entry",
    [
        {"dtype": "F99", "shape": [2], "data_offsets": [0, 8]},
        {"dtype": "F32", "shape": [-2], "data_offsets": [0, 8]},
        {"dtype": "F32", "shape": [2], "data_offsets": [8, 0]},
        {"dtype": "F32", "shape": [2], "data_offsets": [0, 4]},
        {"dtype": "F32", "shape": "2", "data_offsets": [0, 8]},
    ],
)
def test_insane_header_entries(entry: dict[str, Any]) -> None:
    raw = json.dumps({"t": entry}).encode()
    with pytest.raises(ModelFileCorrupt):
        safetensors_header_params(struct.pack("<Q", len(raw)) + raw + b"\0" * 8)


@pytest.mark.parametrize(
    "name",
    [
        "../model.safetensors",
        "a/../../b",
        "/etc/passwd",
        "a\\b.json",
        "x\x00.json",
        "C:evil",
        "",
        ".",
        "a//b",
    ],
)
def test_traversal_names_refused(name: str) -> None:
    with pytest.raises(UnsafeModelFile) as info:
        check_name(name)
    assert info.value.code == "unsafe_model"


def test_selection_keeps_safe_files_and_skips_the_rest() -> None:
    listing = [
        ("config.json", 10),
        ("model-00001-of-00002.safetensors", 100),
        ("model.safetensors.index.json", 5),
        ("pytorch_model.bin", 100),
        ("modeling_evil.py", 3),
        ("README.md", 3),
        ("tokenizer.model", 3),
        ("onnx/model.safetensors", 3),
    ]
    sel = select_model_files(listing, max_files=10)
    kept = {n for n, _ in sel.files}
    assert kept == {n for n, _ in listing[:3]} | {"tokenizer.model"}
    assert "pytorch_model.bin" in sel.skipped and "modeling_evil.py" in sel.skipped


@pytest.mark.parametrize("weights", ["pytorch_model.bin", "model.pt", "model.pth", "model.ckpt", "weights.pkl"])
def test_pickle_only_model_refused(weights: str) -> None:
    with pytest.raises(UnsafeModelFile) as info:
        select_model_files([("config.json", 1), (weights, 10)], max_files=10)
    assert "safetensors" in info.value.message and info.value.code == "unsafe_model"


def test_no_weights_and_too_many_files() -> None:
    with pytest.raises(NotFoundError):
        select_model_files([("config.json", 1)], max_files=10)
    many = [(f"model-{i:05d}.safetensors", 1) for i in range(11)]
    with pytest.raises(TooLarge):
        select_model_files(many, max_files=10)


def test_code_keys_stripped_at_any_depth(h: Any, tmp_path: Path) -> None:
    for name, data in h.model_files().items():
        (tmp_path / name).write_bytes(data)
    removed = validate_model_dir(tmp_path, list(h.model_files()), max_json_bytes=1 << 20)
    assert set(removed) == {
        "config.json:auto_map",
        "config.json:text_config.custom_pipelines",
        "tokenizer_config.json:auto_map",
    }
    config = json.loads((tmp_path / "config.json").read_text())
    assert "auto_map" not in config and "custom_pipelines" not in config["text_config"]
    assert config["hidden_size"] == 8
    assert "auto_map" not in json.loads((tmp_path / "tokenizer_config.json").read_text())


def test_strip_code_keys_leaves_clean_config_alone() -> None:
    value = {"a": [{"b": 1}], "c": {"d": 2}}
    assert strip_code_keys(value) == [] and value == {"a": [{"b": 1}], "c": {"d": 2}}


def test_bad_config_and_index(h: Any, tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("[1, 2]")
    with pytest.raises(ModelFileCorrupt):
        validate_model_dir(tmp_path, ["config.json"], max_json_bytes=1 << 20)
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"w": "../../x.safetensors"}}))
    with pytest.raises(UnsafeModelFile):
        validate_model_dir(tmp_path, ["model.safetensors.index.json"], max_json_bytes=1 << 20)
    (tmp_path / "model.gguf").write_bytes(b"NOPE" + b"\0" * 16)
    with pytest.raises(ModelFileCorrupt):
        validate_model_dir(tmp_path, ["model.gguf"], max_json_bytes=1 << 20)


# -- a pickle-suffixed file that is the only "weights": say what it is (issue 18) -----------------------


@pytest.mark.parametrize(
    ("head", "pickle", "what"),
    [
        (b"PK\x03\x04\x14\x00\x00\x00\x08\x00archive/data.pkl", True, "zip archive holding a pickle"),
        (b"\x80\x02\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19.", True, "pickle stream (protocol 2)"),
        (b"\x80\x04\x95\x10\x00", True, "pickle stream (protocol 4)"),
        (b"\x00\x01\x02\xff\xfe binary", True, "possibly a pickle"),
        (b"version https://git-lfs.github.com/spec/v1\noid sha256:abc\n", False, "it looks like text: 'version https"),
        ("héllo wörld, not a model".encode(), False, "it looks like text"),
        (b"GGUF\x03\x00\x00\x00", False, "a GGUF file under another name"),
        (struct.pack("<Q", 60) + b'{"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}', False,
         "a safetensors file under another name"),
        (b"", False, "an empty file"),
    ],
)
def test_describe_checkpoint(head: bytes, pickle: bool, what: str) -> None:
    from presso.fetch.model_files import describe_checkpoint

    is_pickle, description = describe_checkpoint(head)
    assert is_pickle is pickle and what in description, description


def test_refusal_says_what_was_found() -> None:
    from presso.fetch.model_files import refuse_checkpoint

    text = refuse_checkpoint("model.bin", lambda name: b"this is not a checkpoint\n")
    assert isinstance(text, ModelFileCorrupt) and text.code == "model_load_error"
    assert text.message.startswith("model.bin is not a PyTorch checkpoint (it looks like text: 'this is not a")
    real = refuse_checkpoint("pytorch_model.bin", lambda name: b"PK\x03\x04rest")
    assert isinstance(real, UnsafeModelFile) and real.code == "unsafe_model"
    assert "it is a zip archive holding a pickle (the PyTorch checkpoint format)" in real.message

    def unreadable(name: str) -> bytes:
        raise OSError("gone")

    unknown = refuse_checkpoint("x.pt", unreadable)  # no content: refused by its name, as before
    assert isinstance(unknown, UnsafeModelFile) and "refused pickle checkpoint 'x.pt'" in unknown.message
