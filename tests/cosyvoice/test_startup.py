"""Worker start-up: the engine loads once in the parent and the pool forks after it.

- forked children of a parent that loaded the model synthesize (with two threads each);
- the control: a parent that ran a multi-threaded torch op before forking hangs (or aborts)
  its children (pytorch#17199), so the first test would catch a load path that started a
  thread pool;
- a real Celery worker (prefork, two processes) with a missing or incomplete model directory
  exits at once with EX_CONFIG and one line naming what is missing;
- a real Celery worker with the tiny model answers tasks from pool processes that did not
  load anything themselves.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from worker.engine_host import EX_CONFIG

pytestmark = pytest.mark.cosyvoice
pytest_plugins = ("tests.support.cosyvoice_fixtures",)

ROOT = Path(__file__).resolve().parents[2]
TEXT = "Doors are closing, please stand clear."

# Runs in a fresh interpreter: preload as a prefork worker parent does (batch 1: the hazard is
# prefork's), then fork two children that each set two threads and synthesize. CONTROL adds a
# multi-threaded op in the parent first.
_FORK_SCRIPT = """
import json, os, sys, time
import numpy as np
from core.settings import Settings
from worker import engine_host
settings = Settings(engine="cosyvoice", model_dir=sys.argv[1], threads=2, engine_batch=1)
engine_host.preload(settings)
import torch
assert torch.get_num_threads() == 1, torch.get_num_threads()
if sys.argv[2] == "control":
    torch.set_num_threads(2)
    a = torch.randn(2000, 2000)
    (a @ a).sum()
    torch.relu(torch.randn(10_000_000)).sum()
children = {}
for i in range(2):
    out = f"{sys.argv[3]}/child{i}.npy"
    pid = os.fork()
    if pid == 0:
        engine_host.init_pool_process()
        audio = engine_host.current().synthesize(sys.argv[5], speaker="英文女", lang="en")
        np.save(out, audio)
        os._exit(0 if torch.get_num_threads() == 2 else 3)
    children[pid] = out
deadline = time.monotonic() + float(sys.argv[4])
status = {}
while children.keys() - status.keys() and time.monotonic() < deadline:
    for pid in children.keys() - status.keys():
        done, code = os.waitpid(pid, os.WNOHANG)
        if done:
            status[pid] = os.waitstatus_to_exitcode(code)
    time.sleep(0.05)
for pid in children.keys() - status.keys():
    os.kill(pid, 9)
    os.waitpid(pid, 0)
    status[pid] = "hung"
print(json.dumps([status[pid] for pid in children]))
"""


def _run_fork_script(model: Path, mode: str, out: Path, deadline: float) -> list[Any]:
    proc = subprocess.run(
        [sys.executable, "-c", _FORK_SCRIPT, str(model), mode, str(out), str(deadline), TEXT],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=deadline + 180,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return list(json.loads(proc.stdout.strip().splitlines()[-1]))


def test_children_of_a_preloading_parent_synthesize(tiny_model_dir: Path, tmp_path: Path) -> None:
    import numpy as np

    assert _run_fork_script(tiny_model_dir, "preload", tmp_path, deadline=120) == [0, 0]
    first, second = (np.load(tmp_path / f"child{i}.npy") for i in range(2))
    assert first.size > 0 and np.isfinite(first).all()
    assert np.array_equal(first, second)


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="the hazard needs a multi-thread pool")
def test_control_a_thread_pool_in_the_parent_hangs_the_children(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    # The children need about a second; 20 s without an answer is a hang. Seen here: both hang,
    # or one aborts (SIGABRT in libgomp) and the other hangs. Neither ever finishes.
    statuses = _run_fork_script(tiny_model_dir, "control", tmp_path, deadline=20)
    assert all(status == "hung" or status < 0 for status in statuses), statuses


def _start_worker(tmp_path: Path, model_dir: str, **env: str) -> subprocess.Popen[str]:
    environ = {
        **os.environ,
        "COSYVOICE_TEST_QUEUE_DIR": str(tmp_path / "broker"),
        "TTS_ENGINE": "cosyvoice",
        "TTS_MODEL_DIR": model_dir,
        "TTS_THREADS": "1",
        **env,
    }
    for sub in ("queue", "control", "results"):
        (tmp_path / "broker" / sub).mkdir(parents=True, exist_ok=True)
    return subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "tests.support.cosyvoice_celery_app", "worker",
         "--pool", "prefork", "--concurrency", "2", "--loglevel", "WARNING",
         "--hostname", f"cosy{os.getpid()}@localhost", "--without-heartbeat",
         "--without-gossip", "--without-mingle"],
        cwd=ROOT,
        env=environ,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )  # fmt: skip


@pytest.fixture()
def stop_workers() -> Iterator[list[subprocess.Popen[str]]]:
    started: list[subprocess.Popen[str]] = []
    yield started
    for proc in started:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


@pytest.mark.parametrize("case", ["no directory", "no llm.pt"])
def test_worker_with_a_bad_model_dir_stops_with_one_line(
    case: str, tmp_path: Path, stop_workers: list[subprocess.Popen[str]]
) -> None:
    model = tmp_path / "model"
    if case == "no llm.pt":
        model.mkdir()
        for name in ("cosyvoice.yaml", "flow.pt", "hift.pt", "spk2info.pt", "campplus.onnx",
                     "speech_tokenizer_v1.onnx"):  # fmt: skip
            (model / name).write_bytes(b"x")
    proc = _start_worker(tmp_path, str(model))
    stop_workers.append(proc)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == EX_CONFIG, stderr[-2000:]
    lines = [line for line in stderr.splitlines() if line.startswith("tts-batch worker:")]
    assert len(lines) == 1, stderr[-2000:]
    expected = "is not a directory" if case == "no directory" else "model files: llm.pt"
    assert expected in lines[0] and str(model) in lines[0]
    assert "Traceback" not in stderr


def test_worker_loads_once_in_the_parent_and_children_serve(
    tiny_model_dir: Path, tmp_path: Path, stop_workers: list[subprocess.Popen[str]]
) -> None:
    proc = _start_worker(tmp_path, str(tiny_model_dir))
    stop_workers.append(proc)
    from tests.support.cosyvoice_celery_app import make_app

    client = make_app(tmp_path / "broker")
    results = [client.send_task("cosyvoice_test.say", args=(TEXT, spk, "en")) for spk in
               ("英文女", "英文男", "英文女")]  # fmt: skip
    deadline = time.monotonic() + 240
    answers = []
    for result in results:
        while not result.ready():
            assert proc.poll() is None, proc.communicate()[1][-2000:]
            assert time.monotonic() < deadline, "no answer from the worker in 240 s"
            time.sleep(0.2)
        answers.append(result.get(timeout=5))
    for answer in answers:
        assert answer["finite"] and answer["samples"] > 0
        assert answer["sample_rate"] == 22050
        assert answer["loaded_in"] == proc.pid  # loaded in the parent ...
        assert answer["pid"] != proc.pid  # ... served by a pool process
        assert answer["threads"] == 1
    assert answers[0]["sha256"] == answers[2]["sha256"]
    assert answers[0]["sha256"] != answers[1]["sha256"]
