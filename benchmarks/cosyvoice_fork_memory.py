"""Memory of a worker that loads CosyVoice in its parent and forks N pool processes.

    python -m benchmarks.cosyvoice_fork_memory [--model-dir DIR] [--children 2]

Loads the model the way a worker does (`engine_host.preload`), forks the children, lets each
synthesize one short sentence with one thread, and reports each process's RSS and PSS
(proportional set size: shared pages divided among the processes sharing them) from
/proc/PID/smaps_rollup. Use the full-size random model that `benchmarks.cosyvoice_bench` builds.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from benchmarks.cosyvoice_bench import DEFAULT_DIR, ensure_model

TEXT = "Mind the gap."


def memory_gb(pid: int) -> dict[str, float]:
    """RSS, PSS and private memory of `pid` in GB."""
    fields: dict[str, float] = {}
    with open(f"/proc/{pid}/smaps_rollup", encoding="utf-8") as f:
        for line in f:
            parts = line.split()
            if parts[0] in {"Rss:", "Pss:", "Private_Clean:", "Private_Dirty:"}:
                fields[parts[0].rstrip(":")] = int(parts[1]) / 2**20
    return {
        "rss": round(fields["Rss"], 2),
        "pss": round(fields["Pss"], 2),
        "private": round(fields["Private_Clean"] + fields["Private_Dirty"], 2),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.cosyvoice_fork_memory")
    parser.add_argument("--model-dir", type=Path, default=DEFAULT_DIR)
    parser.add_argument("--children", type=int, default=2)
    args = parser.parse_args(argv)
    ensure_model(args.model_dir.resolve())

    from core.settings import Settings
    from worker import engine_host

    settings = Settings(engine="cosyvoice", model_dir=str(args.model_dir.resolve()), threads=1)
    engine_host.preload(settings)
    parent_after_load = memory_gb(os.getpid())
    children = []
    for _ in range(args.children):
        read_end, write_end = os.pipe()
        go_read, go_write = os.pipe()
        pid = os.fork()
        if pid == 0:
            engine_host.init_pool_process()
            engine_host.current().synthesize(TEXT, speaker="英文女", lang="en")
            os.write(write_end, b"done")
            os.read(go_read, 1)  # stay alive until the parent has measured
            os._exit(0)
        children.append((pid, read_end, go_write))
    started = time.monotonic()
    for _, read_end, _ in children:
        os.read(read_end, 4)
    report = {
        "children": args.children,
        "parent_after_load_gb": parent_after_load,
        "parent_gb": memory_gb(os.getpid()),
        "children_gb": [memory_gb(pid) for pid, _, _ in children],
        "children_seconds": round(time.monotonic() - started, 1),
    }
    for pid, _, go_write in children:
        os.write(go_write, b"x")
        os.waitpid(pid, 0)
    total_pss = report["parent_gb"]["pss"] + sum(c["pss"] for c in report["children_gb"])
    report["total_pss_gb"] = round(total_pss, 2)
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
