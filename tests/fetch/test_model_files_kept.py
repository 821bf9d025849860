"""The fetch allowlist keeps every tokenizer, chat-template, processor and generation file a model brings."""

from __future__ import annotations

import fnmatch

import pytest

from presso.fetch.hf import ALLOW_PATTERNS
from presso.fetch.model_files import classify, select_model_files

KEPT = ["chat_template.jinja", "chat_template.json", "tokenizer.json", "tokenizer_config.json", "tokenizer.model",
        "special_tokens_map.json", "added_tokens.json", "vocab.json", "vocab.txt", "merges.txt", "spiece.model",
        "preprocessor_config.json", "processor_config.json", "generation_config.json", "qwen.tiktoken"]


@pytest.mark.parametrize("name", KEPT)
def test_kept_locally_and_from_the_hub(name: str) -> None:
    assert classify(name) in ("tokenizer", "config")
    assert any(fnmatch.fnmatch(name, p) for p in ALLOW_PATTERNS)


@pytest.mark.parametrize("name", ["tokenizer.bin", "tokenizer.pkl", "tokenizer.pt"])
def test_a_pickle_named_like_a_tokenizer_is_still_a_pickle(name: str) -> None:
    assert classify(name) == "pickle"
    assert not any(fnmatch.fnmatch(name, p) for p in ALLOW_PATTERNS)


def test_selection_keeps_them_beside_the_weights() -> None:
    entries = [("model.safetensors", 10), ("config.json", 1), *((n, 1) for n in KEPT), ("README.md", 1)]
    sel = select_model_files(entries, max_files=64)
    assert {n for n, _ in sel.files} == {"model.safetensors", "config.json", *KEPT}
    assert sel.skipped == ["README.md"]
