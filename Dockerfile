# syntax=docker/dockerfile:1
# Targets: `api` (no torch), `worker` (CPU torch + engines), `worker-gpu` (CUDA torch, prebuilt kernels).
#   docker build --target api -t presso-api .
#   docker build --target worker -t presso-worker .
#   docker build --target worker-gpu -t presso-worker-gpu .
# Every Python package comes from requirements/*.lock (exact versions, hash-checked, --no-deps); torch is
# pinned by TORCH_VERSION and installed from the index of its build (CPU or CUDA).

FROM python:3.11-slim AS build
# The wheel is built here, where a C compiler exists: it carries the codec's C coder (setup.py Extension),
# so the runtime images need no compiler and never fall back to the numpy coder.
RUN apt-get update && apt-get install -y --no-install-recommends gcc libc6-dev && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY requirements/build.lock requirements/build.lock
RUN pip install --no-cache-dir --require-hashes --no-deps -r requirements/build.lock
COPY pyproject.toml setup.py README.md ./
COPY presso ./presso
COPY app ./app
COPY workers ./workers
COPY compression ./compression
COPY kernels ./kernels
COPY codec ./codec
COPY fetch ./fetch
COPY migrations ./migrations
RUN pip wheel --no-cache-dir --no-deps --no-build-isolation -w /wheels .

FROM python:3.11-slim AS base
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
RUN useradd --create-home --uid 10001 presso
WORKDIR /srv/presso
COPY requirements ./requirements

# The API image: FastAPI + SQLAlchemy + Celery client; the app never imports torch.
FROM base AS api
RUN pip install --require-hashes --no-deps -r requirements/api.lock
COPY --from=build /wheels /wheels
RUN pip install --no-deps /wheels/presso-*.whl && presso doctor
USER presso
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=3s CMD python -c "import urllib.request,sys; urllib.request.urlopen('http://127.0.0.1:8000/healthz')" || exit 1
# `presso api` runs uvicorn with TCP_NODELAY on every connection (plain `uvicorn --workers` leaves Nagle on)
CMD ["presso", "api", "--host", "0.0.0.0", "--port", "8000", "--workers", "4"]

# The CPU worker image: torch (CPU build) and the engines.
FROM base AS worker
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
RUN pip install --index-url ${TORCH_INDEX} torch==${TORCH_VERSION} \
 && pip install --require-hashes --no-deps -r requirements/worker.lock
COPY --from=build /wheels /wheels
RUN pip install --no-deps /wheels/presso-*.whl && presso doctor \
 && mkdir -p /scratch && chown presso:presso /scratch
USER presso
CMD ["presso", "worker", "--queues", "gpu,cpu"]

# The GPU worker image: the CUDA build of torch (it brings the CUDA runtime as nvidia-* wheels) and the
# tensor-core W4A16 kernel compiled at build time with nvcc from the nvidia-cuda-nvcc wheel, so the
# kernel loads without a compiler at run time (`presso doctor` prints "prebuilt"). TORCH_CUDA_ARCHS
# lists the GPU generations to build for.
FROM base AS worker-gpu
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX=https://download.pytorch.org/whl/cu128
ARG NVCC_PACKAGE=nvidia-cuda-nvcc-cu12
ARG TORCH_CUDA_ARCHS="sm_80 sm_90"
ENV PRESSO_KERNEL_CACHE=/opt/presso/kernels
RUN pip install --index-url ${TORCH_INDEX} torch==${TORCH_VERSION} \
 && pip install --require-hashes --no-deps -r requirements/worker.lock
COPY --from=build /wheels /wheels
RUN pip install --no-deps /wheels/presso-*.whl \
 && pip install ${NVCC_PACKAGE} \
 && PRESSO_NVCC=$(python -c "import nvidia.cuda_nvcc, os; print(os.path.join(nvidia.cuda_nvcc.__path__[0], 'bin', 'nvcc'))") \
    presso build-kernels --arch ${TORCH_CUDA_ARCHS} \
 && pip uninstall -y ${NVCC_PACKAGE} && chmod -R a+rX /opt/presso && presso doctor \
 && mkdir -p /scratch && chown presso:presso /scratch
USER presso
CMD ["presso", "worker", "--queues", "gpu,cpu"]
