"""The README's CLI section matches `tts-batch --help`: every command, and every option it shows."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from producer.cli import build_parser

README = Path(__file__).resolve().parents[1] / "README.md"


def _cli_block() -> list[str]:
    text = README.read_text(encoding="utf-8")
    section = text.split("### CLI", 1)[1]
    block = section.split("```sh", 1)[1].split("```", 1)[0]
    return [line for line in block.splitlines() if line.startswith("tts-batch")]


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _options(parser: argparse.ArgumentParser) -> set[str]:
    return {flag for action in parser._actions for flag in action.option_strings}


def test_every_command_is_in_the_readme_and_every_readme_command_exists() -> None:
    commands = _subcommands(build_parser())
    shown: set[str] = set()
    for line in _cli_block():
        usage = line.split("#", 1)[0]
        # `tts-batch up [...] | down | ps` shows three commands on one line.
        for part in usage.split("|"):
            words = part.replace("tts-batch", " ").split()
            names = [w for w in words if w in commands]
            if names:
                shown.add(names[0])
    assert shown == set(commands), (
        f"in --help, not in the README: {sorted(set(commands) - shown)}; "
        f"in the README, not in --help: {sorted(shown - set(commands))}"
    )


def test_every_option_the_readme_shows_exists_on_its_command() -> None:
    parser = build_parser()
    commands = _subcommands(parser)
    global_options = _options(parser)
    for line in _cli_block():
        usage = line.split("#", 1)[0]
        for part in usage.split("|"):
            words = part.replace("tts-batch", " ").split()
            names = [w for w in words if w in commands]
            if not names:
                continue
            command = commands[names[0]]
            nested = _subcommands(command)
            if len(names) > 0 and nested:
                rest = [w for w in words if w in nested]
                if rest:
                    command = nested[rest[0]]
            for option in re.findall(r"(--[a-z][a-z-]*)", part):
                assert option in _options(command) | global_options, (
                    f"README shows {option} on `{names[0]}`, which has no such option"
                )
