"""A real headless browser for the dashboard: Debian's chromium (/usr/bin/chromium, installed by
`make test`) driven by Playwright's Python client. Never `playwright install`: no browser build is
downloaded."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from drawdown.settings import PROJECT_ROOT

CHROMIUM = os.environ.get("DRAWDOWN_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
LAPTOP = {"width": 1280, "height": 900}
PHONE = {"width": 390, "height": 844}


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    from playwright.sync_api import expect

    expect.set_options(timeout=20_000)  # a loaded 2-core machine: the page's own waits, not a speed target
    if not os.path.exists(CHROMIUM):
        pytest.fail(f"no chromium at {CHROMIUM}: install Debian's (apt-get install -y chromium chromium-driver; "
                    "`make test` does it) or point DRAWDOWN_CHROMIUM at one")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        instance = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield instance
        instance.close()


@pytest.fixture(scope="session")
def artifacts(session_id: str) -> Path:
    """Where the browser tests leave their screenshots (printed at the end of each test that writes one)."""
    folder = Path(os.environ.get("DRAWDOWN_TEST_ARTIFACTS", PROJECT_ROOT / ".state" / "artifacts")) \
        / f"dashboard-{session_id}"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture()
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport=LAPTOP)
    context.set_default_timeout(20_000)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    yield page
    context.close()
    assert not errors, f"script errors in the page: {errors}"


def log_in(page: Any, api_base: str, key: str) -> None:
    page.goto(f"{api_base}/dashboard/login")
    page.get_by_label("API key").fill(key)
    page.get_by_role("button", name="Log in").click()
    page.wait_for_url("**/dashboard/customers")
