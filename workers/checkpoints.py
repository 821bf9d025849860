"""A streamed job's resume checkpoint in the artifact store (compression.io.resume does the local part).

After each finished block the library calls ``CheckpointSync(dir)``: the files the checkpoint's state.json names
and this attempt has not sent yet go to ``<attempt prefix>/resume/``, state.json last, so the stored state never
names a file that is not there. A later attempt of the job (on any worker) calls ``restore(dir)`` before it
runs: it takes the newest earlier attempt's stored state, downloads the files it names (each checked against the
sha256 recorded at upload) and writes state.json last; the library then resumes at the first unfinished block.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

from presso.app.jobs.artifacts import attempt_prefix
from presso.app.storage import ArtifactStore
from presso.codec.files import sha256_file
from presso.workers.lease import Claim

log = logging.getLogger(__name__)
STATE = "state.json"
DIGESTS = "digests.json"


def _files_of(state: dict[str, Any]) -> list[str]:
    names = [b["file"] for b in state.get("blocks", [])]
    if state.get("inputs"):
        names.append(state["inputs"])
    return names


class CheckpointSync:
    def __init__(self, store: ArtifactStore, claim: Claim) -> None:
        self.store, self.claim = store, claim
        self.prefix = self._prefix(claim.attempt)
        self.sent: dict[str, str] = {}  # file -> sha256, as uploaded by this attempt

    def _prefix(self, attempt: int) -> str:
        return f"{attempt_prefix(self.claim.tenant_id, self.claim.job_id, attempt)}/resume"

    def __call__(self, root: Path) -> None:
        """Upload what the local checkpoint ``root`` holds and this attempt has not sent; state.json last."""
        state = json.loads((root / STATE).read_text())
        for name in _files_of(state):
            if name not in self.sent:
                digest = sha256_file(root / name)
                self.store.put_file(f"{self.prefix}/{name}", root / name, sha256=digest)
                self.sent[name] = digest
        self.store.put_bytes(f"{self.prefix}/{DIGESTS}", json.dumps(self.sent).encode(),
                             content_type="application/json")
        self.store.put_bytes(f"{self.prefix}/{STATE}", (root / STATE).read_bytes(), content_type="application/json")

    def restore(self, root: Path) -> int:
        """Download the newest earlier attempt's checkpoint into ``root``; returns its finished blocks (0: none,
        also when it cannot be read: the job then starts over, which is slower but right)."""
        try:
            return self._restore(root)
        except Exception:  # noqa: BLE001 - a checkpoint is an optimization
            log.warning("job %s: checkpoint not restored; starting over", self.claim.job_id, exc_info=True)
            shutil.rmtree(root, ignore_errors=True)
            return 0

    def _restore(self, root: Path) -> int:
        for attempt in range(self.claim.attempt - 1, 0, -1):
            prefix = self._prefix(attempt)
            if not self.store.exists(f"{prefix}/{STATE}"):
                continue
            state_bytes = self.store.get_bytes(f"{prefix}/{STATE}")
            state = json.loads(state_bytes)
            digests = json.loads(self.store.get_bytes(f"{prefix}/{DIGESTS}"))
            root.mkdir(parents=True, exist_ok=True)
            for name in _files_of(state):
                if "/" in name or name.startswith("."):
                    raise ValueError(f"checkpoint names an unsafe file {name!r}")
                self.store.download_file(f"{prefix}/{name}", root / name)
                if sha256_file(root / name) != digests.get(name):
                    raise ValueError(f"checkpoint file {name} of attempt {attempt} does not match its sha256")
            (root / STATE).write_bytes(state_bytes)
            log.info("job %s: resuming from attempt %d's checkpoint (%d blocks)", self.claim.job_id, attempt,
                     len(state.get("blocks", [])))
            return len(state.get("blocks", []))
        return 0
