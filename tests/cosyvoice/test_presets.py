"""The speed presets: each is part of the engine identity, so two presets never share a cache
entry; an unknown one is refused naming the setting."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from core.contract import JobSpec, content_key
from core.errors import ConfigError
from core.settings import Settings
from worker.engines.cosyvoice.engine import CosyVoiceSynthesizer
from worker.engines.cosyvoice.presets import DEFAULT_PRESET, PRESETS, get_preset
from worker.synth import load_engine

pytestmark = pytest.mark.cosyvoice
pytest_plugins = ("tests.support.cosyvoice_fixtures",)

SPEC = JobSpec(text="Platform two.", speaker="英文女", lang="en", fmt="wav")


def test_every_preset_and_lever_gives_its_own_content_key() -> None:
    base: dict[str, str | int] = {"engine": "cosyvoice", "model": "m", "sample_rate": 22050}
    keys = {name: content_key({**base, **p.identity()}, SPEC) for name, p in PRESETS.items()}
    assert len(set(keys.values())) == len(PRESETS)
    # A preset redefined with one lever changed (a later release) is a new key as well.
    changed = dataclasses.replace(PRESETS["fast"], flow_steps=PRESETS["fast"].flow_steps + 1)
    assert content_key({**base, **changed.identity()}, SPEC) != keys["fast"]


def test_exact_is_the_default_and_exact() -> None:
    assert DEFAULT_PRESET == "exact" == Settings().cosyvoice_preset
    assert PRESETS["exact"].exact and PRESETS["upstream"].exact
    assert not PRESETS["fast"].exact


def test_unknown_preset_names_the_setting() -> None:
    with pytest.raises(ConfigError, match=r"TTS_COSYVOICE_PRESET.*upstream, exact, fast"):
        get_preset("turbo")


def test_unknown_preset_fails_before_the_model_loads(tiny_model_dir: Path) -> None:
    settings = Settings(engine="cosyvoice", model_dir=str(tiny_model_dir), cosyvoice_preset="turbo")
    with pytest.raises(ConfigError, match="TTS_COSYVOICE_PRESET"):
        load_engine(settings)


def test_engine_identity_names_its_preset(
    tiny_engine: CosyVoiceSynthesizer, tiny_model_dir: Path
) -> None:
    assert tiny_engine.identity()["preset"] == "exact"
    upstream = CosyVoiceSynthesizer(str(tiny_model_dir), threads=1, preset="upstream")
    assert upstream.identity()["preset"] == "upstream"
    assert content_key(upstream.identity(), SPEC) != content_key(tiny_engine.identity(), SPEC)
