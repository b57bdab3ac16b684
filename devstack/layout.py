"""Where a local stack lives: its state folder, host, ports and generated credentials.

Everything is a parameter so that tests can run whole stacks in temporary folders on ports of
their own, next to a developer's stack on the default ports.
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from core.settings import LOCAL_PORTS
from devstack.credentials import credentials_path
from devstack.procs import ProcDirs, first_busy_port

# SeaweedFS's admin worker dials the admin gRPC port at admin HTTP port + 10000 whatever
# -admin.port.grpc says; the other gRPC ports may be set freely (put, get and restart checked).
# They sit next to the HTTP ports rather than at + 10000, where other stacks on this machine
# put their services (a stack on standard ports + 20000 took 28333 = 18333 + 10000).
ADMIN_GRPC_OFFSET = 10000
# A state folder may name its own ports (StackPorts fields as JSON): `tts-batch up` then runs a
# second stack beside the developer's one, as the tests of the CLI do.
PORTS_FILE = "ports.json"


@dataclass(frozen=True)
class StackPorts:
    """Every TCP port the stack opens.

    `weed_grpc` is the first of four consecutive gRPC ports (S3, master, volume, filer); the
    admin gRPC port is `weed_admin` + 10000.
    """

    redis: int
    s3: int
    pushgateway: int
    prometheus: int
    flower: int
    exporter: int
    weed_master: int
    weed_volume: int
    weed_filer: int
    weed_admin: int
    weed_grpc: int

    @classmethod
    def local(cls) -> StackPorts:
        """The developer stack's ports: core.settings.LOCAL_PORTS plus SeaweedFS internals."""
        return cls(
            redis=LOCAL_PORTS["redis"],
            s3=LOCAL_PORTS["s3"],
            pushgateway=LOCAL_PORTS["pushgateway"],
            prometheus=LOCAL_PORTS["prometheus"],
            flower=LOCAL_PORTS["flower"],
            exporter=19808,
            weed_master=19333,
            weed_volume=19340,
            weed_filer=18888,
            weed_admin=19646,
            weed_grpc=18334,
        )

    @classmethod
    def from_base(cls, base: int) -> StackPorts:
        """Fourteen consecutive ports from `base` (and `base + 10009`), for test stacks.

        Keep `base + 10009` below the kernel's ephemeral range (32768 by default) so that
        outgoing connections never hold a port a server needs: 20000 <= base <= 22700.
        """
        if not 1024 < base <= 65535 - ADMIN_GRPC_OFFSET - 9:
            raise ValueError(f"port base {base} out of range")
        return cls(*(base + i for i in range(11)))

    @classmethod
    def find_free(cls, host: str = "127.0.0.1", *, attempts: int = 50) -> StackPorts:
        """A `from_base` set whose every port is free right now (random base, for tests).

        Free now is not reserved: `LocalStack.up` still fails clearly if one gets taken.
        """
        for _ in range(attempts):
            ports = cls.from_base(random.randrange(20000, 22700, 20))
            if first_busy_port(host, ports.every()) is None:
                return ports
        raise RuntimeError(f"no free port range found on {host} after {attempts} tries")

    @classmethod
    def saved(cls, state_dir: Path) -> StackPorts | None:
        """The ports `state_dir/ports.json` names, or None when there is no such file."""
        path = state_dir / PORTS_FILE
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise ValueError(f"{path}: unreadable ports file ({exc})") from exc
        names = [f.name for f in fields(cls)]
        if not isinstance(data, dict) or sorted(data) != sorted(names):
            raise ValueError(f"{path}: must hold exactly the ports {', '.join(names)}")
        return cls(**{name: int(data[name]) for name in names})

    def save(self, state_dir: Path) -> None:
        """Write these ports as `state_dir/ports.json` (see `saved`)."""
        state_dir.mkdir(parents=True, exist_ok=True)
        (state_dir / PORTS_FILE).write_text(json.dumps(asdict(self), indent=2) + "\n")

    def weed_http(self) -> dict[str, int]:
        """`weed mini`'s HTTP ports by component (the names of its -X.port flags)."""
        return {
            "s3": self.s3,
            "master": self.weed_master,
            "volume": self.weed_volume,
            "filer": self.weed_filer,
            "admin": self.weed_admin,
        }

    def weed_grpc_ports(self) -> dict[str, int]:
        """`weed mini`'s gRPC ports by component (the -X.port.grpc flags)."""
        parts = ("s3", "master", "volume", "filer")
        grpc = {part: self.weed_grpc + i for i, part in enumerate(parts)}
        return {**grpc, "admin": self.weed_admin + ADMIN_GRPC_OFFSET}

    def weed_ports(self) -> tuple[int, ...]:
        """All ports `weed mini` listens on."""
        return (*self.weed_http().values(), *self.weed_grpc_ports().values())

    def every(self) -> tuple[int, ...]:
        """Every port the whole stack may listen on (15 of them)."""
        others = (self.redis, self.pushgateway, self.prometheus, self.flower, self.exporter)
        return others + self.weed_ports()


@dataclass(frozen=True)
class StackLayout:
    """A stack's state folder, listen host and ports."""

    state_dir: Path
    ports: StackPorts = field(default_factory=StackPorts.local)
    host: str = "127.0.0.1"

    @property
    def dirs(self) -> ProcDirs:
        return ProcDirs(pids=self.state_dir / "pids", logs=self.state_dir / "logs")

    @property
    def credentials_file(self) -> Path:
        return credentials_path(str(self.state_dir))

    def data_dir(self, name: str) -> Path:
        """The folder a service keeps its data and generated config in."""
        return self.state_dir / name
