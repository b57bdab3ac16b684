"""`tts-batch completion bash|zsh`: the shell code that makes Tab complete commands and options.

argcomplete reads the argparse parser itself (producer.cli.main calls its hook before parsing),
so the completion never drifts from the commands. It is the `completion` extra; without it the
CLI works the same and this command says how to install it.
"""

from __future__ import annotations

import argparse
from typing import Any

from core.errors import ConfigError
from core.settings import Settings
from producer.cli.errors import EXIT_OK

SHELLS = ("bash", "zsh")


def register(sub: Any) -> None:
    p = sub.add_parser(
        "completion",
        help='print shell completion code: eval "$(tts-batch completion bash)"',
        description=(
            "Print the code that makes Tab complete tts-batch's commands and options. "
            'Add `eval "$(tts-batch completion bash)"` to ~/.bashrc (or `zsh` to ~/.zshrc).'
        ),
    )
    p.add_argument("shell", choices=SHELLS)
    p.set_defaults(run=_cmd_completion)


def _cmd_completion(args: argparse.Namespace, settings: Settings) -> int:
    try:
        from argcomplete.shell_integration import shellcode
    except ImportError as exc:
        raise ConfigError(
            "shell completion needs argcomplete: pip install 'tts-batch[completion]'"
        ) from exc
    print(shellcode(["tts-batch"], shell=args.shell), end="")
    return EXIT_OK


def enable(parser: argparse.ArgumentParser) -> None:
    """Answer a completion request (the shell sets _ARGCOMPLETE) and exit; else do nothing."""
    try:
        import argcomplete
    except ImportError:
        return  # the `completion` extra is not installed: no completion, the CLI unchanged
    argcomplete.autocomplete(parser)
