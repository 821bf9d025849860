"""A streamed job's tail: time from the end of compression to the manifest, with and without background uploads.

Writes a random Llama (bench/stream_memory.py's writer, one tensor at a time), starts a moto S3 server in its own
process, and runs what the worker runs for a streamed job, twice, in this process:

- ``background``: ``run_local(..., on_shard=ShardUploads(...))``, then ``ShardUploads.wait()`` and
  ``upload_artifact(..., uploaded=...)`` (presso.workers.runner); the shards closed before the last block are
  uploaded while later blocks compute;
- ``after``: ``run_local`` and ``upload_artifact`` of every file once it returns (the worker before issue 21's
  background uploads).

Prints and writes (--json) per mode: compress (run_local) seconds, tail seconds (run_local's return to the
manifest written) and total, plus how many files were uploaded in the background; and checks that both
manifests list the same sha256 per path.

  .venv/bin/python bench/stream_upload.py --shape 3b --layers 4 --shard-mb 256
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
log = logging.getLogger("stream_upload")
RTN = {"steps": [{"method": "rtn", "bits": 4, "group_size": 128}]}
BUCKET = "bench-stream-upload"


def moto_server(work: Path) -> tuple[subprocess.Popen[bytes], str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=(work / "moto.log").open("wb"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    import boto3

    s3 = boto3.client("s3", endpoint_url=url, region_name="us-east-1")
    for _ in range(100):
        try:
            s3.create_bucket(Bucket=BUCKET)
            return proc, url
        except Exception:  # noqa: BLE001 - not listening yet
            time.sleep(0.2)
    raise RuntimeError("moto server did not start")


def run(mode: str, model: Path, work: Path, url: str) -> dict[str, Any]:
    from presso.app.storage.s3 import S3Store
    from presso.compression.job import run_local
    from presso.compression.recipe import parse_recipe
    from presso.compression.spec import LocalJobSpec
    from presso.workers.lease import Claim
    from presso.workers.shardupload import ShardUploads
    from presso.workers.upload import upload_artifact

    store = S3Store(BUCKET, mode, endpoint_url=url)
    claim = Claim(job_id=f"bench-{mode}", tenant_id="bench", attempt=1, max_attempts=1, queue="q",
                  model_uri=str(model), request={})
    out = work / f"out-{mode}"
    shutil.rmtree(out, ignore_errors=True)
    spec = LocalJobSpec(model_uri=str(model), out_dir=out, recipe=parse_recipe(RTN), streaming="on",
                        evaluation={"enabled": False}, checkpoint=False)
    t0 = time.perf_counter()
    if mode == "background":
        with ShardUploads(store, claim, work / f"links-{mode}") as shards:
            result = run_local(spec, on_shard=shards)
            t1 = time.perf_counter()
            shards.wait()
            key = upload_artifact(store, claim, out, listed=result.files, uploaded=shards)
            early = len(shards.used)
    else:
        result = run_local(spec)
        t1 = time.perf_counter()
        key = upload_artifact(store, claim, out, listed=result.files)
        early = 0
    t2 = time.perf_counter()
    manifest = json.loads(store.get_bytes(key))
    return {"mode": mode, "compress_s": round(t1 - t0, 2), "tail_s": round(t2 - t1, 2), "total_s": round(t2 - t0, 2),
            "files": len(manifest["files"]), "uploaded_early": early,
            "artifact_bytes": sum(f["size"] for f in manifest["files"]),
            "sha256": {f["path"]: f["sha256"] for f in manifest["files"] if f["path"] not in ("presso.json",
                                                                                          "report.json")}}


def main() -> int:
    from bench.stream_memory import write_random_model

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", default="3b")
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--shard-mb", type=int, default=256, help="output shard size (PRESSO_SHARD_BYTES)")
    ap.add_argument("--work", type=Path, default=Path("/tmp/presso-bench-stream-upload"))
    ap.add_argument("--json", type=Path, default=ROOT / "bench/results/stream_upload.json")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    os.environ.update({"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                       "AWS_DEFAULT_REGION": "us-east-1"})
    from presso.compression.io import artifact

    artifact.SHARD_BYTES = args.shard_mb << 20
    args.work.mkdir(parents=True, exist_ok=True)
    model = args.work / f"model-{args.shape}-{args.layers}"
    if not (model / "config.json").exists():
        info = write_random_model(model, args.shape, args.layers, args.dtype, shard_gb=1.0)
        log.info("model written: %s", info)
    proc, url = moto_server(args.work)
    try:
        rows = [run(mode, model, args.work, url) for mode in ("after", "background")]
    finally:
        proc.terminate()
        proc.wait(timeout=20)
    same = rows[0]["sha256"] == rows[1]["sha256"]
    for r in rows:
        r.pop("sha256")
        print(json.dumps(r))
    print(f"same sha256 per path: {same}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "rows": rows,
                                     "same_sha256": same}, indent=2))
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
