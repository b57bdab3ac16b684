"""The loader (`worker.engines.cosyvoice.loader`) against upstream `CosyVoice(dir)`:

- the same audio for the same seed, speaker and text, and the same speakers and rate;
- Chinese and English text normalize as through freshly compiled FSTs;
- a second load reads the cached FSTs (no rebuild); a read-only model directory caches them
  in the caller's folder; concurrent first builds leave one complete cache;
- what the loader swaps while it runs (normalizer classes, torch.load, torch.nn.init) is
  restored, and a fresh process that loads never imports modelscope or `CosyVoice`.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from worker.engines.cosyvoice import fst_cache
from worker.engines.cosyvoice.model_dir import RANDOM_MARKER, REQUIRED_FILES

pytestmark = pytest.mark.cosyvoice
pytest_plugins = ("tests.support.cosyvoice_fixtures",)

ROOT = Path(__file__).resolve().parents[2]
ZH_TEXTS = (
    "今天是2024年3月5日，气温-3.5度，花了￥120元。",
    "第1名的成绩是9.58秒，比分3:2，电话010-12345678。",
    "他有1/3的股份，增长了45%，共1200万人。",
    "下午3点15分在2号站台上车，全程约1.5公里。",
)
EN_TEXTS = (
    "On Jan. 5th, 2024 at 3:30pm, Dr. Smith paid $12.50 for 3 kg of apples.",
    "Call 555-1234 before 10:45 a.m.; the 2nd train leaves from platform 9.",
    "The 1990s saw 25% growth, about 1,234,567 units and 3.14 m of cable.",
)


def _synthesize(model: Any, text: str, speaker: str) -> Any:
    import numpy as np
    import torch

    torch.manual_seed(1234)
    model_input = model.frontend.frontend_sft(text, speaker)
    pieces = [
        out["tts_speech"].reshape(-1).numpy()
        for out in model.model.tts(**model_input, stream=False, speed=1.0)
    ]
    return np.concatenate(pieces)


@pytest.fixture()
def bare_model(tiny_model_dir: Path, tmp_path: Path) -> Path:
    """A private copy of the tiny model's files only (no FST cache from earlier tests)."""
    target = tmp_path / "model"
    target.mkdir()
    for name in (*REQUIRED_FILES, RANDOM_MARKER):
        shutil.copy2(tiny_model_dir / name, target / name)
    return target


@pytest.fixture(scope="module")
def fresh_normalizers(
    cosyvoice_runtime: None, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Any, Any]:
    """WeTextProcessing's normalizers compiled now, with upstream's options, in memory."""
    from tn.chinese.normalizer import Normalizer as ZhNormalizer
    from tn.english.normalizer import Normalizer as EnNormalizer

    folder = tmp_path_factory.mktemp("fresh-fst")
    zh = ZhNormalizer(
        cache_dir=str(folder), overwrite_cache=True, remove_erhua=False, full_to_half=False
    )
    en = EnNormalizer(cache_dir=str(folder), overwrite_cache=True)
    return zh, en


def _fst_state(folder: Path) -> dict[str, tuple[int, int]]:
    return {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in sorted(folder.rglob("*"))}


def test_same_audio_speakers_and_rate_as_upstream(tiny_model_dir: Path) -> None:
    import numpy as np
    from cosyvoice.cli.cosyvoice import CosyVoice

    from worker.engines.cosyvoice.loader import load_cosyvoice

    ours = load_cosyvoice(tiny_model_dir, cache_dir=None)
    # Upstream's own load (it recompiles the Chinese FSTs into site-packages, as it always does).
    theirs = CosyVoice(str(tiny_model_dir))
    assert ours.sample_rate == theirs.sample_rate
    assert ours.list_available_spks() == theirs.list_available_spks()
    for text, speaker in (
        ("Doors are closing, please stand clear.", "英文女"),
        ("各位旅客请注意，列车即将进站。", "中文女"),
    ):
        mine, upstream = _synthesize(ours, text, speaker), _synthesize(theirs, text, speaker)
        assert mine.size > 0 and np.isfinite(mine).all()
        assert np.array_equal(mine, upstream), text


def test_cached_fsts_normalize_like_fresh_ones(
    bare_model: Path, fresh_normalizers: tuple[Any, Any]
) -> None:
    from worker.engines.cosyvoice.loader import load_cosyvoice

    fresh_zh, fresh_en = fresh_normalizers
    load_cosyvoice(bare_model, cache_dir=None)  # builds the cache
    frontend = load_cosyvoice(bare_model, cache_dir=None).frontend  # reads it
    for text in ZH_TEXTS:
        assert frontend.zh_tn_model.normalize(text) == fresh_zh.normalize(text)
    for text in EN_TEXTS:
        assert frontend.en_tn_model.normalize(text) == fresh_en.normalize(text)
    # Not vacuous: the rules did rewrite the numbers.
    assert "二零二四" in frontend.zh_tn_model.normalize(ZH_TEXTS[0])
    assert "twenty twenty four" in frontend.en_tn_model.normalize(EN_TEXTS[0])


