"""Named points in a job's pipeline where a fault test can stop or kill the process.

With `TTS_FAULT_POINT_DIR` set (a test knob, never set in production), each point drops a
marker file `<point>-<pid>-<ns>` there and then sleeps `TTS_FAULT_POINT_PAUSE` seconds: the
test sees which process reached which step and has that long to act. Unset, a point costs one
attribute read.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from core.settings import Settings

# Before the object lookup; after the upload, before the outcome is recorded.
LOOKUP, RECORD = "lookup", "record"


def reached(settings: Settings, point: str) -> None:
    if not settings.fault_point_dir:
        return
    marker = Path(settings.fault_point_dir) / f"{point}-{os.getpid()}-{time.time_ns()}"
    marker.write_text(point, encoding="utf-8")
    if settings.fault_point_pause > 0:
        time.sleep(settings.fault_point_pause)
