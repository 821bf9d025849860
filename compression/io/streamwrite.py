"""The streamed artifact: read each block from the shards, write it when compressed, release it.

``StreamedArtifact`` is the ``BlockStream`` (compression.core.sequential) of a streamed job. ``load(i)`` reads
block ``i`` from the input (a compression.io.lazy.TensorSource: the shards, or a GGUF file); ``done(i)``
exports the compressed block as the writer would (``PackQuantized``'s tensors, or plain weights for
``output.format = "dense"``), appends its tensors to the current output shard
(compression.io.shards.ShardWriter) in the order ``compression.io.artifact.write_model`` stores them, and puts
the block back on the meta device. What lies outside the block list is written before the first block (what
precedes it in the model, e.g. the embeddings) and at ``finish`` (the final norm, the head). ``finish``
returns config.json's content with the ``quantization_config`` collected block by block: the artifact is the
one the in-memory writer produces (tests/compression/test_streaming.py compares the bytes).

``on_shard(path)`` is called with each output shard once it is closed (complete, never written again): shards
closed while blocks are still being compressed, and the last one at ``finish``. The file is renamed afterwards
(its final name needs the shard count, and the directory is published at the end), so a caller that reads it
later (the worker's background upload) hard-links or copies it inside the callback.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from presso.compression.core.layout import Layout, quantized_of
from presso.compression.eval.size import linear_bits, stats_dict
from presso.compression.io import artifact
from presso.compression.io.formats import DENSE, WriteOptions
from presso.compression.io.formats.quantized import PackQuantized, _scheme_key, pack_quantized_config
from presso.compression.io.lazy import (
    TensorSource,
    materialize_,
    missing_parameters,
    read_like,
    release_,
    trim_host_memory,
)
from presso.compression.io.resume import Checkpoint
from presso.compression.io.shards import ShardWriter

log = logging.getLogger(__name__)
STREAM_FORMATS = ("compressed", "dense")


class StreamedArtifact:
    def __init__(self, model: nn.Module, layout: Layout, reader: TensorSource, out_dir: Path,
                 options: WriteOptions, shard_bytes: int | None = None, checkpoint: Checkpoint | None = None,
                 on_shard: Callable[[Path], None] | None = None) -> None:
        if options.format not in STREAM_FORMATS:
            raise ValueError(f"output format {options.format!r} is not streamed")
        self.model, self.layout, self.reader, self.options = model, layout, reader, options
        self.writer = ShardWriter(out_dir, shard_bytes or artifact.SHARD_BYTES)
        self.on_shard = on_shard
        self.announced = 0  # shards handed to on_shard
        self.groups: dict[tuple[int, int, bool], list[str]] = defaultdict(list)
        self.bits = (0, 0.0, 0)
        self.done_blocks: list[int] = []
        self.checkpoint = checkpoint
        head, tail = self._outside()
        for name, t in head:
            self._add(name, t)
        # what follows the blocks (final norm, an untied head) is read again from the shards at finish
        self.tail = [(name, torch.empty_like(t, device="meta")) for name, t in tail]

    def _add(self, name: str, t: torch.Tensor) -> None:
        self.writer.add(name, t)
        self._announce(self.writer.shards)

    def _announce(self, shards: list[Path]) -> None:
        """Hand the shards closed since the last call to ``on_shard`` (``shards``: the writer's, in order)."""
        while self.on_shard is not None and self.announced < len(shards):
            self.on_shard(shards[self.announced])
            self.announced += 1

    def _outside(self) -> tuple[list[tuple[str, torch.Tensor]], list[tuple[str, torch.Tensor]]]:
        """The tensors outside the block list, as compression.io.artifact keeps them (ties dropped), split
        into those before the blocks in the model's order and those after."""
        prefix = self.layout.prefix + "."
        tie = getattr(self.model.config, "tie_word_embeddings", False)
        head: list[tuple[str, torch.Tensor]] = []
        tail: list[tuple[str, torch.Tensor]] = []
        seen: set[int] = set()
        after = False
        for name, t in self.model.state_dict(keep_vars=False).items():
            if name.startswith(prefix):
                after = True
                continue
            key = t.data_ptr() if t.numel() else id(t)
            if key in seen and tie:
                continue
            seen.add(key)
            (tail if after else head).append((name, t.detach()))
        return head, tail

    def captured(self) -> None:
        """Release everything outside the block list (embeddings, head): written already or read again at
        finish, and not needed by the block loop once block 0's inputs are captured."""
        blocks = {id(m) for m in self.layout.blocks.modules()}
        for sub in self.model.modules():
            if id(sub) not in blocks:
                for leaf, p in list(sub._parameters.items()):
                    if p is not None and p.device.type != "meta":
                        sub._parameters[leaf] = nn.Parameter(torch.empty_like(p, device="meta"), requires_grad=False)
        trim_host_memory()

    def load(self, i: int, block: nn.Module) -> None:
        materialize_(block, self.layout.block_name(i), self.reader)
        missing = missing_parameters(block)
        if missing:
            from presso.compression.errors import ModelLoadError

            raise ModelLoadError(f"block {i}: weights missing from the checkpoint: {', '.join(missing[:5])}")

    def resume(self) -> tuple[int, list[torch.Tensor] | None, list[dict[str, Any]]]:
        """Replay the checkpointed blocks into the writer (same tensors, same order: same shards)."""
        ck = self.checkpoint
        if ck is None or ck.done == 0:
            return 0, None, []
        if ck.done > len(self.layout.blocks):
            raise ValueError(f"checkpoint holds {ck.done} blocks, the model has {len(self.layout.blocks)}")
        results = []
        for i in range(ck.done):
            for name, t in ck.block_tensors(i):
                self._add(name, t)
            record = ck.block_record(i)
            self._account(i, [(tuple(k), n) for k, n in record["groups"]], record["bits"])
            results.append(record["result"])
        log.info("resuming at block %d/%d from %s", ck.done, len(self.layout.blocks), ck.root)
        return ck.done, ck.inputs(), results

    def _account(self, i: int, groups: list[tuple[Any, str]], bits: list[Any]) -> None:
        for key, name in groups:
            self.groups[key].append(name)
        self.bits = (self.bits[0] + bits[0], self.bits[1] + bits[1], self.bits[2] + bits[2])
        self.done_blocks.append(i)

    def done(self, i: int, block: nn.Module, result: dict[str, Any], outputs: list[torch.Tensor] | None) -> None:
        """The block may still be on the GPU: it is packed there and only its artifact tensors come to the host
        (a 70B block's bf16 weights never do: 1.7 GB less host memory)."""
        prefix = self.layout.block_name(i)
        state = {k: v.detach().contiguous() for k, v in block.state_dict(keep_vars=False).items()}
        reference = list(state)
        groups = []
        for name, mod in block.named_modules():
            qw = quantized_of(mod)
            if (self.options.format == "compressed" and qw is not None and isinstance(mod, nn.Linear)
                    and f"{name}.weight" in state):
                groups.append((_scheme_key(qw), f"{prefix}.{name}"))
        if self.options.format == "compressed":
            PackQuantized().export(block, state, {}, self.options)
        tensors = [(f"{prefix}.{name}", state[name].to("cpu"))
                   for name in artifact.module_order(list(state), reference)]
        for name, t in tensors:
            self._add(name, t)
        bits = list(linear_bits(block.modules()))
        if self.checkpoint is not None:
            record = {"result": result, "groups": groups, "bits": bits}
            self.checkpoint.save_block(i, tensors, record, outputs)
        self._account(i, groups, bits)
        del state, tensors
        release_(block)
        trim_host_memory()

    def finish(self) -> tuple[list[str], dict[str, Any], list[Path]]:
        """Write what follows the blocks and close the shards; returns (forms, config.json content, files)."""
        for name, like in self.tail:
            self._add(name, read_like(self.reader, name, like))
        if self.checkpoint is not None:
            self.checkpoint.flush()
        files = self.writer.finish()
        self._announce([f for f in files if f.suffix == ".safetensors"])  # the last shard, under its final name
        config = artifact.model_config(self.model)
        forms = [DENSE.name]
        if self.groups:
            config["quantization_config"] = pack_quantized_config(dict(self.groups))
            forms.append(PackQuantized.name)
        return forms, config, files

    def weight_stats(self) -> dict[str, Any]:
        return stats_dict(*self.bits)

    def abort(self) -> None:
        if self.checkpoint is not None:
            self.checkpoint.flush(raise_errors=False)
        self.writer.abort()
