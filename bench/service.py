"""Service benchmark (BENCHMARKS §4): queue pickup, artifact transfer, soak, submit latency.

Starts its own stack on loopback: a moto S3 server (subprocess), a private redis-server, the API
(uvicorn subprocess) and one `presso worker` (subprocess, one torch thread), against Postgres
(database presso_bench_service, created and migrated when missing; jobs earlier runs left
queued are closed first, or the worker's reaper would republish them). Prints markdown and writes
bench/results/service.md.

  (a) pickup: seconds from the 202 to the job's `started_at` (the worker's claim), with an idle worker;
  (b) transfer: upload / download MB/s of a --transfer-mib artifact through Presso's ArtifactStore
      (app/storage/s3.py) beside a plain boto3 upload_file / download_file of the same bytes, same server;
  (c) soak: --soak-jobs tiny rtn jobs in a row; RSS of the worker process tree at start and end;
  (d) submit latency: bench/submit_latency.py at --rates (subprocess; its own API on Postgres + Redis);
  (e) recovery (--recovery; stacks of their own, two workers each): --recovery-jobs jobs, each killed with
      SIGKILL at a random moment of a TEST-ONLY pause in its compress stage (PRESSO_TEST_STAGE_DELAY), the whole
      worker (--recovery-kill worker: a lost node; a replacement worker is started) or only its job process
      (child: the OOM killer); recovery = kill -> the next attempt's claim (started_at). One stack per
      --recovery-leases value (PRESSO_LEASE_S; reaper interval at its default). Then the backlog: --backlog-jobs
      tiny jobs submitted at once to two workers, with PRESSO_REPUBLISH_AFTER_S=--backlog-republish-s and a 1 s
      reaper interval: re-publishes ("republished job" in the worker logs) and duplicate deliveries ("nothing
      to do"). Runs against whatever code `presso` imports from the checkout it is started in (a worktree of
      an older commit measures the old code; give it its own --database-url).

Examples:
  .venv/bin/python bench/service.py
  .venv/bin/python bench/service.py --soak-jobs 100 --pickup-jobs 10 --skip latency
  .venv/bin/python bench/service.py --recovery --skip pickup,transfer,soak,latency --out bench/results/recovery.md
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
ADMIN_KEY = "bench-admin-" + uuid.uuid4().hex
RTN = {"steps": [{"method": "rtn", "bits": 4, "group_size": 32}]}
FAST_EVAL = {"windows": 2, "seq_len": 32, "latency": False}
BUCKETS = ("bench-artifacts", "bench-models")


def _port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_http(url: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if httpx.get(url, timeout=1).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise SystemExit(f"{url} did not come up")
        time.sleep(0.2)


class Stack:
    """moto S3 + redis-server + API + worker(s), all subprocesses in their own sessions."""

    def __init__(self, args: argparse.Namespace, work: Path, *, extra_env: dict[str, str] | None = None,
                 workers: int = 1, loglevel: str = "WARNING") -> None:
        self.args, self.work, self.procs = args, work, []
        self.workers: list[subprocess.Popen[bytes]] = []
        self.loglevel = loglevel
        os.environ.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION="us-east-1")
        self.s3_url = f"http://127.0.0.1:{_port()}"
        self._spawn([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", self.s3_url.rsplit(":", 1)[1]],
                    "moto.log")
        redis_port = _port()
        self._spawn(["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "", "--appendonly",
                     "no", "--dir", str(work)], "redis.log")
        self.redis_url = f"redis://127.0.0.1:{redis_port}/0"
        _wait_http(self.s3_url)
        import boto3

        s3 = boto3.client("s3", endpoint_url=self.s3_url, region_name="us-east-1")
        for b in BUCKETS:
            s3.create_bucket(Bucket=b)
        self.env = {
            **os.environ, "PRESSO_DATABASE_URL": args.database_url, "PRESSO_BROKER_URL": self.redis_url,
            "PRESSO_STORE_URL": f"s3://{BUCKETS[0]}/{uuid.uuid4().hex[:8]}", "PRESSO_S3_ENDPOINT_URL": self.s3_url,
            "PRESSO_ADMIN_KEY": ADMIN_KEY, "PRESSO_RATE_LIMIT_PER_S": "0", "PRESSO_DEVICE": "cpu",
            "PRESSO_FETCH_ALLOW_PRIVATE_HOSTS": "127.0.0.0/8", "PRESSO_MAX_ACTIVE_JOBS_PER_TENANT": "100000",
            "PRESSO_DATA_DIR": str(work / "data"), "PRESSO_WORK_DIR": str(work / "jobs"),
            "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
            **(extra_env or {}),
        }
        from bench.submit_latency import ensure_database
        from presso.app.core.migrate import upgrade
        from presso.app.core.settings import Settings

        ensure_database(args.database_url)
        upgrade(Settings(database_url=args.database_url))
        _close_leftovers(args.database_url)
        self.api = f"http://127.0.0.1:{_port()}"
        self._spawn([sys.executable, "-m", "presso.cli", "api", "--workers", "1", "--host", "127.0.0.1",
                     "--port", self.api.rsplit(":", 1)[1], "--log-level", "warning", "--no-access-log"], "api.log",
                    env=self.env)
        self.worker = self.start_worker()
        for _ in range(workers - 1):
            self.start_worker()
        _wait_http(f"{self.api}/healthz")
        admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
        tenant = httpx.post(f"{self.api}/v1/admin/tenants", headers=admin,
                            json={"name": f"bench-{uuid.uuid4().hex[:8]}", "max_active_jobs": 100000}).json()
        key = httpx.post(f"{self.api}/v1/admin/tenants/{tenant['id']}/keys", headers=admin, json={"name": "b"}).json()
        self.client = httpx.Client(base_url=self.api, headers={"Authorization": f"Bearer {key['secret']}"}, timeout=30)
        self.model_uri = self._upload_model(s3)

    def start_worker(self) -> subprocess.Popen[bytes]:
        name = "worker.log" if not self.workers else f"worker-{len(self.workers)}.log"
        proc = self._spawn([sys.executable, "-m", "presso.cli", "worker", "--loglevel", self.loglevel], name,
                           env=self.env)
        self.workers.append(proc)
        return proc

    def log_count(self, text: str) -> int:
        return sum(p.read_bytes().count(text.encode()) for p in self.work.glob("worker*.log"))

    def wait_workers_ready(self, timeout: float = 240) -> None:
        """Every live worker logged "ready." (needs --loglevel INFO)."""
        deadline = time.monotonic() + timeout
        for i, proc in enumerate(self.workers):
            log = self.work / ("worker.log" if i == 0 else f"worker-{i}.log")
            while proc.poll() is None and b"ready." not in log.read_bytes():
                if time.monotonic() > deadline:
                    raise SystemExit(f"worker {i} not ready; see {log}")
                time.sleep(0.2)

    def _spawn(self, cmd: list[str], log: str, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        with open(self.work / log, "wb") as out:
            proc = subprocess.Popen(cmd, cwd=ROOT, env=env or dict(os.environ), stdout=out, stderr=subprocess.STDOUT,
                                    start_new_session=True)
        self.procs.append(proc)
        return proc

    def _upload_model(self, s3: Any) -> str:
        sys.path.insert(0, str(ROOT / "tests"))
        from svc_helpers import write_tiny_llama

        model = write_tiny_llama(self.work / "model")
        for p in model.iterdir():
            s3.upload_file(str(p), BUCKETS[1], f"tiny/{p.name}")
        return f"s3://{BUCKETS[1]}/tiny"

    def submit(self) -> tuple[str, float]:
        resp = self.client.post("/v1/jobs", json={"model_uri": self.model_uri, "recipe": RTN, "evaluation": FAST_EVAL,
                                                  "force": True})  # every job runs: no dedup
        at = time.time()
        if resp.status_code != 202:
            raise SystemExit(f"submit failed: {resp.status_code} {resp.text}")
        return resp.json()["id"], at

    def wait(self, job_id: str, timeout: float = 600) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            job: dict[str, Any] = self.client.get(f"/v1/jobs/{job_id}").json()
            if job["state"] in ("succeeded", "failed", "cancelled"):
                return job
            if time.monotonic() > deadline:
                raise SystemExit(f"job {job_id} stuck in {job['state']}; see {self.work}/worker.log")
            time.sleep(0.1)

    def worker_ready(self, timeout: float = 180) -> None:
        deadline = time.monotonic() + timeout
        while b"ready." not in (self.work / "worker.log").read_bytes() and time.monotonic() < deadline:
            time.sleep(0.2)
        # INFO is off; a first job proves readiness either way
        self.wait(self.submit()[0])

    def worker_rss_mib(self) -> tuple[float, float]:
        """(worker tree, worker main process) resident set size in MiB."""
        import psutil

        main = psutil.Process(self.worker.pid)
        procs = [main, *main.children(recursive=True)]
        tree = sum(p.memory_info().rss for p in procs if p.is_running())
        return tree / 2**20, main.memory_info().rss / 2**20

    def close(self) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is not None:  # a worker the recovery bench killed
                continue
            try:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(timeout=20)
            except ProcessLookupError:
                continue
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass


def _close_leftovers(url: str) -> None:
    """The worker's reaper would republish jobs earlier runs left queued: close them first."""
    from sqlalchemy import create_engine, text

    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(text("UPDATE jobs SET state = 'cancelled', error_code = 'cancelled', lease_expires_at = NULL "
                          "WHERE state IN ('queued', 'running')"))
    engine.dispose()


