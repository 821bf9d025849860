"""The Python SDK of the Presso REST API (docs/sdk.md).

``PressoClient`` (sync) and ``AsyncPressoClient`` (asyncio) return the typed models of presso.client.models and
raise ``PressoError`` with the API's error code; both retry connection errors and 429/502/503/504 with backoff,
honouring Retry-After (``RetryPolicy``).
"""

from presso.client.aio import AsyncPressoClient
from presso.client.config import ConfigError, default_api_key
from presso.client.core import PressoError, RetryPolicy
from presso.client.models import (
    TERMINAL,
    Artifact,
    ArtifactFile,
    Job,
    JobPage,
    LogEntry,
    LogPage,
    Method,
    Plan,
    Progress,
    Report,
)
from presso.client.sync import PressoClient, restore_dir

__all__ = [
    "TERMINAL", "Artifact", "ArtifactFile", "AsyncPressoClient", "ConfigError", "Job", "JobPage", "LogEntry",
    "LogPage", "Method", "Plan", "PressoClient", "PressoError", "Progress", "Report", "RetryPolicy",
    "default_api_key", "restore_dir",
]
