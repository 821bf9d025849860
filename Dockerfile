# syntax=docker/dockerfile:1
# Two targets: `api` (no torch) and `worker` (torch + engines).
#   docker build --target api -t presso-api .
#   docker build --target worker -t presso-worker .

FROM python:3.11-slim AS base
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
RUN useradd --create-home --uid 10001 presso
WORKDIR /srv/presso
COPY pyproject.toml README.md alembic.ini ./
COPY app ./app
COPY workers ./workers
COPY compression ./compression
COPY kernels ./kernels
COPY presso ./presso
COPY migrations ./migrations

# The API image: FastAPI + SQLAlchemy + Celery client; the app never imports torch.
FROM base AS api
RUN pip install .
USER presso
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=3s CMD python -c "import urllib.request,sys; urllib.request.urlopen('http://127.0.0.1:8000/healthz')" || exit 1
# `presso api` runs uvicorn with TCP_NODELAY on every connection (plain `uvicorn --workers` leaves Nagle on)
CMD ["presso", "api", "--host", "0.0.0.0", "--port", "8000", "--workers", "4"]

# The worker image: torch and the engines. For GPUs build FROM an image with CUDA and install the CUDA
# torch wheel instead (TORCH_INDEX=https://download.pytorch.org/whl/cu124).
FROM base AS worker
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
RUN pip install --index-url ${TORCH_INDEX} torch==${TORCH_VERSION} && pip install '.[engine]'
USER presso
CMD ["presso", "worker", "--queues", "gpu,cpu"]
