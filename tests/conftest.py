import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402

# The tiny test models gain nothing from intra-op threads, and on a busy 2-core machine OpenMP
# spin-waiting makes small ops ~30x slower.
torch.set_num_threads(int(os.environ.get("NRINV_TEST_THREADS", "1")))


def pytest_collection_modifyitems(items):
    """The cuda tests that back-propagate through a network (gnri_grad) run last: a fatal CUDA error
    (one ended in an illegal memory access on an H100) is sticky and would fail every test after it."""
    items.sort(key=lambda item: item.get_closest_marker("cuda") is not None and "gnri_grad" in item.name)


@pytest.fixture(scope="session")
def astronaut32():
    from PIL import Image
    from skimage import data

    return Image.fromarray(data.astronaut()).resize((32, 32), Image.LANCZOS)


_PIPES = {}


@pytest.fixture
def tiny():
    """tiny(kind, smooth=0.2) -> cached tiny pipeline (see nrinv.testing)."""
    from nrinv.testing import tiny_pipeline

    def get(kind, smooth=0.2):
        key = (kind, smooth)
        if key not in _PIPES:
            _PIPES[key] = tiny_pipeline(kind, smooth=smooth)
        return _PIPES[key]

    return get


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory):
    """A tiny SD pipeline saved as a diffusers folder (for the command line, which loads models from disk).

    ``smooth=None``: a stock UNet2DConditionModel (reloadable by class name) with a shrunk output layer."""
    from nrinv.testing import tiny_pipeline

    folder = tmp_path_factory.mktemp("tiny-sd")
    tiny_pipeline("sd", smooth=None).save_pretrained(folder, safe_serialization=True)
    return folder


def pytest_terminal_summary(terminalreporter):
    """Say when the browser tests did not run (they skip where Chromium or Playwright is missing)."""
    skipped = [r for r in terminalreporter.stats.get("skipped", []) if "test_app.py" in str(r.nodeid or r.fspath)]
    if not skipped:
        return
    reasons = {str(r.longrepr[-1]) if isinstance(r.longrepr, tuple) else str(r.longrepr) for r in skipped}
    terminalreporter.write_line(
        f"browser tests NOT RUN: {len(skipped)} of tests/test_app.py skipped ({'; '.join(sorted(reasons))}); "
        "install Chromium (apt-get install chromium) and Playwright to run them, or set NRINV_REQUIRE_BROWSER=1 "
        "to fail instead", yellow=True, bold=True)


def builtin_available() -> bool:
    """Whether the built-in shapes model's weights are installed (they ship with the package)."""
    from nrinv.shapes import MODEL_DIR

    return (MODEL_DIR / "model_index.json").is_file()


#: a test that needs the built-in shapes model
builtin = pytest.mark.skipif(not builtin_available(), reason="the built-in shapes model is not installed")


@pytest.fixture(scope="module")
def shapes_pipe():
    """builtin:shapes on the CPU, one per test module (a test may swap its scheduler and put it back)."""
    if not builtin_available():
        pytest.skip("the built-in shapes model is not installed")
    import nrinv

    return nrinv.load_pipeline("builtin:shapes", device="cpu")
