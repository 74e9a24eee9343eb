"""The README, run as a reader runs it, with the installed ``edgerestore`` executable.

Every fenced code block in README.md follows a marker comment that says what a reader does
with it, and this module does the same (a block without a marker fails the first test):

``<!-- readme: run -->``
    shell commands: run by bash in a scratch folder, one fresh process per command.
``<!-- readme: python -->``
    a Python program: run by a fresh interpreter in the scratch folder.
``<!-- readme: synopsis -->``
    command synopsis: each command exists, and each ``--option`` and lowercase choice
    (``fp32|int8``) it names is in that command's ``--help``; every command of
    ``edgerestore --help`` has a synopsis line somewhere in the README.
``<!-- readme: excerpt -->``
    a fragment of a file or an output (a manifest's plan, a profile report): shown, not run.
``<!-- readme: needs WHAT -->``
    needs what this machine lacks (a camera, a Jetson, TensorRT): skipped, WHAT the reason.
``<!-- demo-command -->`` / ``<!-- test-command -->``
    the Quick start. The demo's command runs after its ``pip install`` (the install this
    suite runs in); the test command must be the one ``.ci/run`` runs.

Substitutions, so that every block takes seconds (run, python and demo blocks):

- ``../shared/data/SET`` -> 4 crops of at most 96x96 pixels of SET's first images;
  ``../shared/weights/...`` -> the shared file itself.
- ``--size WxH`` -> ``--size 96x64``; ``--iterations N`` -> ``--iterations 1 --warmup 0``;
  ``--frames N`` -> ``--frames 3``; training steps (``--steps``, ``--stage1-steps``, ...) -> 1-2,
  of 2 patches each (``--batch 2``).
- ``--calib DIR`` (``export --int8``) -> also ``--calib-images 2 --holdout 2 --calib-crop 64``;
  ``--max-drop D`` -> ``--max-drop 1``, a budget 2 held-out crops meet at once (the search itself:
  tests/test_calibration.py).
- ``python benchmarks/X.py ARGS`` -> the script's ``--help`` lists every option in ARGS (a
  benchmark runs for minutes; its numbers are in the README's tables).
- ``edgerestore demo`` -> ``edgerestore demo --image clean.png`` (a 96x64 photo crop).
- The files the README names as a reader's own (``in.png``, ``noisy.png``, ``drone.mp4``,
  ``frames/``, ``B`` and ``pr.bundle`` (a Path-Restore bundle), ...) exist in the scratch
  folder; official checkpoints that ``../shared`` lacks (SRN-DeblurNet's TF1 folder,
  DeblurGAN-v2's ``fpn_mobilenet.h5``) are written in the official layouts with random
  weights; the application functions of Python blocks have stand-ins: ``camera_frames()``
  yields 3 frames, ``publish(frame)`` checks it is a uint8 HxWx3 frame.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import pytest

from conftest import KAIR, REPO, SHARED
from test_installed_cli import edgerestore, executable

README = REPO / "README.md"
MARKER = re.compile(r"<!--\s*(?:readme:\s*(?P<kind>[a-z]+)(?:\s+(?P<arg>.*?))?|(?P<quick>demo-command|test-command))\s*-->")
KINDS = ("run", "python", "synopsis", "excerpt", "needs")
CROPS, CROP = 4, 96
STAND_INS = '''
import numpy as np


def camera_frames():
    rng = np.random.default_rng(0)
    return ((rng.random((64, 96, 3)) * 255).astype(np.uint8) for _ in range(3))


def publish(frame):  # what the embedding example hands on: frames as OpenCV gave them
    assert frame.dtype == np.uint8 and frame.ndim == 3 and frame.shape[2] == 3, (frame.dtype, frame.shape)

'''
SUBSTITUTIONS = [  # (pattern, replacement), in this order
    (r"--size \d+x\d+", "--size 96x64"),
    (r"--iterations \d+", "--iterations 1 --warmup 0"),
    (r"--frames \d+", "--frames 3"),
    (r"--stage1-steps \d+", "--stage1-steps 2"),
    (r"--stage2-steps \d+", "--stage2-steps 1"),
    (r"--(unified|finetune)-steps \d+", r"--\1-steps 1"),
    (r"(?<![\w-])--steps \d+", "--steps 2"),
    (r"(edgerestore train [\w-]+)", r"\1 --batch 2"),
    (r"(--calib \S+)", r"\1 --calib-images 2 --holdout 2 --calib-crop 64"),
    (r"--max-drop [\d.]+", "--max-drop 1"),
    (r"\.\./shared/data/", "data/"),
    (r"edgerestore demo\b", "edgerestore demo --image clean.png"),
]


@dataclass(frozen=True)
class Block:
    line: int  # of the opening fence, 1-based
    info: str
    text: str
    kind: str | None
    arg: str

    @property
    def id(self) -> str:
        return f"README.md:{self.line}:{self.kind}"


def readme_blocks(text: str) -> list[Block]:
    blocks, lines, i = [], text.splitlines(), 0
    while i < len(lines):
        if not lines[i].lstrip().startswith("```"):  # fences may be indented in a list item
            i += 1
            continue
        start, info = i, lines[i].lstrip()[3:].strip()
        end = next(j for j in range(i + 1, len(lines)) if lines[j].lstrip().startswith("```"))
        above = next((lines[j] for j in range(start - 1, -1, -1) if lines[j].strip()), "")
        match = MARKER.fullmatch(above.strip())
        kind = arg = None
        if match:
            kind = match["quick"] or match["kind"]
            arg = match["arg"] or ""
        indent = len(lines[start]) - len(lines[start].lstrip())
        blocks.append(Block(start + 1, info, "\n".join(line[indent:] for line in lines[start + 1:end]), kind, arg or ""))
        i = end + 1
    return blocks


BLOCKS = readme_blocks(README.read_text())


def substitute(text: str) -> str:
    for pattern, replacement in SUBSTITUTIONS:
        text = re.sub(pattern, replacement, text)
    return text.replace("../shared/weights/", f"{SHARED / 'weights'}/")


def logical_lines(script: str) -> list[str]:
    """Shell lines with backslash continuations joined."""
    return script.replace("\\\n", " ").splitlines()


def help_text(*command: str) -> str:
    return _help(tuple(command))


def prefetch_help(commands: list[tuple[str, ...]]) -> None:
    """Each ``--help`` is a fresh process (~0.3-4 s of start-up): run them side by side."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda command: _help(command), commands))


