"""Where the SDK finds the server and the key: argument > environment > user config file > dev key."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from presso.client import ConfigError
from presso.client.config import config_path, read_config, resolve, write_config


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    for name in ("PRESSO_SERVER", "PRESSO_API_KEY", "PRESSO_PROFILE", "PRESSO_CONFIG"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("PRESSO_DATA_DIR", str(tmp_path / "nodata"))
    return tmp_path


def test_order_of_lookup(clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert resolve() == ("http://127.0.0.1:8000", None)
    (clean_env / "nodata").mkdir()
    (clean_env / "nodata" / "dev-api-key").write_text("presso_sk_dev\n")
    assert resolve()[1] == "presso_sk_dev"
    path = write_config("https://cfg.example/", "presso_sk_cfg")
    assert path == clean_env / "xdg" / "presso" / "config.toml" == config_path()
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    assert resolve() == ("https://cfg.example", "presso_sk_cfg")
    monkeypatch.setenv("PRESSO_API_KEY", "presso_sk_env")
    monkeypatch.setenv("PRESSO_SERVER", "http://env:1")
    assert resolve() == ("http://env:1", "presso_sk_env")
    assert resolve("http://arg:2", "presso_sk_arg") == ("http://arg:2", "presso_sk_arg")


def test_profiles(clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_config("https://prod.example", "presso_sk_prod")
    write_config("https://staging.example", "presso_sk_staging", profile="staging")
    assert resolve() == ("https://prod.example", "presso_sk_prod")
    assert resolve(profile="staging") == ("https://staging.example", "presso_sk_staging")
    monkeypatch.setenv("PRESSO_PROFILE", "staging")
    assert resolve()[1] == "presso_sk_staging"
    monkeypatch.setenv("PRESSO_PROFILE", "nope")
    with pytest.raises(ConfigError, match=r"no \[profiles.nope\]"):
        resolve()


def test_a_key_others_can_read_is_refused(clean_env: Path) -> None:
    path = write_config(None, "presso_sk_secret")
    os.chmod(path, 0o644)
    with pytest.raises(ConfigError, match="chmod 600"):
        read_config()
    os.chmod(path, 0o600)
    assert read_config()["api_key"] == "presso_sk_secret"


def test_bad_toml(clean_env: Path) -> None:
    path = config_path()
    path.parent.mkdir(parents=True)
    path.write_text("server = \n")
    with pytest.raises(ConfigError, match=str(path)):
        read_config()
