"""Prints where to look after a demo run: audio folder, manifest, Flower, Pushgateway,
Prometheus. `python -m devstack.where BATCH_ID`"""

from __future__ import annotations

import sys
from pathlib import Path

from core.settings import LOCAL_PORTS, Settings
from devstack.credentials import credentials_path, local_settings, read_credentials
from devstack.prometheus_ui import page_links

LOCAL_PROMETHEUS = f"http://127.0.0.1:{LOCAL_PORTS['prometheus']}"


def describe(batch_id: str, settings: Settings, *, prometheus_url: str = LOCAL_PROMETHEUS) -> str:
    out = Path("out").resolve()
    audio = sorted((out / batch_id).glob("*"))
    creds = read_credentials(settings.stack_dir)
    flower_user = creds.get("flower_user", "?")
    # Debian's Prometheus serves its pages under /classic/: ask it rather than assume.
    prom = page_links(prometheus_url)
    lines = [
        "",
        f"Audio ({len(audio)} files): {out / batch_id}/",
        f"Manifest:   {out / (batch_id + '.manifest.jsonl')}",
        f"Dashboard:  {out / (batch_id + '.dashboard.png')} (tts-batch dashboard draws it anew)",
        f"S3 objects: s3://{settings.s3_bucket}/audio/ at {settings.s3_endpoint}",
        f"Flower:     http://127.0.0.1:{LOCAL_PORTS['flower']}/  (user {flower_user}, password "
        f"in {credentials_path(settings.stack_dir)})",
        f"Pushgateway: {settings.pushgateway_url}/",
        f"Prometheus: {prom['graph']}",
        f"Alerts:     {prom['alerts']}  (targets: {prom['targets']})",
        "Stop the stack with: make down",
    ]
    return "\n".join(lines)


def main() -> int:
    if len(sys.argv) != 2:
        print("usage: python -m devstack.where BATCH_ID", file=sys.stderr)
        return 2
    print(describe(sys.argv[1], local_settings()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
