"""`tts-batch doctor`: check every service the batches need; say what is wrong and what fixes it."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from core.settings import Settings
from producer.cli.errors import EXIT_FAILED, EXIT_OK
from producer.cli.output import add_output_options, print_json, say


def register(sub: Any) -> None:
    p = sub.add_parser(
        "doctor",
        help="check Redis, S3, Pushgateway, Prometheus, Flower, workers, model and disk",
        description=(
            "Check every service the batches need and print, per check, OK or FAIL, what is "
            "wrong and the command or setting that fixes it. Each check answers within a few "
            "seconds, even with everything down. Exit 0 only if every check passes."
        ),
    )
    add_output_options(p)
    p.add_argument(
        "--prometheus",
        default=None,
        metavar="URL",
        help="Prometheus URL (default: the local stack's)",
    )
    p.add_argument(
        "--flower",
        default=None,
        metavar="URL",
        help="Flower URL, USER:PASSWORD@ in it for its login (default: the local stack's)",
    )
    p.add_argument(
        "--audio-dir",
        type=Path,
        default=Path("."),
        metavar="DIR",
        help="where `fetch` will write audio, for the free-disk check (default: here)",
    )
    p.set_defaults(run=_cmd_doctor)


def _cmd_doctor(args: argparse.Namespace, settings: Settings) -> int:
    from producer.doctor import run_checks

    checks = run_checks(_targets(args, settings))
    ok = all(c.ok for c in checks)
    if args.json:
        print_json({"ok": ok, "checks": [c.to_dict() for c in checks]})
    else:
        print(format_checks(checks))
    failed = sum(not c.ok for c in checks)
    verdict = f"{failed} of {len(checks)} checks fail" if failed else f"all {len(checks)} pass"
    say(f"doctor: {verdict}", quiet=args.quiet)
    return EXIT_OK if ok else EXIT_FAILED


def _targets(args: argparse.Namespace, settings: Settings) -> Any:
    from devstack.credentials import read_credentials
    from devstack.stack import LocalStack
    from producer.doctor import Targets

    # URLs Settings does not name default to the local stack's ports (its ports.json too).
    layout = LocalStack.from_settings(settings).layout
    host, ports = layout.host, layout.ports
    flower_url = args.flower or f"http://{host}:{ports.flower}"
    auth, flower_url = _split_login(flower_url)
    if auth is None and args.flower is None:
        creds = read_credentials(settings.stack_dir)
        if creds.get("flower_user"):
            auth = (creds["flower_user"], creds.get("flower_password", ""))
    return Targets(
        settings=settings,
        prometheus_url=args.prometheus or f"http://{host}:{ports.prometheus}",
        flower_url=flower_url,
        flower_auth=auth,
        audio_dir=args.audio_dir.resolve(),
    )


def _split_login(url: str) -> tuple[tuple[str, str] | None, str]:
    """(user, password) from `url`'s user info, and `url` without it."""
    parts = urlsplit(url)
    if parts.username is None:
        return None, url
    netloc = parts.netloc.rsplit("@", 1)[-1]
    return (parts.username, parts.password or ""), urlunsplit(parts._replace(netloc=netloc))


def format_checks(checks: Any) -> str:
    """A table: check, OK/FAIL, what was seen, the fix."""
    rows = [("CHECK", "STATUS", "DETAIL", "FIX")]
    rows += [(c.check, "OK" if c.ok else "FAIL", c.detail, c.fix) for c in checks]
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    lines = [
        f"{r[0]:<{widths[0]}}  {r[1]:<{widths[1]}}  {r[2]:<{widths[2]}}  {r[3]}".rstrip()
        for r in rows
    ]
    return "\n".join(lines)
