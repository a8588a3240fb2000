"""The web app in a real browser: Debian's chromium driven headless by Playwright.

Upload, invert, edit, see the edited image; a bad upload shows an error.  Screenshots go to
``$NRINV_ARTIFACTS`` (default ``test-artifacts/``).  Skipped where chromium or playwright is missing
(`.ci/run` installs both).
"""
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

CHROMIUM = "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"]
REQUIRED = os.environ.get("NRINV_REQUIRE_BROWSER") == "1"  # set by .ci/run: a missing browser fails there
if not REQUIRED:
    pytest.importorskip("playwright.sync_api")
import playwright.sync_api as playwright  # noqa: E402

pytestmark = pytest.mark.skipif(not REQUIRED and not Path(CHROMIUM).exists(),
                                reason="needs Debian's chromium (.ci/run installs it)")
ARTIFACTS = Path(os.environ.get("NRINV_ARTIFACTS", "test-artifacts"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory, astronaut32):
    from nrinv.testing import tiny_pipeline

    root = tmp_path_factory.mktemp("app")
    tiny_pipeline("sd", smooth=None).save_pretrained(root / "model")
    astronaut32.save(root / "photo.png")
    (root / "broken.png").write_bytes(b"this is not a png")
    port = _free_port()
    env = dict(os.environ, HF_HUB_OFFLINE="1", GRADIO_ANALYTICS_ENABLED="False", OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-m", "nrinv", "app", "--model", str(root / "model"), "--port", str(port)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 180
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                break
        except OSError:
            if proc.poll() is not None:
                raise RuntimeError(proc.stdout.read())
            time.sleep(0.5)
    else:
        proc.kill()
        raise RuntimeError("app did not start")
    yield f"http://127.0.0.1:{port}", root
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()


@pytest.fixture(scope="module")
def browser():
    with playwright.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        yield b
        b.close()


def test_upload_invert_edit(server, browser):
    url, root = server
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page = browser.new_page()
    page.goto(url)
    page.locator("#upload input[type=file]").set_input_files(str(root / "photo.png"))
    page.locator("#source img").wait_for(timeout=60_000)
    page.locator("#source_prompt textarea").fill("a photo of a cat")
    page.locator("#invert").click()
    page.locator("#recon img").wait_for(timeout=120_000)
    page.wait_for_function("document.querySelector('#info textarea').value.includes('PSNR')", timeout=60_000)
    info = page.locator("#info textarea").input_value()
    assert "reconstruction PSNR" in info and "network calls" in info
    page.screenshot(path=str(ARTIFACTS / "app-inverted.png"), full_page=True)

    page.locator("#target_prompt textarea").fill("a photo of a dog")
    page.locator("#edit").click()
    page.locator("#edited img").wait_for(timeout=120_000)
    page.wait_for_function("document.querySelector('#edit_info textarea').value.includes('cached inversion')",
                           timeout=60_000)
    src = page.locator("#edited img").get_attribute("src")
    assert src and len(src) > 20
    page.screenshot(path=str(ARTIFACTS / "app-edited.png"), full_page=True)
    page.close()


def test_bad_upload_shows_an_error_and_server_survives(server, browser):
    url, root = server
    page = browser.new_page()
    page.goto(url)
    page.locator("#upload input[type=file]").set_input_files(str(root / "broken.png"))
    page.get_by_text("cannot read image").first.wait_for(timeout=60_000)
    page.screenshot(path=str(ARTIFACTS / "app-bad-upload.png"), full_page=True)
    page.locator("#edit").click()  # editing before inverting: a message, not a crash
    page.get_by_text("invert an image first").first.wait_for(timeout=60_000)
    page.close()
    page = browser.new_page()  # the server still answers
    page.goto(url)
    page.locator("#invert").wait_for(state="visible", timeout=60_000)
    page.close()
