"""The Gradio demo in a real browser: draw a digit on the Sketchpad with mouse strokes and read the prediction.

Drives Debian's chromium (/usr/bin/chromium) through the playwright Python package; skipped when either is missing.
Saves assets/demo_screenshot.png (the README shows it). Needs trained weights where spaces_app/app.py looks for them
(see tests/test_app.py), e.g.

    MINIVISION_MODEL=outputs/quick .venv/bin/python -m pytest -q -m browser
"""

import shutil
import socket
from pathlib import Path

import pytest

from tests.conftest import load_app

pytestmark = [pytest.mark.browser, pytest.mark.slow]

REPO_ROOT = Path(__file__).resolve().parents[1]
APP_FILE = REPO_ROOT / "spaces_app" / "app.py"
SCREENSHOT = REPO_ROOT / "assets" / "demo_screenshot.png"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]


@pytest.fixture(scope="module")
def app_url():
    app = load_app()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    app.demo.launch(server_name="127.0.0.1", server_port=port, share=False, prevent_thread_lock=True, quiet=True)
    try:
        yield f"http://127.0.0.1:{port}/"
    finally:
        app.demo.close()


@pytest.fixture(scope="module")
def page(app_url):
    sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright Python package is not installed")
    if not CHROMIUM.exists() and not shutil.which("chromium"):
        pytest.skip("chromium not found at /usr/bin/chromium (Debian package `chromium`)")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 820})
        page.goto(app_url)
        page.wait_for_selector("#sketchpad canvas", timeout=30_000)
        yield page
        browser.close()


def draw(page, strokes: list[list[tuple[float, float]]]) -> None:
    """Mouse strokes on the sketchpad; points in [-1, 1] relative to the centre of the 400 px drawing area."""
    box = page.locator("#sketchpad canvas").first.bounding_box()
    cx, cy = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    half = 0.4 * min(box["width"], box["height"])  # stay inside the white drawing area, whatever the zoom
    for stroke in strokes:
        (x0, y0), *rest = stroke
        page.mouse.move(cx + x0 * half, cy + y0 * half)
        page.mouse.down()
        for x, y in rest:
            page.mouse.move(cx + x * half, cy + y * half, steps=3)  # the brush joins the points
        page.mouse.up()


def top_label(page, expected: str, timeout_ms: int = 15_000) -> str:
    """The gr.Label's headline once it shows `expected` (or whatever it shows when the time is up)."""
    headline = page.locator('#prediction [data-testid="label-output-value"]')
    try:
        page.wait_for_function(
            "expected => document.querySelector('#prediction [data-testid=\"label-output-value\"]')"
            "?.textContent.trim() === expected",
            arg=expected,
            timeout=timeout_ms,
        )
    except Exception:  # timeout: report what is shown instead
        pass
    return headline.text_content().strip() if headline.count() else "<no prediction>"


def test_draw_a_seven_then_clear_then_a_one(page, app_url):
    # The page selects the brush on load, so strokes draw at once. A "7": a top bar, then the long diagonal.
    draw(page, [[(-0.55, -0.75), (0.5, -0.75), (-0.1, 0.8)]])
    assert top_label(page, "7") == "7"
    SCREENSHOT.parent.mkdir(exist_ok=True)
    page.screenshot(path=str(SCREENSHOT))

    page.click("#clear")
    blank = load_app().BLANK_LABEL
    assert top_label(page, blank) == blank

    draw(page, [[(0.05, -0.8), (0.0, 0.8)]])  # a "1": one vertical stroke
    assert top_label(page, "1") == "1"
