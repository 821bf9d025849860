"""A small synchronous client of the Presso REST API."""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urljoin

import httpx

TERMINAL = ("succeeded", "failed", "cancelled")


class PressoError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status, self.code, self.message = status, code, message


def default_api_key() -> str | None:
    """PRESSO_API_KEY, else the dev key `presso serve` wrote into its data dir."""
    key = os.environ.get("PRESSO_API_KEY")
    if key:
        return key
    dev = Path(os.environ.get("PRESSO_DATA_DIR", ".presso")) / "dev-api-key"
    return dev.read_text().strip() if dev.is_file() else None


class PressoClient:
    def __init__(self, server: str | None = None, api_key: str | None = None, *, timeout: float = 30.0) -> None:
        self.server = (server or os.environ.get("PRESSO_SERVER") or "http://127.0.0.1:8000").rstrip("/")
        self.api_key = api_key or default_api_key()
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        self.http = httpx.Client(base_url=self.server, headers=headers, timeout=timeout)

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> PressoClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        resp = self.http.request(method, path, **kwargs)
        if resp.status_code >= 400:
            try:
                err = resp.json()["error"]
                raise PressoError(resp.status_code, err.get("code", "error"), err.get("message", ""))
            except (ValueError, KeyError, TypeError):
                raise PressoError(resp.status_code, "http_error", resp.text[:500]) from None
        return resp.json()

    def submit(self, body: dict[str, Any], *, idempotency_key: str | None = None) -> dict[str, Any]:
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        result: dict[str, Any] = self._call("POST", "/v1/jobs", json=body, headers=headers)
        return result

    def get(self, job_id: str) -> dict[str, Any]:
        result: dict[str, Any] = self._call("GET", f"/v1/jobs/{job_id}")
        return result

    def cancel(self, job_id: str) -> dict[str, Any]:
        result: dict[str, Any] = self._call("POST", f"/v1/jobs/{job_id}/cancel")
        return result

    def artifact(self, job_id: str) -> dict[str, Any]:
        result: dict[str, Any] = self._call("GET", f"/v1/jobs/{job_id}/artifact")
        return result

    def wait(self, job_id: str, *, timeout: float = 3600, poll: float = 1.0,
             on_update: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            job = self.get(job_id)
            if on_update:
                on_update(job)
            if job["state"] in TERMINAL:
                return job
            if time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} still {job['state']} after {timeout:.0f} s")
            time.sleep(poll)

    def download(self, job_id: str, out: Path, *, restore: bool = True, overwrite: bool = False) -> list[Path]:
        """Download every manifest file, verify its sha256, and restore lossless-encoded files.

        ``out`` must be new or empty, or hold a previous Presso artifact and ``overwrite`` be given (then only
        that artifact's files are replaced): Presso never deletes what it did not write. Files are downloaded
        and decoded in a staging directory and moved into ``out`` only when all of them are verified.
        """
        from presso.compression.io.outdir import publish, staged_output

        out = Path(out)
        manifest = self.artifact(job_id)
        with staged_output(out, overwrite=overwrite) as stage:
            ready = stage / "files"
            written = [self._download_file(f, ready) for f in manifest["files"]]
            if restore and any(p.suffix == ".pzst" for p in written):
                ready = restore_dir(ready, stage / "restored")
            return [out / rel for rel in publish(ready, out, overwrite=overwrite)]

    def _download_file(self, entry: dict[str, Any], out: Path) -> Path:
        rel = Path(entry["path"])
        if rel.is_absolute() or ".." in rel.parts:
            raise PressoError(0, "unsafe_path", f"manifest names an unsafe path {entry['path']!r}")
        dest = out / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        url = urljoin(self.server + "/", entry["url"])
        same_origin = url.startswith(self.server)
        client = self.http if same_origin else httpx.Client(timeout=self.http.timeout)
        digest = hashlib.sha256()
        try:
            with client.stream("GET", url, follow_redirects=True) as resp, open(dest, "wb") as fh:
                if resp.status_code != 200:
                    raise PressoError(resp.status_code, "download_failed", f"GET {entry['path']}")
                for chunk in resp.iter_bytes(1 << 20):
                    digest.update(chunk)
                    fh.write(chunk)
        finally:
            if not same_origin:
                client.close()
        if digest.hexdigest() != entry["sha256"]:
            dest.unlink(missing_ok=True)
            raise PressoError(0, "checksum_mismatch", f"sha256 of {entry['path']} does not match the manifest")
        return dest


def restore_dir(packed: Path, restored: Path) -> Path:
    """Decode a downloaded lossless artifact into the new directory ``restored`` (every file sha256-checked by
    ``presso.codec.unpack_dir``) and return it. Deletes nothing: the caller owns both."""
    import shutil

    from presso.codec.files import INDEX, SUFFIX, unpack_dir

    unpack_dir(packed, restored)
    for path in sorted(p for p in packed.rglob("*") if p.is_file()):  # presso.json, report.json: beside the index
        rel = path.relative_to(packed)
        if rel.as_posix() != INDEX and path.suffix != SUFFIX and not (restored / rel).exists():
            (restored / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, restored / rel)
    return restored
