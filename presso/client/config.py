"""Where the SDK and the CLI find the server URL and the API key.

Order (first found wins): the explicit argument, the environment (``PRESSO_SERVER``, ``PRESSO_API_KEY``), the
user config file, then the dev key that ``presso serve`` wrote into its data dir (``$PRESSO_DATA_DIR`` or
``./.presso``/dev-api-key). The user config file is ``$PRESSO_CONFIG`` or ``$XDG_CONFIG_HOME/presso/config.toml``
(``~/.config/presso/config.toml``)::

    server = "https://presso.example.com"
    api_key = "presso_sk_..."

    [profiles.staging]            # selected with PRESSO_PROFILE=staging (or profile="staging")
    server = "https://staging.presso.example.com"
    api_key = "presso_sk_..."

A config file that holds an API key and that other users can read is refused (``chmod 600`` it), as ssh does.
"""

from __future__ import annotations

import os
import stat
import tomllib
from pathlib import Path
from typing import Any

DEFAULT_SERVER = "http://127.0.0.1:8000"


class ConfigError(ValueError):
    """The user config file cannot be used (unreadable, not TOML, readable by others while holding a key)."""


def config_path() -> Path:
    explicit = os.environ.get("PRESSO_CONFIG")
    if explicit:
        return Path(explicit).expanduser()
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "presso" / "config.toml"


def read_config(profile: str | None = None) -> dict[str, str]:
    """``server`` / ``api_key`` from the user config file (its ``[profiles.NAME]`` table over the top level)."""
    path = config_path()
    if not path.is_file():
        return {}
    try:
        data: dict[str, Any] = tomllib.loads(path.read_text())
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{path}: {exc}") from None
    profile = profile or os.environ.get("PRESSO_PROFILE")
    values = {k: data[k] for k in ("server", "api_key") if isinstance(data.get(k), str)}
    if profile:
        table = (data.get("profiles") or {}).get(profile)
        if not isinstance(table, dict):
            raise ConfigError(f"{path}: no [profiles.{profile}] table")
        values.update({k: table[k] for k in ("server", "api_key") if isinstance(table.get(k), str)})
    if "api_key" in values and os.name == "posix" and path.stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(f"{path} holds an API key and other users can read it: chmod 600 {path}")
    return values


def write_config(server: str | None, api_key: str | None, profile: str | None = None) -> Path:
    """Write (or update) the user config file, created with mode 0600. Returns its path."""
    import json

    path = config_path()
    data: dict[str, Any] = {}
    if path.is_file():
        data = tomllib.loads(path.read_text())
    table = data.setdefault("profiles", {}).setdefault(profile, {}) if profile else data
    for key, value in (("server", server), ("api_key", api_key)):
        if value:
            table[key] = value
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [f"{k} = {json.dumps(v)}" for k, v in data.items() if isinstance(v, str)]
    for name, values in (data.get("profiles") or {}).items():
        lines += ["", f"[profiles.{name}]"] + [f"{k} = {json.dumps(v)}" for k, v in values.items()]
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write("\n".join(lines) + "\n")
    os.chmod(path, 0o600)
    return path


def resolve(server: str | None = None, api_key: str | None = None,
            profile: str | None = None) -> tuple[str, str | None]:
    """The server URL and API key by the order above."""
    config: dict[str, str] | None = None

    def from_config(key: str) -> str | None:
        nonlocal config
        if config is None:
            config = read_config(profile)
        return config.get(key)

    url = server or os.environ.get("PRESSO_SERVER") or from_config("server") or DEFAULT_SERVER
    key = api_key or os.environ.get("PRESSO_API_KEY") or from_config("api_key") or dev_api_key()
    return url.rstrip("/"), key


def dev_api_key() -> str | None:
    """The key ``presso serve`` wrote into its data dir, if any."""
    dev = Path(os.environ.get("PRESSO_DATA_DIR", ".presso")) / "dev-api-key"
    return dev.read_text().strip() if dev.is_file() else None


def default_api_key() -> str | None:
    """PRESSO_API_KEY, else the user config file, else the dev key of ``presso serve``."""
    return resolve()[1]
