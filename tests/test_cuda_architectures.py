"""The CUDA architectures CMake builds the tile kernels for, from the nvcc it finds.

JetPack 5's nvcc is CUDA 11.4: it knows sm_72 (Xavier) .. sm_87 (Orin) and no sm_89/sm_90;
CUDA 12.x knows 72 .. 90; CUDA 13 dropped everything below sm_75. The choice lives in
cmake/EdgerestoreCudaArchitectures.cmake; its functions run here under `cmake -P`, and a
configure of the project with a stand-in nvcc that reports 11.4 shows the list reaching
the compile flags.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MODULE = ROOT / "cmake" / "EdgerestoreCudaArchitectures.cmake"

# What `nvcc --version` prints on JetPack 5.1 (L4T R35) and on a CUDA 12.6 / 13.0 toolkit.
NVCC_VERSION = """nvcc: NVIDIA (R) Cuda compiler driver
Copyright (c) 2005-2022 NVIDIA Corporation
Built on Sun_Oct_23_22:16:07_PDT_2022
Cuda compilation tools, release {release}, V{release}.{build}
Build cuda_{release}.r{release}/compiler.31964100_0
"""


@pytest.fixture(scope="module")
def cmake() -> str:
    tool = shutil.which("cmake")
    if tool is None:
        pytest.skip("cmake not installed: the CMake architecture choice cannot run")
    return tool


def run_script(cmake: str, tmp_path: Path, body: str) -> str:
    script = tmp_path / "probe.cmake"
    script.write_text(f'include("{MODULE.as_posix()}")\n{body}\n')
    done = subprocess.run([cmake, "-P", str(script)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stderr.strip()  # message() without a mode prints to stderr


def architectures(cmake: str, tmp_path: Path, release: str) -> str:
    return run_script(cmake, tmp_path, f'edgerestore_cuda_architectures("{release}" archs)\nmessage("[${{archs}}]")')


@pytest.mark.parametrize("release, expected", [
    ("11.4", "72-real;75-real;80-real;86-real;87"),                  # JetPack 5: Xavier and Orin, no 89/90
    ("11.8", "72-real;75-real;80-real;86-real;87-real;89-real;90"),
    ("12.2", "72-real;75-real;80-real;86-real;87-real;89-real;90"),  # JetPack 6.0
    ("12.6", "72-real;75-real;80-real;86-real;87-real;89-real;90"),  # JetPack 6.1 / 6.2
    ("13.0", "75-real;80-real;86-real;87-real;89-real;90"),          # sm_72 dropped
    ("10.2", "72-real;75"),
    ("8.0", ""),  # nothing edgerestore targets: CMake's default architecture
    ("", ""),     # nvcc --version unreadable
])
def test_default_architectures_follow_the_nvcc_release(cmake, tmp_path, release, expected):
    assert architectures(cmake, tmp_path, release) == f"[{expected}]"


def fake_nvcc(path: Path, release: str, forward_to: str | None = None, log: Path | None = None) -> Path:
    """An `nvcc` that reports ``release``. With ``forward_to`` it compiles with that real nvcc,
    logging the architectures CMake asked for and dropping them (the real one may not know
    sm_72), so a configure runs CMake's own compiler checks through it."""
    text = NVCC_VERSION.format(release=release, build=315)
    path.write_text(f"""#!{sys.executable}
import os, re, sys
args = sys.argv[1:]
if "--version" in args:
    sys.stdout.write({text!r})
    sys.exit(0)
forward, log = {forward_to!r}, {str(log) if log else None!r}
if forward is None:
    sys.exit("fake nvcc: no compiler behind it")
kept, skip = [], False
for arg in args:
    if skip:
        skip = False
        continue
    asked = re.match(r"--generate-code=arch=compute_(\\d+)", arg) or re.match(r"-arch=sm_(\\d+)", arg)
    if asked or arg in ("-gencode", "--generate-code", "-arch"):
        if log and asked:
            with open(log, "a") as out:
                out.write(arg + "\\n")
        skip = not asked
        continue
    kept.append(arg)
os.execv(forward, [forward, *kept])
""")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def test_nvcc_release_is_read_from_nvcc_version(cmake, tmp_path):
    jetpack5 = fake_nvcc(tmp_path / "nvcc", "11.4")
    assert run_script(cmake, tmp_path, f'edgerestore_nvcc_release("{jetpack5}" r)\nmessage("[${{r}}]")') == "[11.4]"
    silent = tmp_path / "silent"
    silent.write_text("#!/bin/sh\nexit 1\n")
    silent.chmod(0o755)
    assert run_script(cmake, tmp_path, f'edgerestore_nvcc_release("{silent}" r)\nmessage("[${{r}}]")') == "[]"


def test_configure_with_the_jetpack5_nvcc_asks_for_no_sm89_or_sm90(cmake, tmp_path):
    """The whole CMakeLists with an nvcc that says CUDA 11.4: CMake's compiler identification and
    test compile run through it (a real nvcc does the compiling), and the tile library's compile
    flags name sm_72 .. sm_87 only."""
    real = shutil.which("nvcc") or next((str(p) for p in sorted(Path("/usr/local").glob("cuda*/bin/nvcc"))), None)
    if real is None:
        pytest.skip("nvcc not found (no CUDA toolkit): CMake cannot identify a CUDA compiler here")
    log = tmp_path / "asked.txt"
    (tmp_path / "bin").mkdir()
    nvcc = fake_nvcc(tmp_path / "bin" / "nvcc", "11.4", forward_to=real, log=log)
    build = tmp_path / "build"
    env = {k: v for k, v in os.environ.items() if k not in ("CUDAARCHS", "CUDACXX")}
    done = subprocess.run([cmake, "-S", str(ROOT), "-B", str(build), f"-DCMAKE_CUDA_COMPILER={nvcc}",
                           "-DCMAKE_BUILD_TYPE=Release"], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    chosen = re.search(r"edgerestore: CUDA .*architectures (\S+)", done.stdout)[1]
    assert chosen == "72-real;75-real;80-real;86-real;87"
    flags = "\n".join(p.read_text() for p in build.rglob("flags.make") if "edgerestore_tiles_cuda" in str(p))
    flags += "\n".join(p.read_text() for p in build.glob("*.ninja"))
    compiled = sorted({int(a) for a in re.findall(r"arch=compute_(\d+)", flags)})
    assert compiled == [72, 75, 80, 86, 87]
    asked = {int(a) for a in re.findall(r"compute_(\d+)", log.read_text())}  # by CMake's test compile
    assert asked == {72, 75, 80, 86, 87}
