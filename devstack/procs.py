"""Detached server processes tracked by pid files: start, identify, wait for, stop.

Knows nothing about which servers exist (see `stack_services`). Each process runs in its own
session (so it is a process-group leader and outlives the command that started it), writes
stdout and stderr to `logs/NAME.log` and is remembered by `pids/NAME.pid`.
"""

from __future__ import annotations

import fcntl
import os
import signal
import socket
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from core.errors import StackError


@dataclass(frozen=True)
class ProcSpec:
    """How to launch one server process.

    `identity` holds strings that must all occur in the running process's command line for a
    pid file to be trusted: a pid can be reused by an unrelated process after a crash or reboot.
    """

    name: str
    argv: tuple[str, ...]
    env: Mapping[str, str]
    identity: tuple[str, ...]


@dataclass(frozen=True)
class ProcDirs:
    """Where pid files and logs live."""

    pids: Path
    logs: Path

    def pid_file(self, name: str) -> Path:
        return self.pids / f"{name}.pid"

    def log_file(self, name: str) -> Path:
        return self.logs / f"{name}.log"


@contextmanager
def exclusive(lock_file: Path) -> Iterator[None]:
    """Hold an exclusive advisory lock on `lock_file` (created if missing) for the block."""
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    with lock_file.open("a") as fh:
        # Released when the file is closed, also if this process dies.
        fcntl.flock(fh, fcntl.LOCK_EX)
        yield


def spawn(spec: ProcSpec, dirs: ProcDirs) -> int:
    """Start `spec` detached, in a new session, logging to its log file; write its pid file."""
    dirs.pids.mkdir(parents=True, exist_ok=True)
    dirs.logs.mkdir(parents=True, exist_ok=True)
    log = dirs.log_file(spec.name)
    with log.open("ab") as fh:
        fh.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} starting {spec.name}\n".encode())
    # posix_spawn rather than Popen: no Popen object to keep alive (and warn about) for a
    # process meant to outlive us; setsid makes it a group leader we can signal as a whole.
    actions = [
        (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
        (os.POSIX_SPAWN_OPEN, 1, str(log), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644),
        (os.POSIX_SPAWN_DUP2, 1, 2),
    ]
    try:
        pid = os.posix_spawn(
            spec.argv[0], list(spec.argv), dict(spec.env), file_actions=actions, setsid=True
        )
    except OSError as exc:
        raise StackError(f"{spec.name}: cannot run {spec.argv[0]}: {exc}") from exc
    tmp = dirs.pid_file(spec.name).with_suffix(".tmp")
    tmp.write_text(f"{pid}\n", encoding="ascii")
    tmp.replace(dirs.pid_file(spec.name))
    return pid


def read_pid(dirs: ProcDirs, name: str) -> int | None:
    """The pid recorded for `name`, or None when there is no readable pid file."""
    try:
        return int(dirs.pid_file(name).read_text(encoding="ascii").strip())
    except (OSError, ValueError):
        return None


# Exit codes of the children `is_alive` reaped, by pid: the only chance to read them.
_exit_codes: dict[int, int] = {}


def is_alive(pid: int) -> bool:
    """True if `pid` runs and is not a zombie (reaping it first if it is our child)."""
    try:
        # Only succeeds for our own children; anything else is reaped by its real parent.
        done, status = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            _exit_codes[pid] = os.waitstatus_to_exitcode(status)
            return False
    except ChildProcessError:
        pass
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="ascii", errors="replace")
    except OSError:
        return False
    # The state letter follows the command name, which is in parentheses and may hold spaces.
    return stat.rsplit(")", 1)[-1].split()[0] not in {"Z", "X"}


def exit_code(pid: int) -> int | None:
    """The exit code of a child of ours that `is_alive` found gone (negative: killed by that
    signal); None when unknown (not our child, or still running)."""
    return _exit_codes.get(pid)


def cmdline(pid: int) -> str:
    """The command line of `pid` joined by spaces ('' if unreadable)."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return ""
    return raw.replace(b"\0", b" ").decode(errors="replace").strip()


def find_running(spec: ProcSpec, dirs: ProcDirs) -> int | None:
    """The pid of `spec`'s live process per its pid file; a stale pid file is removed."""
    pid = read_pid(dirs, spec.name)
    if pid is None:
        return None
    line = cmdline(pid)
    if is_alive(pid) and all(token in line for token in spec.identity):
        return pid
    dirs.pid_file(spec.name).unlink(missing_ok=True)
    return None


def stop_pid(pid: int, *, grace: float = 15.0) -> bool:
    """Stop the process group led by `pid`; True if something had to be SIGKILLed.

    SIGTERM goes to the leader only: a Celery worker then shuts down warmly and stops its own
    pool, whereas a group-wide SIGTERM would kill pool processes mid-task. Whatever remains of
    the group after the leader is gone (or after `grace`) is SIGTERMed, then SIGKILLed.
    """
    _signal(pid, signal.SIGTERM, group=False)
    if wait_until(lambda: not is_alive(pid), timeout=grace):
        _signal(pid, signal.SIGTERM, group=True)
        if wait_until(lambda: not _group_alive(pid), timeout=2.0):
            return False
    _signal(pid, signal.SIGKILL, group=True)
    _signal(pid, signal.SIGKILL, group=False)
    if not wait_until(lambda: not is_alive(pid) and not _group_alive(pid), timeout=5.0):
        raise StackError(f"pid {pid} survived SIGKILL")
    return True


def _signal(pid: int, sig: signal.Signals, *, group: bool) -> None:
    try:
        if group:
            os.killpg(pid, sig)
        else:
            os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # Zombies still count for killpg; a group holding only our reaped leader is gone.
    return any(
        _pgid_of(int(entry.name)) == pgid and is_alive(int(entry.name))
        for entry in Path("/proc").iterdir()
        if entry.name.isdigit()
    )


def _pgid_of(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="ascii", errors="replace")
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[-1].split()
    return int(fields[2]) if len(fields) > 2 else None


def wait_until(check: Callable[[], bool], *, timeout: float, interval: float = 0.05) -> bool:
    """Poll `check` until it returns True or `timeout` seconds pass; return its last answer."""
    deadline = time.monotonic() + timeout
    while True:
        if check():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


def log_tail(dirs: ProcDirs, name: str, *, lines: int = 20) -> str:
    """The last `lines` lines of `name`'s log, for error messages."""
    try:
        text = dirs.log_file(name).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:])


def log_since_start(dirs: ProcDirs, name: str) -> str:
    """What `name` logged since `spawn` last started it ('' if nothing or no log)."""
    try:
        text = dirs.log_file(name).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""
    marker = text.rfind(f" starting {name}\n")
    return text[marker:].split("\n", 1)[-1] if marker >= 0 else text


def port_in_use(host: str, port: int) -> bool:
    """True if something already listens on host:port (or it cannot be bound)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # Like the servers themselves: TIME_WAIT leftovers of a stopped server do not count.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return True
    return False


def first_busy_port(host: str, ports: Sequence[int]) -> int | None:
    """The first of `ports` that is taken, or None when all are free."""
    return next((port for port in ports if port_in_use(host, port)), None)
