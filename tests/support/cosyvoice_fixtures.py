"""Shared fixtures of the CosyVoice tests: the runtime check, a tiny random model built once
per session, and an engine loaded from it.

Test modules load them with `pytest_plugins = ("tests.support.cosyvoice_fixtures",)`.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from worker.engines.cosyvoice.model_dir import REQUIRED_FILES

if TYPE_CHECKING:
    from worker.engines.cosyvoice.engine import CosyVoiceSynthesizer


def require_runtime() -> None:
    """Skip the calling test unless the CosyVoice runtime imports (`make install-cosyvoice`)."""
    try:
        import cosyvoice.cli.cosyvoice  # noqa: F401
    except Exception as exc:  # ImportError, or a CUDA torchaudio's OSError
        message = f"CosyVoice runtime not importable (run make install-cosyvoice): {exc}"
        # `make test` installs the runtime first: there a missing runtime is a failure.
        if os.environ.get("TTS_REQUIRE_COSYVOICE"):
            pytest.fail(message)
        pytest.skip(message)


@pytest.fixture(scope="session")
def cosyvoice_runtime() -> None:
    require_runtime()


@pytest.fixture(scope="session")
def tiny_model_dir(cosyvoice_runtime: None, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random-weights model directory, written once per session. Treat as read-only."""
    from worker.engines.cosyvoice.random_model import make_random_model

    return make_random_model(tmp_path_factory.mktemp("cosyvoice") / "tiny", size="tiny", seed=0)


@pytest.fixture(scope="session")
def tiny_engine(tiny_model_dir: Path) -> CosyVoiceSynthesizer:
    """The tiny model loaded through the real loader (one thread: the tests run side by side
    with nothing else, and one thread is the worker's default on two cores with two
    processes)."""
    from worker.engines.cosyvoice.engine import CosyVoiceSynthesizer

    return CosyVoiceSynthesizer(str(tiny_model_dir), threads=1)


@pytest.fixture()
def copy_model(tiny_model_dir: Path, tmp_path: Path) -> Callable[..., Path]:
    """`copy_model(without=(...))`: a private copy of the tiny model, minus some files."""

    def make(*, without: tuple[str, ...] = ()) -> Path:
        target = tmp_path / "model"
        shutil.copytree(tiny_model_dir, target)
        for name in without:
            (target / name).unlink()
        return target

    return make


__all__ = [
    "REQUIRED_FILES",
    "copy_model",
    "cosyvoice_runtime",
    "require_runtime",
    "tiny_engine",
    "tiny_model_dir",
]