def test_second_load_reuses_the_cache(
    bare_model: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from worker.engines.cosyvoice.loader import load_cosyvoice

    fallback = tmp_path / "fallback"
    caplog.set_level(logging.INFO, logger=fst_cache.__name__)
    load_cosyvoice(bare_model, cache_dir=fallback)
    cache = bare_model / fst_cache.MODEL_DIR_CACHE
    built = _fst_state(cache)
    assert not [p for p in cache.iterdir() if p.name.startswith(".")]  # no staging left
    assert any(name.endswith("zh_tn_tagger.fst") for name in built)
    assert "building" in caplog.text
    caplog.clear()
    load_cosyvoice(bare_model, cache_dir=fallback)
    assert _fst_state(cache) == built  # same files: not rewritten, not renamed over
    assert "building" not in caplog.text
    assert not fallback.exists()  # the model directory was writable


@pytest.fixture()
def read_only_model(bare_model: Path) -> Iterator[Path]:
    """`bare_model`, read-only for this process: mode 0555 for a normal user; a read-only
    bind mount for root (whom file modes do not stop)."""
    if os.geteuid() != 0:
        bare_model.chmod(0o555)
        yield bare_model
        bare_model.chmod(0o755)
        return
    mounted = bare_model.parent / "read-only"
    mounted.mkdir()
    try:
        subprocess.run(["mount", "--bind", str(bare_model), str(mounted)], check=True)
    except (OSError, subprocess.CalledProcessError) as exc:
        pytest.skip(f"cannot make a read-only directory as root here: {exc}")
    try:
        subprocess.run(["mount", "-o", "remount,ro,bind", str(mounted)], check=True)
        yield mounted
    finally:
        subprocess.run(["umount", str(mounted)], check=True)


def test_read_only_model_dir_caches_in_the_given_folder(
    read_only_model: Path, tmp_path: Path
) -> None:
    from worker.engines.cosyvoice.loader import load_cosyvoice

    with pytest.raises(OSError):
        (read_only_model / "probe").write_text("x")
    fallback = tmp_path / "fallback"
    model = load_cosyvoice(read_only_model, cache_dir=fallback)
    assert "二零二四" in model.frontend.zh_tn_model.normalize(ZH_TEXTS[0])
    assert not (read_only_model / fst_cache.MODEL_DIR_CACHE).exists()
    (folder,) = fallback.iterdir()
    assert folder.name.startswith("zh_tn-") and fst_cache.complete(folder, "zh_tn")
    built = _fst_state(fallback)
    load_cosyvoice(read_only_model, cache_dir=fallback)
    assert _fst_state(fallback) == built


def test_concurrent_first_builds_leave_one_complete_cache(tmp_path: Path) -> None:
    # Four builders start together (a barrier inside the build); each writes its own staging
    # folder, one rename wins, and every caller ends up with the same complete folder.
    builders = 4
    barrier = threading.Barrier(builders)
    results: list[Path | None] = []
    errors: list[BaseException] = []

    def build(staging: Path) -> None:
        barrier.wait(timeout=30)
        for name in fst_cache.fst_files("zh_tn"):
            (staging / name).write_bytes(os.urandom(1 << 16))

    def run() -> None:
        try:
            results.append(fst_cache.build_cached([tmp_path], "key", "zh_tn", build))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(builders)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors, errors
    assert results == [tmp_path / "key"] * builders
    assert [p.name for p in tmp_path.iterdir()] == ["key"]  # no staging folder left behind
    assert fst_cache.complete(tmp_path / "key", "zh_tn")


def test_unwritable_roots_are_skipped(tmp_path: Path) -> None:
    blocked = tmp_path / "a-file"
    blocked.write_text("not a folder")

    def build(staging: Path) -> None:
        for name in fst_cache.fst_files("zh_tn"):
            (staging / name).write_text("fst")

    assert fst_cache.build_cached([blocked / "cache"], "k", "zh_tn", build) is None
    assert fst_cache.build_cached([blocked / "cache", tmp_path / "ok"], "k", "zh_tn", build) == (
        tmp_path / "ok" / "k"
    )


def test_what_the_loader_swaps_is_restored(tiny_model_dir: Path) -> None:
    import cosyvoice.cli.frontend as frontend_module
    import torch

    from worker.engines.cosyvoice.loader import load_cosyvoice

    before = (
        frontend_module.ZhNormalizer,
        frontend_module.EnNormalizer,
        torch.load,
        torch.nn.init.kaiming_uniform_,
        torch.nn.init.normal_,
    )
    load_cosyvoice(tiny_model_dir, cache_dir=None)
    after = (
        frontend_module.ZhNormalizer,
        frontend_module.EnNormalizer,
        torch.load,
        torch.nn.init.kaiming_uniform_,
        torch.nn.init.normal_,
    )
    assert after == before
    weight = torch.nn.Linear(64, 64).weight
    assert weight.abs().sum() > 0  # the init runs again


def test_missing_directory_is_an_error_not_a_hub_id(tmp_path: Path) -> None:
    from worker.engines.cosyvoice.loader import load_cosyvoice

    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_cosyvoice(tmp_path / "iic" / "CosyVoice-300M-SFT", cache_dir=None)


_FRESH_LOAD = """
import json, sys
from worker.engines.cosyvoice.loader import load_cosyvoice
model = load_cosyvoice(sys.argv[1], cache_dir=None)
print(json.dumps({
    "speakers": len(model.list_available_spks()),
    "modules": [m for m in ("modelscope", "cosyvoice.cli.cosyvoice") if m in sys.modules],
}))
"""


def test_a_fresh_load_imports_neither_modelscope_nor_cosyvoice_class(
    tiny_model_dir: Path,
) -> None:
    proc = subprocess.run(
        [sys.executable, "-c", _FRESH_LOAD, str(tiny_model_dir)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report == {"speakers": 7, "modules": []}
