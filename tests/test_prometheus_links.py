"""Every Prometheus link the project prints or documents for the local stack opens a page on
the project's own Prometheus (Debian's package, which serves its pages under /classic/)."""

from __future__ import annotations

import re
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from core.settings import LOCAL_PORTS
from devstack.prometheus_ui import page_links
from devstack.where import describe

ROOT = Path(__file__).resolve().parent.parent
LOCAL = f"http://127.0.0.1:{LOCAL_PORTS['prometheus']}"
# A URL ends at whitespace, a quote, a backtick, a closing bracket or a table bar.
LINK = re.compile(re.escape(LOCAL) + r"[^\s\"'`)<>|]*")


def documented_links() -> set[str]:
    """The local Prometheus URLs in the README, docs/ and the scripts."""
    files = [ROOT / "README.md", *ROOT.glob("docs/*.md"), *ROOT.glob("scripts/*.sh")]
    return {m.group(0) for f in files for m in LINK.finditer(f.read_text(encoding="utf-8"))}


def status(url: str, *, follow: bool) -> int:
    opener = urllib.request.build_opener() if follow else urllib.request.build_opener(_NoRedirect)
    try:
        with opener.open(url, timeout=10) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return exc.code


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: object, **kwargs: object) -> None:
        return None


def on_stack(url: str, stack: Any) -> str:
    return url.replace(LOCAL, f"http://127.0.0.1:{stack.layout.ports.prometheus}", 1)


@pytest.mark.integration
def test_documented_links_open_on_the_projects_prometheus(stack: Any) -> None:
    links = documented_links()
    # The pages an operator needs are documented (so this test cannot pass on nothing).
    assert {f"{LOCAL}/classic/alerts", f"{LOCAL}/classic/targets"} <= links
    codes = {url: status(on_stack(url, stack), follow=True) for url in links}
    broken = {url: code for url, code in codes.items() if code != 200}
    assert not broken, f"links that do not open: {broken}"


@pytest.mark.integration
def test_printed_links_open_without_a_redirect(stack: Any, tmp_path: Path) -> None:
    prometheus = f"http://127.0.0.1:{stack.layout.ports.prometheus}"
    links = page_links(prometheus)
    assert set(links) == {"graph", "alerts", "targets", "rules"}
    for page, url in links.items():
        assert status(url, follow=False) == 200, f"{page}: {url}"
    # What `make demo` prints at its end holds those links.
    text = describe("no-such-batch", stack.settings(), prometheus_url=prometheus)
    printed = re.findall(re.escape(prometheus) + r"[^\s)]*", text)
    assert {links["graph"], links["alerts"], links["targets"]} <= set(printed)
    for url in printed:
        assert status(url, follow=False) == 200, url
