"""The whole ecosystem as `make up` runs it, and a real browser (Debian's Chromium via Playwright)."""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from kizuna.kit import declaration
from kizuna.kit.testing import devstack_port_offset, running_devstack

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "test-artifacts" / "journey"
# Every declared service, as make up finds them.
DECLARATIONS = declaration.discover()
SERVICES = [d.name for d in DECLARATIONS]
DEFAULT_PORTS = {d.name: d.http_port for d in DECLARATIONS}
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@dataclass
class Ecosystem:
    urls: dict[str, str]
    data_dir: Path
    output: list[str] = field(default_factory=list)

    def url(self, service: str, path: str = "/") -> str:
        return self.urls[service] + path


@pytest.fixture(scope="module")
def ecosystem(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Ecosystem]:
    """`make up`'s stack (nats-server, every declared service, demo data) on free ports and a fresh data dir."""
    offset = devstack_port_offset(DECLARATIONS)
    data_dir = tmp_path_factory.mktemp("ecosystem")
    # Shop's and travel's pages wait for points' earn previews as long as a loaded test machine may
    # need (as their own tests do): past the 1.5 s budget a page shows no badge, and none for 30 s
    # after (the kit's EarnPreviews), the product's way of not waiting on a slow points; this journey
    # checks what the badge promises.
    with running_devstack(data_dir, offset, cwd=ROOT, environment={"EARN_PREVIEW_BUDGET_SECONDS": "30"}) as output:
        urls = {name: f"http://127.0.0.1:{port + offset}" for name, port in DEFAULT_PORTS.items()}
        yield Ecosystem(urls, data_dir, output)


# Module scope: Playwright's sync API keeps its own event loop running while it is open, which
# would break every later test that starts an asyncio loop.
@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    from playwright.sync_api import sync_playwright

    executable = shutil.which("chromium") or "/usr/bin/chromium"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, headless=True, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


class Steps:
    """Runs named journey steps; a failing step leaves a screenshot and the page's HTML behind."""

    def __init__(self, test_name: str) -> None:
        self.test_name = re.sub(r"[^A-Za-z0-9_.-]", "_", test_name)
        self.pages: list[Page] = []

    @contextmanager
    def step(self, name: str) -> Iterator[None]:
        try:
            yield
        except BaseException:
            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
            for i, page in enumerate(self.pages):
                try:
                    page.screenshot(path=str(ARTIFACTS / f"{self.test_name}-{slug}-{i}.png"), full_page=True)
                    (ARTIFACTS / f"{self.test_name}-{slug}-{i}.html").write_text(page.content())
                except Exception as exc:  # the page itself may be gone; keep the original failure
                    print(f"could not save the screenshot of page {i}: {exc}")
            raise


@pytest.fixture
def steps(request: pytest.FixtureRequest) -> Steps:
    return Steps(request.node.name)
