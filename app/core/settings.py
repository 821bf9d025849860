"""Settings from the environment (prefix ``PRESSO_``). One object, passed around explicitly."""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


def _split_list(value: Any) -> Any:
    """Accept a JSON list, or a comma / os.pathsep separated string."""
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            import json

            return json.loads(text)
        parts = text.replace(os.pathsep, ",").split(",")
        return [p.strip() for p in parts if p.strip()]
    return value


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="PRESSO_", extra="ignore")

    # Where the embedded default keeps everything (SQLite file, queue folders, local artifacts).
    data_dir: Path = Field(default=Path(".presso"))
    database_url: str | None = Field(default=None, description="SQLAlchemy URL; default SQLite in data_dir.")
    broker_url: str | None = Field(default=None, description="Celery broker; default filesystem:// in data_dir.")
    broker_key_prefix: str = Field(
        default="", max_length=64,
        description="Prefix of every Redis key of the queue and the rate limiter: deployments (or test sessions) "
                    "sharing one Redis database then never consume each other's tasks.")
    store_url: str | None = Field(default=None, description="s3://bucket/prefix or a directory path.")
    db_pool_size: int = Field(default=10, ge=1, description="Postgres connections kept per process.")
    db_max_overflow: int = Field(default=5, ge=0, description="Extra connections per process under load.")
    db_pool_timeout_s: float = Field(default=10.0, gt=0, description="Wait for a free connection, then 500.")
    s3_endpoint_url: str | None = None
    s3_public_endpoint_url: str | None = Field(
        default=None, description="The S3 endpoint as clients outside the service's network reach it: presigned "
        "download URLs are signed for it (default: s3_endpoint_url).")
    s3_region: str = "us-east-1"
    presign_expires_s: int = Field(default=600, ge=30, le=3600)

    # Auth and limits.
    auth: Literal["keys", "disabled"] = "keys"
    admin_key: SecretStr | None = None
    rate_limit_per_s: float = Field(default=50.0, ge=0, description="Tokens per second per key; 0 = off.")
    rate_limit_burst: int = Field(default=100, ge=1)
    max_active_jobs_per_tenant: int = Field(default=100, ge=1)

    # Model URIs.
    allowed_uri_schemes: Annotated[list[str], NoDecode] = Field(default_factory=lambda: ["s3", "https", "hf", "file"])
    allowed_file_roots: Annotated[list[Path], NoDecode] = Field(default_factory=list)
    fetch_allow_private_hosts: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="CIDRs or host names reachable although private (tests, in-cluster)."
    )
    fetch_allow_http: bool = Field(default=False, description="Allow plain http:// model URIs (never in prod).")
    max_model_bytes: int = Field(default=64 * 2**30, ge=1)
    max_model_params: int | None = None
    max_model_files: int = Field(default=256, ge=1)
    fetch_timeout_s: float = Field(default=3600.0, gt=0)
    fetch_s3_max_concurrency: int = Field(default=8, ge=1, le=64, description="Parallel ranged GETs per S3 object.")
    fetch_s3_part_mb: int = Field(default=16, ge=1, le=5120,
                                  description="S3 objects from this size on are fetched in ranged parts of this size.")
    model_cache_dir: Path | None = Field(
        default=None, description="A worker's model cache (docs/model-cache.md), best on the filesystem of work_dir "
        "(jobs get hard links); unset = no cache.")
    model_cache_gb: float = Field(default=100.0, ge=0, description="The model cache's quota; 0 = no cache.")
    model_cache_verify: Literal["sample", "sha256"] = Field(
        default="sample", description="Check of a cache entry on every use: size, mtime and a digest of each file's "
        "first and last MiB ('sample'), or a full re-hash ('sha256').")

    # Webhooks (callback_url): the URL passes the model-URI guard (fetch_allow_private_hosts, fetch_allow_http).
    webhook_max_attempts: int = Field(default=6, ge=1, le=20, description="Deliveries tried per job event.")
    webhook_backoff_s: float = Field(default=5.0, ge=0, description="First retry delay; doubles per attempt.")
    webhook_max_backoff_s: float = Field(default=600.0, gt=0)
    webhook_timeout_s: float = Field(default=10.0, gt=0, description="Per delivery attempt.")
    webhook_poll_s: float = Field(default=2.0, gt=0, description="How often workers look for due deliveries.")

    # Jobs and workers.
    max_attempts: int = Field(default=3, ge=1)
    lease_s: float = Field(default=60.0, gt=0)
    retry_backoff_s: float = Field(default=5.0, ge=0)
    republish_after_s: float = Field(default=120.0, gt=0, description="Queued this long unclaimed -> republish.")
    reaper_interval_s: float = Field(default=15.0, gt=0)
    worker_heartbeat_s: float = Field(
        default=2.0, ge=0,
        description="Each worker process beats its own row this often and checks its job processes and the other "
                    "workers' beats; 0 = off (a lost job waits for its lease to expire).")
    worker_dead_after_s: float = Field(
        default=10.0, gt=0,
        description="A worker silent this long is dead: its running jobs are requeued at once, before their leases "
                    "expire.")
    job_soft_time_limit_s: int = Field(default=6 * 3600, ge=1)
    job_time_limit_s: int = Field(default=6 * 3600 + 300, ge=1)
    worker_queues: Annotated[list[str], NoDecode] = Field(default_factory=lambda: ["gpu", "cpu"])
    worker_preload: bool = Field(default=True, description="Import torch once in the worker parent process.")
    work_dir: Path | None = Field(default=None, description="Parent of job temp dirs; default system temp.")
    worker_classes: Annotated[list[dict[str, Any]], NoDecode] = Field(
        default_factory=list,
        description="JSON list of the deployment's worker classes, each {name, gpus, gpu_memory_gb, host_memory_gb, "
                    "disk_gb} (optional effective rates: gpu_tflops, cpu_tflops, fetch_mbs, ...): the resource "
                    "planner refuses a job none can run. Empty: this machine.")
    plan_at_submit: Literal["off", "local", "remote"] = Field(
        default="local",
        description="Plan (and refuse with insufficient_resources) at submit: 'local' for file:// models only, "
                    "'remote' also s3:// and https:// (ranged reads of the headers), 'off' never. Workers plan "
                    "every job before its fetch.")
    plan_timeout_s: float = Field(default=10.0, gt=0, description="Time limit of reading a model's headers.")
    device: str | None = Field(default=None, description="Torch device for jobs; None = CUDA when present.")

    _split = field_validator(
        "allowed_uri_schemes", "allowed_file_roots", "worker_queues", "fetch_allow_private_hosts", mode="before"
    )(_split_list)

    @field_validator("worker_classes", mode="before")
    @classmethod
    def _json_list(cls, value: Any) -> Any:
        if isinstance(value, str):
            import json

            return json.loads(value) if value.strip() else []
        return value

    # Derived values ---------------------------------------------------------------------------
    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'presso.db').resolve()}"

    @property
    def resolved_broker_url(self) -> str:
        return self.broker_url or "filesystem://"

    @property
    def resolved_store_url(self) -> str:
        return self.store_url or str((self.data_dir / "artifacts").resolve())

    @property
    def queue_dir(self) -> Path:
        return (self.data_dir / "queue").resolve()

    @property
    def is_sqlite(self) -> bool:
        return self.resolved_database_url.startswith("sqlite")

    @property
    def dev_key_path(self) -> Path:
        return self.data_dir / "dev-api-key"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
