"""Issue 17: `presso serve` stopped by SIGTERM or Ctrl-C (SIGINT) takes its worker and every child with it.

A real `presso serve` (SQLite, filesystem queue, its own Celery worker with a prefork pool child) is started,
its process tree is read from /proc once /healthz answers and the pool child exists, then the signal goes out
as it does in life: SIGTERM to serve's pid (`kill PID`, `docker stop`), SIGINT to serve's process group (what a
terminal does on Ctrl-C). serve must exit within 20 s and no process of that tree may be left alive.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from svc_helpers import free_port

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads the process tree from /proc")


def _stat(pid: int) -> tuple[str, int, int] | None:
    """(state, ppid, start time in clock ticks) of a process, None when there is none with that pid."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2:].split()  # comm may hold spaces and parentheses
    return fields[0], int(fields[1]), int(fields[19])


def _descendants(root: int) -> dict[int, tuple[int, int]]:
    """pid -> (ppid, start time) of every process below root (the start time tells a recycled pid apart)."""
    parents: dict[int, list[tuple[int, int]]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (st := _stat(int(entry))) is not None:
            parents.setdefault(st[1], []).append((int(entry), st[2]))
    found: dict[int, tuple[int, int]] = {}
    todo = [root]
    while todo:
        ppid = todo.pop()
        for pid, start in parents.get(ppid, []):
            found[pid] = (ppid, start)
            todo.append(pid)
    return found


def _alive(pid: int, start: int) -> bool:
    st = _stat(pid)
    return st is not None and st[2] == start and st[0] not in "ZX"  # a zombie has exited


def _describe(pid: int) -> str:
    st = _stat(pid)
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        cmd = "?"
    return f"pid {pid} (state {st and st[0]}, ppid {st and st[1]}): {cmd}"


def _healthy(url: str) -> bool:
    try:
        return httpx.get(f"{url}/healthz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


@pytest.mark.timeout(240)
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_serve_signal_stops_every_descendant(tmp_path: Path, sig: signal.Signals) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PRESSO_")}
    env["PRESSO_DATA_DIR"] = str(tmp_path / "data")
    logpath = tmp_path / "serve.log"
    log = open(logpath, "wb")  # noqa: SIM115
    proc = subprocess.Popen([sys.executable, "-m", "presso.cli", "serve", "--port", str(port)], cwd=ROOT, env=env,
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    tree: dict[int, tuple[int, int]] = {}
    try:
        deadline = time.monotonic() + 180
        while True:
            assert proc.poll() is None, logpath.read_text()[-4000:]
            tree = _descendants(proc.pid)
            # the worker is a child of serve; Celery's prefork pool child is a child of the worker
            pool_up = any(ppid in tree for ppid, _ in tree.values())
            if pool_up and _healthy(url):
                break
            assert time.monotonic() < deadline, f"serve not up: {tree}\n{logpath.read_text()[-4000:]}"
            time.sleep(0.3)
        tree = _descendants(proc.pid)
        assert len(tree) >= 2, [_describe(p) for p in tree]

        if sig == signal.SIGINT:
            os.killpg(proc.pid, sig)  # Ctrl-C: the terminal signals the foreground process group
        else:
            os.kill(proc.pid, sig)  # kill PID, docker stop
        deadline = time.monotonic() + 20
        try:
            code = proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            pytest.fail(f"serve still running 20 s after {sig.name}\n{logpath.read_text()[-4000:]}")
        left = [pid for pid, (_, start) in tree.items() if _alive(pid, start)]
        while left and time.monotonic() < deadline:
            time.sleep(0.2)
            left = [pid for pid, (_, start) in tree.items() if _alive(pid, start)]
        assert not left, (f"serve exited ({code}) after {sig.name} but left " + "; ".join(map(_describe, left))
                          + "\n" + logpath.read_text()[-4000:])
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for pid, (_, start) in tree.items():  # never leave a stray worker behind, whatever the outcome
            if _alive(pid, start):
                os.kill(pid, signal.SIGKILL)
        log.close()
