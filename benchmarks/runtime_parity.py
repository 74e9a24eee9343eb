"""Routed outputs against a frozen reference, for every memory budget (so every bucket size).

    python benchmarks/runtime_parity.py --write REF --bundle pr.bundle       # freeze this runtime's outputs
    python benchmarks/runtime_parity.py --reference REF --bundle pr.bundle --budgets 64,256,1024,4096

The reference is one ``.npz`` per McMaster image with ``gaussian-peaks:5-50`` (seeded per image):
the float32 noisy input, the restored float32 output (unclipped), and per switch the branch of
every tile and its router's probability of the cheap branch (ONNX Runtime, FP32). A change
to the executor must reproduce the outputs within 1e-5 and the decisions exactly, except for
tiles whose probability lies within 1e-6 of the ``--min-confidence`` threshold (a reordered
float sum may tip those); a tile that tips is reported, and its pixels are not compared.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ATOL = 1e-5
TIE = 1e-6
SPEC = "gaussian-peaks:5-50"


def session(bundle: str, budget: float):
    from edgerestore.runtime.session import Session

    s = Session(bundle, backend="onnxruntime", precision="fp32", memory_budget=budget)
    probs: dict[str, np.ndarray] = {}

    def record(name, rows, choice, p):
        probs.setdefault(name, np.full(0, np.nan))
        if len(probs[name]) <= rows.max():
            probs[name] = np.concatenate([probs[name], np.full(rows.max() + 1 - len(probs[name]), np.nan)])
        probs[name][rows] = p[:, 0]

    s.decision_hooks.append(record)
    return s, probs


def write(folder: Path, bundle: str, images: list[Path]) -> None:
    from edgerestore.runtime import degrade, imageio

    folder.mkdir(parents=True, exist_ok=True)
    s, probs = session(bundle, 1024)
    for path in images:
        noisy = degrade.parse(SPEC).apply(imageio.to_float(imageio.read_image(path)).astype(np.float64)).astype(np.float32)
        probs.clear()
        route = s.run(noisy, clip=False)
        np.savez_compressed(folder / f"{path.stem}.npz", noisy=noisy, output=route.image,
                            **{f"decision_{k}": v for k, v in route.decisions.items()},
                            **{f"p0_{k}": v for k, v in probs.items()},
                            **{f"rows_{k}": np.arange(len(v)) for k, v in probs.items()})
        print(f"{path.name}: frozen", flush=True)


def compare(folder: Path, bundle: str, budgets: list[float]) -> bool:
    files = sorted(folder.glob("*.npz"))
    if not files:
        raise SystemExit(f"no reference .npz files in {folder}")
    ok = True
    print("| budget MB | bucket sizes (block, pathfinder) | images | max abs diff | decisions that differ | of which ties |")
    print("| --- | --- | --- | --- | --- | --- |")
    for budget in budgets:
        s, probs = session(bundle, budget)
        threshold = s.context.policy.min_confidence
        worst, differ, ties = 0.0, 0, 0
        for file in files:
            ref = np.load(file)
            probs.clear()
            route = s.run(ref["noisy"], clip=False)
            tipped = np.zeros(len(route.macs), bool)
            for name, choice in route.decisions.items():
                expected = ref[f"decision_{name}"]
                wrong = choice != expected
                if wrong.any():
                    p0 = np.full(len(expected), np.nan)
                    p0[ref[f"rows_{name}"]] = ref[f"p0_{name}"]
                    tie = np.abs(p0[wrong] - threshold) <= TIE
                    differ += int(wrong.sum())
                    ties += int(tie.sum())
                    ok &= bool(tie.all())
                    tipped |= wrong
            diff = np.abs(route.image - ref["output"])
            if tipped.any():  # pixels the tipped tiles cover may differ: leave them out
                grid = route.grid
                mask = np.zeros(diff.shape[:2], bool)
                for index in np.flatnonzero(tipped):
                    y = grid.origins_y[index // len(grid.origins_x)]
                    x = grid.origins_x[index % len(grid.origins_x)]
                    mask[y:y + grid.tile, x:x + grid.tile] = True
                diff = diff[~mask]
            worst = max(worst, float(diff.max()) if diff.size else 0.0)
        ok &= worst <= ATOL
        plan = s.memory_plan(63)
        sizes = f"{plan.bucket_sizes.get('block0.shared')}, {plan.bucket_sizes.get('pathfinder')}"
        print(f"| {budget:g} | {sizes} | {len(files)} | {worst:.2e} | {differ} | {ties} |", flush=True)
    return ok


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", required=True, help="the bundle the reference was made with (same stage files)")
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--write", type=Path, metavar="REF", help="freeze this runtime's outputs into REF")
    mode.add_argument("--reference", type=Path, metavar="REF", help="compare with the outputs frozen in REF")
    parser.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data" / "McMaster")
    parser.add_argument("--budgets", default="64,256,1024,4096", help="MB, comma-separated")
    args = parser.parse_args()
    if args.write:
        from edgerestore.runtime import imageio

        write(args.write, args.bundle, imageio.list_images(args.data))
        return 0
    ok = compare(args.reference, args.bundle, [float(b) for b in args.budgets.split(",")])
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
