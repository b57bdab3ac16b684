"""Settings from the environment: types, secrets from files, clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from core.errors import ConfigError
from core.settings import Settings
from devstack.credentials import credentials_path, local_settings


def test_defaults_point_at_the_local_stack(tmp_path: Path) -> None:
    settings = Settings.from_env({"TTS_STACK_DIR": str(tmp_path)})
    assert settings.broker_url == "redis://127.0.0.1:16379/0"
    assert settings.results_url == settings.broker_url
    assert settings.max_chars == 500
    assert len(settings.speakers) == 7


def test_types_are_parsed() -> None:
    env = {
        "TTS_MAX_CHARS": "80",
        "TTS_S3_CREATE_BUCKET": "no",
        "TTS_FAKE_DELAY": "0.5",
        "TTS_SPEAKERS": "a, b ,c",
    }
    settings = Settings.from_env(env)
    assert settings.max_chars == 80
    assert settings.s3_create_bucket is False
    assert settings.fake_delay == 0.5
    assert settings.speakers == ("a", "b", "c")


@pytest.mark.parametrize(
    ("name", "value"),
    [("TTS_MAX_CHARS", "many"), ("TTS_S3_CREATE_BUCKET", "maybe"), ("TTS_THREADS", "-1")],
)
def test_bad_values_name_the_variable(name: str, value: str) -> None:
    with pytest.raises(ConfigError, match=name):
        Settings.from_env({name: value})


def test_secret_from_file_and_not_in_repr(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text("s3cr3t-value\n")
    settings = Settings.from_env({"TTS_S3_ACCESS_KEY": "ak", "TTS_S3_SECRET_KEY_FILE": str(secret)})
    assert settings.s3_secret_key == "s3cr3t-value"
    assert "s3cr3t-value" not in repr(settings)


def test_stack_credentials_are_the_fallback(tmp_path: Path) -> None:
    credentials_path(str(tmp_path)).write_text(
        json.dumps({"access_key": "stack-ak", "secret_key": "stack-sk"})
    )
    settings = local_settings({"TTS_STACK_DIR": str(tmp_path)})
    assert (settings.s3_access_key, settings.s3_secret_key) == ("stack-ak", "stack-sk")
    explicit = local_settings(
        {"TTS_STACK_DIR": str(tmp_path), "TTS_S3_ACCESS_KEY": "a", "TTS_S3_SECRET_KEY": "b"}
    )
    assert explicit.s3_secret_key == "b"


def test_to_env_round_trips(tmp_path: Path) -> None:
    settings = Settings(
        max_chars=77, speakers=("x", "y"), s3_create_bucket=False, stack_dir=str(tmp_path)
    )
    assert Settings.from_env(settings.to_env()) == settings


def test_visibility_timeout_exceeds_longest_job() -> None:
    settings = Settings()
    longest = (
        settings.task_time_base_seconds
        + settings.task_time_per_char_seconds * settings.max_chars
        + settings.task_time_grace_seconds
    )
    assert settings.visibility_timeout_seconds > longest


def test_stack_redis_password_goes_into_the_default_broker_url(tmp_path: Path) -> None:
    credentials_path(str(tmp_path)).write_text(
        json.dumps({"access_key": "a", "secret_key": "s", "redis_password": "p/w@1"})
    )
    settings = local_settings({"TTS_STACK_DIR": str(tmp_path)})
    assert settings.broker_url == "redis://:p%2Fw%401@127.0.0.1:16379/0"
    assert "p%2Fw%401" not in repr(settings)
    # A broker URL given by the environment is the user's: left as it is.
    given = local_settings({"TTS_STACK_DIR": str(tmp_path), "TTS_BROKER_URL": "redis://h/0"})
    assert given.broker_url == "redis://h/0"


def test_settings_from_env_never_read_the_credentials_file(tmp_path: Path) -> None:
    credentials_path(str(tmp_path)).write_text(json.dumps({"access_key": "a", "secret_key": "s"}))
    assert Settings.from_env({"TTS_STACK_DIR": str(tmp_path)}).s3_access_key == ""


@pytest.mark.parametrize("text", ["{not json", "[1, 2]"])
def test_corrupt_credentials_file_is_one_config_error(tmp_path: Path, text: str) -> None:
    credentials_path(str(tmp_path)).write_text(text)
    with pytest.raises(ConfigError, match="unreadable stack credentials"):
        local_settings({"TTS_STACK_DIR": str(tmp_path)})
