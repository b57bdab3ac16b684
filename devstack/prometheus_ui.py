"""Links to a Prometheus's web pages that work whichever UI it serves.

Debian's `prometheus` package (what `scripts/install-system.sh` installs and the local stack
runs) cannot build the React UI and serves the classic one under `/classic/`: there `/alerts`,
`/targets` and `/rules` answer 404 and `/graph` only redirects. Upstream builds (the Compose
image) serve their pages at the root. One request tells which.
"""

from __future__ import annotations

import urllib.error
import urllib.request

# The pages an operator opens, and the query the graph link starts with.
PAGES = ("graph", "alerts", "targets", "rules")
GRAPH_QUERY = "g0.expr=tts_tasks_total"


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: object, **kwargs: object) -> None:
        return None


def ui_root(prometheus_url: str, *, timeout: float = 2.0) -> str:
    """The URL the pages hang from: `<url>/classic` on a Prometheus that serves its pages there
    (Debian's), else `<url>` (also when it does not answer: the upstream layout is the norm)."""
    base = prometheus_url.rstrip("/")
    opener = urllib.request.build_opener(_NoRedirect)
    try:
        with opener.open(f"{base}/classic/alerts", timeout=timeout) as resp:
            classic = resp.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        classic = False
    return f"{base}/classic" if classic else base


def page_links(prometheus_url: str, *, timeout: float = 2.0) -> dict[str, str]:
    """Page name -> URL, for `PAGES`; the graph opens on the jobs' outcome counter."""
    root = ui_root(prometheus_url, timeout=timeout)
    links = {page: f"{root}/{page}" for page in PAGES}
    links["graph"] += f"?{GRAPH_QUERY}"
    return links
