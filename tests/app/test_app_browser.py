"""End to end: `streamlit run app/main.py -- SICK HEALTHY` as a real process, opened in headless
Chromium (Debian's package); every tab's charts must render. Screenshots go to the tmp dir."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.app.conftest import MAIN

playwright = pytest.importorskip("playwright.sync_api")

ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]
# tab -> charts that must be drawn (a canvas or an SVG scene inside vega-embed)
TABS = {
    "Gradient flow": 1,
    "Residual sites": 2,
    "Activation growth": 2,
    "Over-smoothing": 3,
    "Loss & LR": 3,
    "Compare": 3,
}
DRAWN = (
    "Array.from(document.querySelectorAll('.vega-embed')).filter(e => "
    "e.querySelector('canvas, svg.marks') && e.getBoundingClientRect().width > 100).length"
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def live(runs: dict[str, str], tmp_path: Path) -> Path:
    """A copy of the sick run that the test rewrites while the page watches it."""
    path = tmp_path / "live.pt"
    shutil.copy(runs["sick"], path)
    return path


@pytest.fixture
def server(runs: dict[str, str], live: Path, tmp_path: Path) -> Iterator[str]:
    port = _free_port()
    log = (tmp_path / "streamlit.log").open("w")
    cmd = [
        sys.executable,
        "-m",
        "streamlit",
        "run",
        MAIN,
        "--server.headless",
        "true",
        "--server.port",
        str(port),
        "--browser.gatherUsageStats",
        "false",
        "--",
        str(live),
        runs["healthy"],
    ]
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if urllib.request.urlopen(f"{url}/_stcore/health", timeout=2).status == 200:
                    break
            except OSError:
                time.sleep(0.3)
        else:
            pytest.fail("streamlit did not start: " + (tmp_path / "streamlit.log").read_text())
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=20)
        log.close()


def test_app_in_headless_chromium(
    server: str, chromium: str, runs, live: Path, tmp_path: Path
) -> None:
    errors: list[str] = []
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=ARGS)
        page = browser.new_page(viewport={"width": 1440, "height": 900})
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.goto(server)
        page.get_by_text("Verdict: critical").first.wait_for(timeout=60_000)  # the sick run
        page.get_by_role("tab", name="Compare").wait_for(timeout=60_000)
        assert page.get_by_role("tab").count() == 7
        page.screenshot(path=str(tmp_path / "diagnosis.png"))
        # a finding card links to the chart that shows it: the button selects that tab
        page.get_by_role("tab", name="Diagnosis").click()
        link = page.get_by_role("button", name="See it in Gradient flow").first
        link.wait_for(timeout=60_000)
        link.click()
        selected = page.get_by_role("tab", name="Gradient flow")
        page.wait_for_function(
            "Array.from(document.querySelectorAll('[role=tab]')).some(t => "
            "t.textContent.includes('Gradient flow') && t.getAttribute('aria-selected') == 'true')",
            timeout=60_000,
        )
        assert selected.get_attribute("aria-selected") == "true"
        page.wait_for_function(f"{DRAWN} >= 1", timeout=60_000)
        for tab, charts in TABS.items():
            page.get_by_role("tab", name=tab).click()
            page.wait_for_function(f"{DRAWN} >= {charts}", timeout=60_000)
            name = tab.lower().replace(" ", "-").replace("&", "and")
            page.screenshot(path=str(tmp_path / f"{name}.png"))
        assert page.get_by_text("resolved:").count() >= 1  # the comparison's differences
        assert "Traceback" not in page.content()
        # auto-refresh from the link: rewrite the file as the recorder does, the page follows
        page.goto(f"{server}/?run={live}&refresh=2s")
        page.get_by_text("Verdict: critical").first.wait_for(timeout=60_000)
        shutil.copy(runs["healthy"], tmp_path / "next.pt")
        os.replace(tmp_path / "next.pt", live)
        page.get_by_text("Verdict: healthy").first.wait_for(timeout=30_000)
        page.screenshot(path=str(tmp_path / "refreshed.png"))
        browser.close()
    assert not [e for e in errors if "vega" in e.lower() or "spec" in e.lower()], errors
    assert (tmp_path / "gradient-flow.png").stat().st_size > 20_000


def _visible_without_scrolling(page, locator) -> bool:
    box = locator.bounding_box()
    return box is not None and box["y"] >= 0 and box["y"] + box["height"] <= 900


def test_first_screen_of_a_nan_at_step_3_run_a_healthy_transformer_and_a_comparison(
    server: str, chromium: str, first_screen_runs: dict[str, str], tmp_path: Path
) -> None:
    """Issue 17: without scrolling, the verdict, the onset and a drawn chart of the finite
    window (the loss up to a few steps past the NaN, not 200 magenta steps)."""
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=ARGS)
        page = browser.new_page(viewport={"width": 1440, "height": 900})
        for name, query, verdict in (
            ("nan3", f"run={first_screen_runs['nan3']}", "critical"),
            ("transformer", f"run={first_screen_runs['transformer']}", "healthy"),
            (
                "compare",
                f"run={first_screen_runs['nan3']}&compare={first_screen_runs['fixed']}",
                "critical",
            ),
        ):
            page.goto(f"{server}/?{query}")
            banner = page.get_by_text(f"Verdict: {verdict}").first
            banner.wait_for(timeout=60_000)
            page.wait_for_function(f"{DRAWN} >= 1", timeout=60_000)
            page.screenshot(path=str(tmp_path / f"first-screen-{name}.png"))
            assert _visible_without_scrolling(page, banner), name
            chart = page.locator(".vega-embed").first
            assert _visible_without_scrolling(page, chart), name
            if name != "transformer":
                onset = page.get_by_text("went non-finite at step 3").first
                assert _visible_without_scrolling(page, onset), name
                root = page.get_by_text("Root cause:").first
                assert _visible_without_scrolling(page, root), name
            if name == "compare":
                assert page.get_by_text("Better").first.is_visible()
        browser.close()
