"""`make demo`: start the embedded service, compress SmolLM2-135M over HTTP, print the metrics.

Usage: python -m presso.demo [--port 8765] [--data-dir .presso/demo] [--out demo-out] [--recipe JSON]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from presso.client import PressoClient

DEFAULT_RECIPE = {"steps": [{"method": "rtn", "bits": 4, "group_size": 64}]}


def start_service(port: int, data_dir: Path, allowed_roots: list[Path], log_path: Path) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PRESSO_")}
    env.update({"PRESSO_DATA_DIR": str(data_dir), "PRESSO_ALLOWED_FILE_ROOTS": ",".join(map(str, allowed_roots))})
    log = open(log_path, "wb")  # noqa: SIM115 - lives as long as the service
    proc = subprocess.Popen([sys.executable, "-m", "presso.cli", "serve", "--port", str(port)], env=env,
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"service exited; see {log_path}")
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise SystemExit(f"service did not become ready; see {log_path}")


def stop_service(proc: subprocess.Popen[bytes]) -> None:
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)


def flatten(metrics: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    rows: list[tuple[str, Any]] = []
    for key, value in metrics.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            rows += flatten(value, name + ".")
        elif isinstance(value, int | float | str | bool) or value is None:
            rows.append((name, value))
    return rows


def metrics_table(metrics: dict[str, Any]) -> str:
    rows = [(k, v) for k, v in flatten(metrics) if not k.startswith(("recipe_used", "load_notes"))]
    width = max((len(k) for k, _ in rows), default=10)
    lines = [f"| {'metric':<{width}} | value |", f"|{'-' * (width + 2)}|-------|"]
    for key, value in rows:
        shown = f"{value:.4g}" if isinstance(value, float) else str(value)
        lines.append(f"| {key:<{width}} | {shown} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--data-dir", type=Path, default=Path(".presso/demo"))
    parser.add_argument("--out", type=Path, default=Path("demo-out"))
    parser.add_argument("--recipe", default=json.dumps(DEFAULT_RECIPE))
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the finally below: stop the service

    from presso.compression.io.smollm2 import gguf_path

    gguf = gguf_path()
    from presso.compression.errors import CompressionError
    from presso.compression.io.outdir import check_out_dir

    try:  # before an hour of work: the download would refuse it at the end
        check_out_dir(args.out, overwrite=True)
    except CompressionError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 2
    data_dir = args.data_dir.resolve()
    if data_dir.exists() and any(data_dir.iterdir()) and not (data_dir / "dev-api-key").is_file():
        print(f"error: {data_dir} is not empty and is no earlier demo's data dir (no dev-api-key); "
              "not deleting it: pass another --data-dir", file=sys.stderr)
        return 2
    shutil.rmtree(data_dir, ignore_errors=True)  # an earlier demo's service: a fresh one each run, no leftover jobs
    data_dir.mkdir(parents=True)
    print(f"model: {gguf}\nstarting the embedded service on port {args.port} (log: {data_dir / 'serve.log'})")
    # Evaluation text: the project's own README (any text file works; without one the model would
    # write its own, which is slow on a laptop CPU).
    eval_text = data_dir / "eval-text" / "README.md"
    eval_text.parent.mkdir()
    shutil.copy2(Path(__file__).resolve().parents[1] / "README.md", eval_text)
    proc = start_service(args.port, data_dir, [gguf.parent, eval_text.parent], data_dir / "serve.log")
    try:
        key = (data_dir / "dev-api-key").read_text().strip()
        with PressoClient(f"http://127.0.0.1:{args.port}", key) as client:
            body = {"model_uri": gguf.as_uri(), "recipe": json.loads(args.recipe),
                    "evaluation": {"uri": eval_text.as_uri(), "windows": 4, "seq_len": 256}}
            job = client.submit(body)
            print(f"submitted job {job['id']} over HTTP")
            job = client.wait(job["id"], timeout=3600, poll=1.0, progress=True)
            if job.state != "succeeded":
                print(json.dumps(job.to_dict(), indent=2))
                return 1
            files = client.download(job["id"], args.out, overwrite=True)  # an earlier demo's artifact only
            print(f"downloaded {len(files)} files to {args.out} (sha256 verified)\n")
            print(metrics_table(job["metrics"] or {}))
    finally:
        stop_service(proc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