# -- (a) pickup ------------------------------------------------------------------------------------


def bench_pickup(stack: Stack, n: int, idle_s: float) -> str:
    pickups, totals = [], []
    for _ in range(n):
        time.sleep(idle_s)  # let the pool replace its per-job child: the worker is idle when the job arrives
        job_id, accepted = stack.submit()
        job = stack.wait(job_id)
        started = dt.datetime.fromisoformat(job["started_at"]).timestamp()
        pickups.append(started - accepted)
        totals.append(dt.datetime.fromisoformat(job["finished_at"]).timestamp() - accepted)
    q = sorted(pickups)
    return "\n".join([
        f"### (a) Queue pickup: 202 -> running, idle worker ({n} jobs, {idle_s:.0f} s idle before each)", "",
        "| median s | p90 s | min s | max s | median 202 -> succeeded s |", "|---:|---:|---:|---:|---:|",
        f"| {statistics.median(q):.3f} | {q[int(0.9 * (len(q) - 1))]:.3f} | {q[0]:.3f} | {q[-1]:.3f} | "
        f"{statistics.median(totals):.2f} |", "",
    ])


# -- (b) transfer ----------------------------------------------------------------------------------


def _timed(fn: Any) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def bench_transfer(stack: Stack, mib: int, reps: int) -> str:
    import boto3

    from presso.app.storage.s3 import S3Store
    from presso.compression.io.artifact import sha256_file

    src = stack.work / "artifact.bin"
    with open(src, "wb") as fh:
        for _ in range(mib // 16):
            fh.write(os.urandom(16 << 20))
    digest = sha256_file(src)
    store = S3Store(BUCKETS[0], "transfer", endpoint_url=stack.s3_url)
    plain = boto3.client("s3", endpoint_url=stack.s3_url, region_name="us-east-1")
    rows: dict[str, list[tuple[float, float]]] = {"presso": [], "boto3": []}
    for rep in range(reps):
        for name in ("presso", "boto3") if rep % 2 == 0 else ("boto3", "presso"):
            dest = stack.work / f"down-{name}.bin"
            if name == "presso":
                up = _timed(lambda: store.put_file("a/model.safetensors", src, sha256=digest))
                down = _timed(lambda d=dest: store.download_file("a/model.safetensors", d))
            else:
                up = _timed(lambda: plain.upload_file(str(src), BUCKETS[0], "plain/model.safetensors"))
                down = _timed(lambda d=dest: plain.download_file(BUCKETS[0], "plain/model.safetensors", str(d)))
            assert sha256_file(dest) == digest, f"{name} download differs"
            dest.unlink()
            rows[name].append((mib / up, mib / down))
    src.unlink()
    best = {k: (max(u for u, _ in v), max(d for _, d in v)) for k, v in rows.items()}
    return "\n".join([
        f"### (b) Artifact transfer: {mib} MiB, moto S3 server on loopback (best of {reps}, alternating order)", "",
        "| path | upload MB/s | download MB/s |", "|---|---:|---:|",
        f"| Presso ArtifactStore (S3Store, 64 MiB parts, 8 threads) | {best['presso'][0]:.0f} | "
        f"{best['presso'][1]:.0f} |",
        f"| plain boto3 upload_file / download_file (defaults) | {best['boto3'][0]:.0f} | {best['boto3'][1]:.0f} |",
        f"| ratio Presso / boto3 | {best['presso'][0] / best['boto3'][0]:.2f} | "
        f"{best['presso'][1] / best['boto3'][1]:.2f} |", "",
        "All runs (MB/s up/down): " + "; ".join(f"{k}: " + ", ".join(f"{u:.0f}/{d:.0f}" for u, d in v)
                                                for k, v in rows.items()), "",
    ])


# -- (c) soak --------------------------------------------------------------------------------------


def bench_soak(stack: Stack, n: int) -> str:
    time.sleep(6)
    tree0, main0 = stack.worker_rss_mib()
    t0 = time.perf_counter()
    ids = [stack.submit()[0] for _ in range(n)]
    states: dict[str, int] = {}
    for job_id in ids:
        state = stack.wait(job_id, timeout=900)["state"]
        states[state] = states.get(state, 0) + 1
    elapsed = time.perf_counter() - t0
    time.sleep(6)  # the pool replaces the last child
    tree1, main1 = stack.worker_rss_mib()
    return "\n".join([
        f"### (c) Soak: {n} tiny rtn jobs in a row through API + Redis + worker + Postgres + S3", "",
        "| jobs | outcome | wall s | jobs/min | worker tree RSS start -> end MiB | main process RSS start -> end MiB |",
        "|---:|---|---:|---:|---:|---:|",
        f"| {n} | {states} | {elapsed:.0f} | {60 * n / elapsed:.1f} | {tree0:.0f} -> {tree1:.0f} "
        f"({100 * (tree1 - tree0) / tree0:+.1f}%) | {main0:.0f} -> {main1:.0f} "
        f"({100 * (main1 - main0) / main0:+.1f}%) |",
        "",
    ])


# -- (e) recovery and backlog republishes ---------------------------------------------------------


def _wait_marker(markers: Path, job_id: str, stage: str, timeout: float = 300) -> int:
    deadline = time.monotonic() + timeout
    while True:
        found = sorted(markers.glob(f"{job_id}.{stage}.*"))
        if found and found[-1].read_text():
            return int(found[-1].read_text())
        if time.monotonic() > deadline:
            raise SystemExit(f"job {job_id} never reached {stage}")
        time.sleep(0.02)


def _rerun_at(stack: Stack, job_id: str, timeout: float = 600) -> float:
    """started_at (epoch s) of the job's second attempt."""
    deadline = time.monotonic() + timeout
    while True:
        job = stack.client.get(f"/v1/jobs/{job_id}").json()
        if job["attempt"] >= 2 and job["state"] in ("running", "succeeded") and job["started_at"]:
            return dt.datetime.fromisoformat(job["started_at"]).timestamp()
        if job["state"] in ("failed", "cancelled") or time.monotonic() > deadline:
            raise SystemExit(f"job {job_id} not rerun: {job}")
        time.sleep(0.05)


def bench_recovery_one(args: argparse.Namespace, lease_s: str, work: Path) -> tuple[list[float], int, int]:
    markers = work / "markers"
    markers.mkdir()
    env = {"PRESSO_TEST_STAGE_DELAY": f"compress={args.recovery_pause_s}", "PRESSO_TEST_STAGE_MARKERS": str(markers),
           "PRESSO_MAX_ATTEMPTS": "5"}
    if lease_s != "default":
        env["PRESSO_LEASE_S"] = lease_s
    stack = Stack(args, work, extra_env=env, workers=2, loglevel="INFO")
    rng = random.Random(args.recovery_seed)
    recoveries: list[float] = []
    try:
        for _ in range(args.recovery_jobs):
            stack.wait_workers_ready()
            job_id, _ = stack.submit()
            pid = _wait_marker(markers, job_id, "compress")
            time.sleep(rng.uniform(0.0, 0.8 * args.recovery_pause_s))
            if args.recovery_kill == "worker":
                pgid = os.getpgid(pid)
                os.killpg(pgid, signal.SIGKILL)
                killed_at = time.time()
                for w in stack.workers:
                    if w.pid == pgid:
                        w.wait()
                stack.start_worker()  # the replacement boots while the other worker recovers the job
            else:
                os.kill(pid, signal.SIGKILL)
                killed_at = time.time()
            recoveries.append(_rerun_at(stack, job_id) - killed_at)
            print(f"  lease {lease_s}: recovered in {recoveries[-1]:.1f} s", flush=True)
            stack.wait(job_id, timeout=900)
        return recoveries, stack.log_count("republished job"), stack.log_count("nothing to do")
    finally:
        stack.close()


def bench_backlog(args: argparse.Namespace, work: Path) -> tuple[int, int, float, dict[str, int]]:
    env = {"PRESSO_REPUBLISH_AFTER_S": f"{args.backlog_republish_s:g}", "PRESSO_REAPER_INTERVAL_S": "1"}
    stack = Stack(args, work, extra_env=env, workers=2, loglevel="INFO")
    try:
        stack.wait_workers_ready()
        stack.worker_ready()  # one job first, so the workers are warm
        rep0, dup0 = stack.log_count("republished job"), stack.log_count("nothing to do")
        t0 = time.perf_counter()
        ids = [stack.submit()[0] for _ in range(args.backlog_jobs)]
        states: dict[str, int] = {}
        for job_id in ids:
            state = stack.wait(job_id, timeout=1800)["state"]
            states[state] = states.get(state, 0) + 1
        elapsed = time.perf_counter() - t0
        time.sleep(3)  # duplicates still in flight are delivered and skipped
        return (stack.log_count("republished job") - rep0, stack.log_count("nothing to do") - dup0, elapsed,
                states)
    finally:
        stack.close()


def bench_recovery(args: argparse.Namespace, tmp: Path) -> str:
    rows = []
    for lease in args.recovery_leases.split(","):
        work = tmp / f"recovery-{lease}"
        work.mkdir()
        rec, rep, dup = bench_recovery_one(args, lease, work)
        q = sorted(rec)
        rows.append(f"| kill -9 of the {args.recovery_kill}, PRESSO_LEASE_S {lease} | {len(q)} | "
                    f"{statistics.median(q):.1f} | {q[0]:.1f} | {q[-1]:.1f} | {rep} | {dup} |")
        print(rows[-1], flush=True)
    lines = [
        f"### (e) Recovery after kill -9 ({args.recovery_pause_s:g} s pause in compress, killed at a random moment "
        "of it; two workers, reaper interval at its default)", "",
        "| run | jobs | median recovery s | min s | max s | re-publishes | duplicate deliveries |",
        "|---|---:|---:|---:|---:|---:|---:|", *rows, "",
    ]
    if args.backlog_jobs > 0:
        work = tmp / "backlog"
        work.mkdir()
        rep, dup, elapsed, states = bench_backlog(args, work)
        lines += [f"Backlog: {args.backlog_jobs} tiny jobs submitted at once to two workers, PRESSO_REPUBLISH_AFTER_S="
                  f"{args.backlog_republish_s:g}, reaper every 1 s: **{rep} re-publishes**, {dup} duplicate "
                  f"deliveries, {states}, drained in {elapsed:.0f} s.", ""]
    return "\n".join(lines)


# -- (d) submit latency ----------------------------------------------------------------------------


def bench_latency(rates: str, duration: float) -> str:
    out = subprocess.run([sys.executable, str(ROOT / "bench" / "submit_latency.py"), "--rates", rates, "--duration",
                          str(duration)], cwd=ROOT, capture_output=True, text=True, timeout=1800)
    if out.returncode != 0:
        return f"### (d) Submit latency\n\nbench/submit_latency.py failed:\n```\n{out.stderr[-2000:]}\n```\n"
    return f"### (d) Submit latency (bench/submit_latency.py)\n\n{out.stdout.strip()}\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pickup-jobs", type=int, default=15)
    parser.add_argument("--pickup-idle-s", type=float, default=6.0)
    parser.add_argument("--transfer-mib", type=int, default=1024)
    parser.add_argument("--transfer-reps", type=int, default=2)
    parser.add_argument("--soak-jobs", type=int, default=500)
    parser.add_argument("--rates", default="50,200,500")
    parser.add_argument("--latency-duration", type=float, default=10.0)
    parser.add_argument("--skip", default="", help="comma-separated parts to skip: pickup,transfer,soak,latency")
    parser.add_argument("--recovery", action="store_true", help="(e): recovery after kill -9, backlog republishes")
    parser.add_argument("--recovery-jobs", type=int, default=8)
    parser.add_argument("--recovery-leases", default="default", help="comma-separated PRESSO_LEASE_S values")
    parser.add_argument("--recovery-kill", choices=["worker", "child"], default="worker")
    parser.add_argument("--recovery-pause-s", type=float, default=10.0)
    parser.add_argument("--recovery-seed", type=int, default=0)
    parser.add_argument("--backlog-jobs", type=int, default=30)
    parser.add_argument("--backlog-republish-s", type=float, default=10.0)
    parser.add_argument("--database-url", default="postgresql+psycopg://postgres@127.0.0.1:5432/presso_bench_service")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "service.md")
    args = parser.parse_args()
    skip = set(filter(None, args.skip.split(",")))
    sections = [f"## Service benchmark ({dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC, {os.cpu_count()} CPUs, "
                f"load average {os.getloadavg()[0]:.1f} at start)", ""]
    with tempfile.TemporaryDirectory(prefix="presso-bench-service-") as tmp:
        if args.recovery:
            sections.append(bench_recovery(args, Path(tmp)))
            print(sections[-1], flush=True)
        stack = None if {"pickup", "transfer", "soak"} <= skip else Stack(args, Path(tmp))
        try:
            if stack is not None:
                stack.worker_ready()
            if "pickup" not in skip:
                sections.append(bench_pickup(stack, args.pickup_jobs, args.pickup_idle_s))
                print(sections[-1], flush=True)
            if "transfer" not in skip:
                sections.append(bench_transfer(stack, args.transfer_mib, args.transfer_reps))
                print(sections[-1], flush=True)
            if "soak" not in skip:
                sections.append(bench_soak(stack, args.soak_jobs))
                print(sections[-1], flush=True)
        finally:
            if stack is not None:
                stack.close()
    if "latency" not in skip:
        sections.append(bench_latency(args.rates, args.latency_duration))
    text = "\n".join(sections)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
