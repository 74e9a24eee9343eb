"""Peak resident memory of `edgerestore restore` against the memory budget.

    python benchmarks/memory.py --bundle pr8.bundle                       # the acceptance matrix
    python benchmarks/memory.py --bundle pr8.bundle --sizes 4000x3000 --budgets 512,4096 --precisions fp32

Each configuration is one `edgerestore restore` process, as a user runs it, on a photo of the
given size (Kodak's kodim01 or scikit-image's astronaut, resized, with ``gaussian-peaks:5-50``);
its peak resident set is what ``/usr/bin/time`` reports as "Maximum resident set size" (GNU
time forks the command itself: a child forked from this script would count this script's
memory, which it shares until it executes, in its own peak). Prints a table and checks the
bounds: at most 1.5 GiB at the default budget (1024 MB), at most budget + 500 MB otherwise.
"""

from __future__ import annotations

import argparse
import itertools
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from _common import int8_share_line

DEFAULT_BUDGET = 1024
DEFAULT_LIMIT_MB = 1.5 * 1024
SLACK_MB = 500  # the process itself: interpreter, backend libraries, the model's stages


def photo(width: int, height: int) -> np.ndarray:
    from edgerestore.runtime import degrade, imageio
    from edgerestore.runtime.optional import require

    cv2 = require("cv2", "resizing the benchmark photo")
    kodak = Path(__file__).resolve().parents[2] / "shared" / "data" / "Kodak24" / "kodim01.png"
    if kodak.is_file():
        clean = imageio.to_float(imageio.read_image(kodak))
    else:
        from skimage import data

        clean = data.astronaut().astype(np.float32) / 255
    clean = cv2.resize(clean, (width, height), interpolation=cv2.INTER_CUBIC).reshape(height, width, -1)
    return imageio.from_float(degrade.parse("gaussian-peaks:5-50").apply(clean.astype(np.float64)), 8)


def run(args: list[str]) -> tuple[int, float, float, str]:
    """(exit status, peak RSS MB, seconds, stderr) of one command."""
    start = time.perf_counter()
    result = subprocess.run(["/usr/bin/time", "-f", "maxrss_kb=%M", *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    lines = result.stderr.strip().splitlines()
    peak = int(lines[-1].split("=")[1]) / 1024 if lines and lines[-1].startswith("maxrss_kb=") else float("nan")
    return result.returncode, peak, time.perf_counter() - start, "\n".join(lines[:-1])[-500:]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", required=True, help="the shipped Path-Restore, exported with --int8")
    parser.add_argument("--sizes", default="1920x1080,4000x3000")
    parser.add_argument("--backends", default="openvino,onnxruntime")
    parser.add_argument("--precisions", default="fp32,int8")
    parser.add_argument("--policies", default="tile,vote")
    parser.add_argument("--budgets", default=str(DEFAULT_BUDGET), help="MB, comma-separated")
    args = parser.parse_args()
    executable = shutil.which("edgerestore", path=str(Path(sys.executable).parent)) or shutil.which("edgerestore")
    if executable is None:
        parser.error("no 'edgerestore' executable: install the project")
    if not Path("/usr/bin/time").is_file():
        parser.error("needs GNU time (/usr/bin/time; Debian's package 'time')")
    rows, ok = [], True
    with tempfile.TemporaryDirectory(prefix="edgerestore-memory-") as tmp:
        from edgerestore.runtime import imageio

        images = {}
        for size in args.sizes.split(","):
            width, height = map(int, size.split("x"))
            images[size] = Path(tmp) / f"{size}.png"
            imageio.write_image(images[size], photo(width, height))
        for size, budget, backend, precision, policy in itertools.product(
                args.sizes.split(","), [float(b) for b in args.budgets.split(",")], args.backends.split(","),
                args.precisions.split(","), args.policies.split(",")):
            command = [executable, "restore", args.bundle, str(images[size]), "-o", str(Path(tmp) / "out.png"),
                       "--backend", backend, "--precision", precision, "--route-policy", policy,
                       "--memory-budget", f"{budget:g}"]
            status, peak, seconds, err = run(command)
            limit = DEFAULT_LIMIT_MB if budget == DEFAULT_BUDGET else budget + SLACK_MB
            passed = status == 0 and peak <= limit
            ok &= passed
            rows.append((size, budget, backend, precision, policy, peak, limit, seconds, "PASS" if passed else
                         ("FAIL" if status == 0 else f"exit {status}: {err.strip().splitlines()[-1] if err else ''}")))
            print(" ".join(map(str, rows[-1])), file=sys.stderr, flush=True)
    if "int8" in args.precisions.split(","):
        print(int8_share_line(Path(args.bundle)))
    print("| image | budget MB | backend | precision | policy | peak RSS MB | limit MB | seconds | |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for size, budget, backend, precision, policy, peak, limit, seconds, verdict in rows:
        print(f"| {size} | {budget:g} | {backend} | {precision} | {policy} | {peak:.0f} | {limit:.0f} | "
              f"{seconds:.1f} | {verdict} |")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
