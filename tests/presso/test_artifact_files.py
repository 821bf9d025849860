"""What an artifact keeps besides weights: the input model's tokenizer/chat-template/processor/generation files
(through the fetcher and the writer), and presso.json + report.json through a lossless `presso download`."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
import torch
from svc_helpers import write_tiny_llama

from presso.codec.files import sha256_file
from presso.compression.job import run_local
from presso.compression.recipe import parse_recipe
from presso.compression.spec import EvaluationSpec, LocalJobSpec

TEMPLATE = "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}" \
           "{% if add_generation_prompt %}<|assistant|>{% endif %}"
PROCESSOR = {"processor_class": "LlamaTokenizerFast", "auto_map": {"AutoProcessor": "evil.Processor"}}
RTN = {"steps": [{"method": "rtn", "bits": 4, "group_size": 32}]}


@pytest.fixture(scope="module")
def instruct_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny 'instruct' model: a chat template file, a processor config and a pickle beside its weights."""
    src = write_tiny_llama(tmp_path_factory.mktemp("instruct") / "model")
    (src / "chat_template.jinja").write_text(TEMPLATE)
    (src / "processor_config.json").write_text(json.dumps(PROCESSOR))
    (src / "tokenizer.bin").write_bytes(b"\x80\x04pickle")  # a pickle never travels, whatever its name
    return src


def _spec(model_dir: Path, out: Path, recipe: dict, **kw: object) -> LocalJobSpec:
    return LocalJobSpec(model_uri=str(model_dir), out_dir=out, recipe=parse_recipe(recipe),
                        evaluation=EvaluationSpec(enabled=False), device="cpu", **kw)


def test_fetch_then_write_keeps_the_chat_template(instruct_model: Path, tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    from presso.fetch.api import FetchLimits, fetch_model_report

    fetched = fetch_model_report(f"file://{instruct_model}", tmp_path / "job", FetchLimits(
        allowed_file_roots=(instruct_model.parent,)))
    names = {p.name for p in fetched.path.iterdir()}
    assert {"chat_template.jinja", "processor_config.json", "generation_config.json", "tokenizer.json",
            "tokenizer_config.json"} <= names
    assert "tokenizer.bin" not in names and "tokenizer.bin" in fetched.skipped
    assert "auto_map" not in (fetched.path / "processor_config.json").read_text()  # sanitized like config.json

    run_local(_spec(fetched.path, tmp_path / "out", RTN))
    out = tmp_path / "out"
    for name in ("chat_template.jinja", "tokenizer.json", "tokenizer_config.json", "processor_config.json",
                 "generation_config.json"):
        assert sha256_file(out / name) == sha256_file(fetched.path / name), name  # byte for byte
    messages = [{"role": "user", "content": "hi"}]
    text = AutoTokenizer.from_pretrained(str(out)).apply_chat_template(messages, tokenize=False,
                                                                        add_generation_prompt=True)
    assert text == "<|user|>hi\n<|assistant|>"


def test_writer_without_source_files_saves_the_tokenizer(instruct_model: Path, tmp_path: Path) -> None:
    """A model loaded from elsewhere (no source_dir): the in-memory tokenizer is saved, template included."""
    from transformers import AutoTokenizer

    from presso.compression.io.artifact import write_model
    from presso.compression.io.loading import load_model

    lm = load_model(instruct_model)
    write_model(lm.model, lm.tokenizer, tmp_path / "a")
    tok = AutoTokenizer.from_pretrained(str(tmp_path / "a"))
    assert tok.apply_chat_template([{"role": "user", "content": "x"}], tokenize=False) == "<|user|>x\n"


def _serve(artifact: Path) -> httpx.MockTransport:
    """The two API routes `presso download` uses, serving ``artifact``'s files as the manifest lists them."""
    files = sorted(p for p in artifact.rglob("*") if p.is_file())
    manifest = {"files": [{"path": p.relative_to(artifact).as_posix(), "size": p.stat().st_size,
                           "sha256": sha256_file(p), "url": f"/files/{p.relative_to(artifact).as_posix()}"}
                          for p in files]}

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/jobs/j1/artifact":
            return httpx.Response(200, json=manifest)
        if request.url.path.startswith("/files/"):
            return httpx.Response(200, content=(artifact / request.url.path[len("/files/"):]).read_bytes())
        return httpx.Response(404, json={"error": {"code": "not_found", "message": request.url.path}})

    return httpx.MockTransport(handler)


@pytest.mark.parametrize("lossless", ["output.encoding", "recipe step"])
def test_download_of_a_lossless_artifact_keeps_presso_and_report_json(instruct_model: Path, tmp_path: Path,
                                                                      lossless: str) -> None:
    from presso.client import PressoClient
    from presso.load import load

    if lossless == "recipe step":
        spec = _spec(instruct_model, tmp_path / "art", {"steps": [*RTN["steps"], {"method": "lossless"}]})
    else:
        spec = _spec(instruct_model, tmp_path / "art", RTN, output={"encoding": "lossless"})
    result = run_local(spec)
    art = tmp_path / "art"
    assert (art / "pack.json").is_file() and (art / "model.safetensors.pzst").is_file()
    assert not (art / "model.safetensors").exists()
    record = json.loads((art / "presso.json").read_text())
    assert record["encoding"] == "lossless" and result.metrics["lossless"]["files"] == 1
    assert record["loaders"] == ["presso.load", "transformers", "peft", "vllm"]  # of the decoded files

    client = PressoClient("http://presso.test", "key")
    client.http = httpx.Client(base_url=client.server, transport=_serve(art))
    got = client.download("j1", tmp_path / "dl")
    names = {p.relative_to(tmp_path / "dl").as_posix() for p in got}
    assert {"presso.json", "report.json", "model.safetensors", "config.json", "chat_template.jinja"} <= names
    assert not any(n.endswith(".pzst") for n in names) and "pack.json" not in names
    assert json.loads((tmp_path / "dl" / "presso.json").read_text()) == record
    ids = torch.tensor([[1, 2, 3, 4]])
    with torch.no_grad():
        torch.testing.assert_close(load(tmp_path / "dl")(ids).logits, load(art)(ids).logits, rtol=0, atol=0)
