"""Every example in the README runs: Python blocks in order in one namespace (as a reader would paste
them), each ``nrinv ...`` line of a bash block through the CLI, in a folder holding the files the
examples name.  A block may be skipped only with a stated reason in a ``<!-- not run by
tests/test_readme.py: ... -->`` comment just above it."""
import csv
import re
import shlex
from pathlib import Path

import pytest
from PIL import Image

README = Path(__file__).resolve().parents[1] / "README.md"
SKIP = "<!-- not run by tests/test_readme.py:"
FENCE = re.compile(r"^```(\w+)\n(.*?)^```\n", re.S | re.M)


def _blocks() -> list[tuple[str, str, str]]:
    """(language, code, skip reason or '') per fenced block."""
    text = README.read_text()
    out = []
    for m in FENCE.finditer(text):
        before = text[:m.start()].rstrip().splitlines()[-1] if text[:m.start()].strip() else ""
        reason = before[len(SKIP):].strip(" ->") if before.startswith(SKIP) else ""
        out.append((m.group(1), m.group(2), reason))
    return out


@pytest.fixture
def workdir(tmp_path):
    from nrinv.shapes import render
    from nrinv.shapes.world import Scene

    folder = tmp_path
    star = Scene(shape="star", color="red", size="large", position="left", background="striped",
                 background_color="blue")
    square = Scene(shape="square", color="blue", size="small", position="top", background="plain",
                   background_color="white")
    cross = Scene(shape="cross", color="yellow", size="small", position="right", background="gradient",
                  background_color="black")
    Image.fromarray(render(star, 1)).save(folder / "photo.png")
    Image.fromarray(render(square, 2)).save(folder / "a.png")
    Image.fromarray(render(star, 3)).save(folder / "b.png")
    for i in range(3):
        Image.fromarray(render(cross, 10 + i)).save(folder / f"ex{i + 1}.png")
    photos = folder / "photos"
    photos.mkdir()
    with open(photos / "captions.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["file", "caption"])
        for i, scene in enumerate((star, square)):
            Image.fromarray(render(scene, 20 + i)).save(photos / f"img{i}.png")
            writer.writerow([f"img{i}.png", scene.caption()])
    return folder


def test_readme_examples_are_all_run_or_say_why_not():
    blocks = _blocks()
    assert len([b for b in blocks if b[0] == "python"]) >= 3
    skipped = [b for b in blocks if b[2]]
    assert all(len(reason) > 20 for _, _, reason in skipped)
    assert len(skipped) <= 2  # the set-up commands (CI runs them) and the app (it serves until stopped)
    assert {lang for lang, _, _ in blocks} <= {"python", "bash"}


def test_readme_python_examples_run(workdir, monkeypatch):
    monkeypatch.chdir(workdir)
    namespace: dict = {}
    for lang, code, reason in _blocks():
        if lang == "python" and not reason:
            exec(compile(code, str(README), "exec"), namespace)
    for name in ("reconstruction.png", "edited.png", "green.png", "yellow.png"):
        assert Image.open(workdir / name).size == (64, 64)
    regenerated = namespace["regenerated"]
    assert regenerated.size == (64, 64)
    # the stock pipeline, started from inv.latents, regenerates the reconstruction nrinv made
    import numpy as np

    ours = np.asarray(Image.open(workdir / "reconstruction.png"), dtype=np.float64)
    assert np.abs(np.asarray(regenerated, dtype=np.float64) - ours).mean() < 2.0
    assert len(namespace["frames"]) == 5 and len(namespace["samples"]) == 4
    assert len(namespace["edits"].images) == 2


def test_readme_command_lines_run(workdir, monkeypatch):
    from nrinv.cli import main

    monkeypatch.chdir(workdir)
    ran = 0
    for lang, code, reason in _blocks():
        if lang != "bash" or reason:
            continue
        for line in code.splitlines():
            line = line.split("  #")[0].strip()
            if not line:
                continue
            argv = shlex.split(line)
            assert argv[0] == "nrinv", f"README command not run by this test: {line}"
            assert main(argv[1:] + ["--quiet"] if argv[1] not in ("methods",) else argv[1:]) == 0, line
            ran += 1
    assert ran >= 9
    assert (workdir / "circle.png").is_file() and (workdir / "anim.gif").is_file()
    assert len(list((workdir / "latents").glob("*.latent.safetensors"))) == 2
    assert (workdir / "bench-results" / "results.csv").is_file()


def test_the_readme_says_where_the_command_is():
    """``make install`` puts ``nrinv`` in ``.venv/bin``, which a new user's shell does not search."""
    text = " ".join(README.read_text().split())
    assert "source .venv/bin/activate" in text and "`.venv/bin/nrinv`" in text


def test_the_readme_gives_a_first_image(tmp_path, monkeypatch):
    """The examples open ``photo.png``, which a new user does not have: the first Python block makes it,
    the drawing the examples' prompts describe."""
    monkeypatch.chdir(tmp_path)
    first = next(code for lang, code, reason in _blocks() if lang == "python" and not reason)
    namespace: dict = {}
    exec(compile(first, str(README), "exec"), namespace)
    assert Image.open(tmp_path / "photo.png").size == (64, 64)
    assert namespace["star"].caption() == "a large red star on the left, blue striped background"
    assert namespace["star"].caption() in README.read_text()