@lru_cache(maxsize=None)
def _help(command: tuple[str, ...]) -> str:
    result = edgerestore(*command, "--help")
    assert result.returncode == 0, (command, result.stderr)
    return result.stdout


def environment() -> dict[str, str]:
    """The suite's interpreter first on PATH (``python`` in a block is the venv's)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), str(Path(executable()).parent), env["PATH"]])
    return env


# -- the scratch folder ----------------------------------------------------------------------------
def _photo(height: int, width: int) -> np.ndarray:
    from edgerestore.runtime import imageio

    kodak = SHARED / "data" / "Kodak24"
    if kodak.is_dir():
        pixels = imageio.read_image(imageio.list_images(kodak)[0]).pixels
    else:
        from skimage import data

        pixels = data.astronaut()
    return np.ascontiguousarray(pixels[100:100 + height, 200:200 + width])


def _crops(source: Path, target: Path) -> None:
    from edgerestore.runtime import imageio

    target.mkdir(parents=True)
    for path in imageio.list_images(source)[:CROPS]:
        image = imageio.read_image(path)
        h, w = image.pixels.shape[:2]
        y, x = max(0, (h - CROP) // 2), max(0, (w - CROP) // 2)
        imageio.write_image(target / f"{path.stem}.png", image.pixels[y:y + CROP, x:x + CROP])


@pytest.fixture(scope="module")
def scratch(tmp_path_factory, pathrestore_bundle):
    """What a reader of the README has at hand (module docstring)."""
    import cv2
    import torch

    from edgerestore.runtime import degrade, imageio
    from test_deblurganv2 import official_generator, save_official
    from test_srn import small_srn, write_official_checkpoint

    folder = tmp_path_factory.mktemp("readme")
    clean = _photo(64, 96)
    imageio.write_image(folder / "clean.png", clean)
    noisy = imageio.from_float(degrade.parse("gaussian-peaks:5-50").apply(clean / np.float32(255)), 8)
    for name in ("in.png", "noisy.png", "blurred.png", "rainy.png", "mixed.png"):
        imageio.write_image(folder / name, noisy)
    (folder / "frames").mkdir()
    video = cv2.VideoWriter(str(folder / "drone.mp4"), cv2.VideoWriter_fourcc(*"mp4v"), 10, (96, 64))
    for i in range(3):
        imageio.write_image(folder / "frames" / f"{i:03d}.png", noisy)
        video.write(np.ascontiguousarray(np.roll(noisy, i, axis=1)[..., ::-1]))
    video.release()
    for name in sorted(set(re.findall(r"\.\./shared/data/(\w+)", README.read_text()))):
        _crops(SHARED / "data" / name, folder / "data" / name)
    if KAIR.is_file():
        for name in ("dncnn_25_kair_state_dict.pth", "dncnn_25.pth"):  # what the README calls the KAIR file
            (folder / name).symlink_to(KAIR)
    for name in ("B", "pr.bundle"):  # bundles the README's examples take as exported
        (folder / name).symlink_to(pathrestore_bundle, target_is_directory=True)
    with torch.no_grad():
        write_official_checkpoint(folder / "SRN-Deblur" / "checkpoints" / "color", small_srn(channels=3, lstm=False))
        save_official(official_generator(), folder / "fpn_mobilenet.h5")
    return folder


# -- the tests -----------------------------------------------------------------------------------
def test_every_block_says_what_a_reader_does_with_it():
    unmarked = [b.line for b in BLOCKS if b.kind is None]
    assert not unmarked, f"README.md code blocks without a '<!-- readme: KIND -->' marker at lines {unmarked}"
    unknown = [(b.line, b.kind) for b in BLOCKS if b.kind not in (*KINDS, "demo-command", "test-command")]
    assert not unknown, unknown
    assert all(b.arg for b in BLOCKS if b.kind == "needs"), "a needs marker says what"
    assert [b.kind for b in BLOCKS].count("demo-command") == 1 and [b.kind for b in BLOCKS].count("test-command") == 1


def test_the_quick_start_test_command_is_what_ci_runs():
    (block,) = [b for b in BLOCKS if b.kind == "test-command"]
    extracted = subprocess.run(["awk", r"/<!-- test-command -->/{found=1; next} found && /^pip install/{print; exit}",
                                str(README)], capture_output=True, text=True, check=True).stdout.strip()
    assert extracted == block.text.strip()
    assert "eval \"$test_command\"" in (REPO / ".ci" / "run").read_text()


@pytest.mark.parametrize("block", [b for b in BLOCKS if b.kind == "synopsis"], ids=lambda b: b.id)
def test_synopsis_matches_the_commands_help(block):
    prefetch_help([names for line in logical_lines(block.text) for names in _synopsis_commands(line)])
    for line in logical_lines(block.text):
        code = line.split("#")[0]
        words = code.split()
        if words[:1] != ["edgerestore"]:
            continue
        for names in _synopsis_commands(line):
            text = help_text(*names)
            for option in re.findall(r"(?<![\w-])--[a-z0-9][a-z0-9-]*", code):
                assert option in text, f"{line!r}: '{option}' is not an option of 'edgerestore {' '.join(names)}'"
            for choices in re.findall(r"(?<![\w-])([a-z0-9-]+(?:\|[a-z0-9-]+)+)(?![\w.])", code):
                if names[0] == "train" and choices == words[2]:
                    continue
                for choice in choices.split("|"):
                    assert re.search(rf"(?<![\w-]){re.escape(choice)}(?![\w-])", text), \
                        f"{line!r}: '{choice}' is not a choice in 'edgerestore {' '.join(names)} --help'"


def _synopsis_commands(line: str) -> list[tuple[str, ...]]:
    """The command(s) a synopsis line documents: ``edgerestore train srn|memnet`` is two."""
    words = line.split("#")[0].split()
    if words[:1] != ["edgerestore"]:
        return []
    return [("train", sub) for sub in words[2].split("|")] if words[1] == "train" else [(words[1],)]


def test_every_command_has_a_synopsis_line():
    commands = re.findall(r"^  (\w+)\s{2,}", help_text().split("Commands:")[1], re.M)
    assert len(commands) >= 9
    lines = [line for b in BLOCKS if b.kind == "synopsis" for line in logical_lines(b.text)]
    for command in commands:
        assert any(line.split()[:2] == ["edgerestore", command] for line in lines if line.strip()), command


@pytest.mark.parametrize("block", [b for b in BLOCKS if b.kind in ("run", "demo-command")], ids=lambda b: b.id)
def test_shell_block_runs(block, scratch):
    script = []
    for line in logical_lines(substitute(block.text)):
        benchmark = re.match(r"\s*python benchmarks/(\S+)(.*)", line)
        if benchmark:
            _check_benchmark_options(benchmark[1], benchmark[2].split("#")[0])
        elif block.kind == "demo-command":
            script.append(line.split("&&", 1)[1])  # after the install this suite runs in
        else:
            script.append(line)
    result = subprocess.run(["bash", "-euo", "pipefail", "-c", "\n".join(script)], cwd=scratch, env=environment(),
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, f"README.md:{block.line}\n{result.stdout[-2000:]}\n{result.stderr[-4000:]}"
    assert "Traceback" not in result.stderr, result.stderr[-4000:]
    if block.kind == "demo-command":  # what the Quick start promises: noisy | restored | clean | route map
        from PIL import Image

        with Image.open(scratch / "edgerestore-demo" / "before_after.png") as picture:
            assert picture.size == (4 * 96 + 3 * 8, 64)
        assert "blocks bypassed" in result.stdout


def _check_benchmark_options(script: str, arguments: str) -> None:
    result = subprocess.run([sys.executable, str(REPO / "benchmarks" / script), "--help"], capture_output=True,
                            text=True, cwd=REPO, env=environment(), timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    for option in re.findall(r"(?<![\w-])--[a-z0-9][a-z0-9-]*", arguments):
        assert option in result.stdout, f"benchmarks/{script} has no option {option}"


@pytest.mark.parametrize("block", [b for b in BLOCKS if b.kind == "python"], ids=lambda b: b.id)
def test_python_block_runs(block, scratch):
    program = STAND_INS + substitute(block.text)
    result = subprocess.run([sys.executable, "-c", program], cwd=scratch, env=environment(), capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, f"README.md:{block.line}\n{result.stderr[-4000:]}"


@pytest.mark.parametrize("block", [b for b in BLOCKS if b.kind == "needs"], ids=lambda b: b.id)
def test_hardware_block(block):
    pytest.skip(f"README.md:{block.line} needs {block.arg}")
