"""The test run says what it did not run: the browser tests skip without Chromium, and the summary says so."""
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_skipped_browser_tests_are_named_in_the_summary(tmp_path):
    env = dict(os.environ, NRINV_CHROMIUM=str(tmp_path / "no-chromium"), NRINV_REQUIRE_BROWSER="0")
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_app.py"],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    lines = [line for line in run.stdout.splitlines() if line.startswith("browser tests NOT RUN")]
    assert run.returncode == 0 and len(lines) == 1, run.stdout[-2000:]
    assert "of tests/test_app.py skipped" in lines[0] and "no-chromium" in lines[0]
    assert "apt-get install chromium" in lines[0]
