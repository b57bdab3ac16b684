"""The worker's exit codes at start-up (sysexits.h values): one table for the worker, the local
stack (which names them when a worker it started exits) and the docs.

A supervisor should restart a worker that exited with EX_UNAVAILABLE (Redis may come back) and
not one that exited with EX_NOPERM or EX_CONFIG (it would fail the same way again).
"""

from __future__ import annotations

# Redis did not answer within TTS_STARTUP_TIMEOUT_SECONDS.
EX_UNAVAILABLE = 69
# Redis or S3 refused the credentials (a wrong password or key, an S3 403).
EX_NOPERM = 77
# The configuration cannot work: the engine does not load, S3 keys are missing, Redis's TLS
# certificate is not trusted or Redis refuses the connection's settings (a database index).
EX_CONFIG = 78

WORKER_EXIT_CODES = {
    EX_UNAVAILABLE: "Redis unreachable for the whole start-up window",
    EX_NOPERM: "Redis or S3 refused the credentials",
    EX_CONFIG: "configuration error (engine load, missing S3 keys, Redis TLS or database)",
}


def describe(code: int) -> str:
    """What a worker's exit code means, or '' for one that is not in the table."""
    return WORKER_EXIT_CODES.get(code, "")
