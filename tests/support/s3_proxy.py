"""A pass-through HTTP proxy in front of the test S3 server: for a key revoked mid-run, and
to count the requests a worker makes (`requests`: method, path and status of each).

While `revoked` is set it rewrites the access key in the signature of each request whose method
is in `revoke_methods` (default: all) to one the server does not know, so that the real server
answers 403 exactly as it would to a key removed from its identities (or, for PUT only, to a
key that may read but not write). Everything else goes through unchanged: the Host header is
kept (it is signed), hop-by-hop headers are dropped.
"""

from __future__ import annotations

import http.client
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

# Not forwarded: meaningful for one hop only (and never signed by SigV4).
HOP_BY_HOP = {"connection", "keep-alive", "expect", "transfer-encoding", "proxy-connection"}
REVOKED_KEY = "REVOKEDBYTHETEST"


class S3Proxy:
    """Forwards to `upstream` (http://host:port); `revoked` makes the server refuse the key."""

    def __init__(self, upstream: str, *, revoke_methods: frozenset[str] | None = None) -> None:
        parts = urlsplit(upstream)
        self.revoke_methods = revoke_methods
        self.upstream = (parts.hostname or "127.0.0.1", parts.port or 80)
        self.revoked = threading.Event()
        self.refused = 0
        self.requests: list[tuple[str, str, int]] = []
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._server.daemon_threads = True

    def revokes(self, method: str) -> bool:
        return self.revoked.is_set() and (
            self.revoke_methods is None or method in self.revoke_methods
        )

    def log(self, method: str, path: str, status: int) -> None:
        with self._lock:
            self.requests.append((method, path, status))

    def requests_for(self, path: str) -> list[tuple[str, int]]:
        """Method and status of each request made for `path` (e.g. /bucket/key), in order."""
        with self._lock:
            return [(m, status) for m, p, status in self.requests if p.split("?")[0] == path]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    @contextmanager
    def running(self) -> Iterator[S3Proxy]:
        thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        thread.start()
        try:
            yield self
        finally:
            self._server.shutdown()
            self._server.server_close()
            thread.join(timeout=5)


def _handler(proxy: S3Proxy) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:
            pass

        def _forward(self) -> None:
            if "chunked" in (self.headers.get("Transfer-Encoding") or ""):
                raise NotImplementedError("chunked request bodies are not forwarded")
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else None
            upstream = http.client.HTTPConnection(*proxy.upstream, timeout=30)
            try:
                upstream.putrequest(
                    self.command, self.path, skip_host=True, skip_accept_encoding=True
                )
                for name, value in self.headers.items():
                    if name.lower() in HOP_BY_HOP:
                        continue
                    if name.lower() == "authorization" and proxy.revokes(self.command):
                        value = re.sub(r"Credential=[^/]+/", f"Credential={REVOKED_KEY}/", value)
                    upstream.putheader(name, value)
                upstream.endheaders(body)
                response = upstream.getresponse()
                data = response.read()
            finally:
                upstream.close()
            if response.status == 403:
                proxy.refused += 1
            proxy.log(self.command, self.path, response.status)
            self.send_response_only(response.status, response.reason)
            for name, value in response.getheaders():
                lowered = name.lower()
                if lowered in HOP_BY_HOP or (
                    lowered == "content-length" and self.command != "HEAD"
                ):
                    continue
                self.send_header(name, value)
            if self.command != "HEAD":
                self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)

        do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _forward

    return Handler
