#!/usr/bin/env bash
# Regenerate every lock from pyproject.toml (run by `make lock`; commit the result with the test run that passed).
# torch is pinned in pyproject.toml and installed separately (the CPU build here, a CUDA build in the GPU image),
# so it is resolved from the CPU wheel (--find-links) but not emitted: no CUDA-only packages enter a lock.
set -euo pipefail
cd "$(dirname "$0")/.."
UV="${UV:-.venv/bin/uv}"
export UV_NO_CONFIG=1
common=(--python-version 3.11 --python-platform x86_64-manylinux_2_28 --generate-hashes --no-emit-package torch)
[ -d /opt/wheels ] && common+=(--find-links /opt/wheels)
"$UV" pip compile pyproject.toml "${common[@]}" ${UPGRADE:+--upgrade} --extra engine --extra dev -o requirements/dev.lock
"$UV" pip compile pyproject.toml "${common[@]}" --constraint requirements/dev.lock -o requirements/api.lock
"$UV" pip compile pyproject.toml "${common[@]}" --constraint requirements/dev.lock --extra engine -o requirements/worker.lock
"$UV" pip compile requirements/build.in "${common[@]}" ${UPGRADE:+--upgrade} -o requirements/build.lock
"$UV" pip compile requirements/data.in "${common[@]}" --no-deps ${UPGRADE:+--upgrade} -o requirements/data.lock
