"""RL-Restore from the official TF1 checkpoints: the official test sets and a mixed image.

1. ``RLRestore_test`` mild/moderate/severe with the official protocol (dqn/environment.py:
   sorted file lists paired by position, BGR->RGB, H/W swapped, one toolchain per 63x63
   patch, float PSNR without clipping as dqn/utils.py ``psnr_cal``; the uint8 PSNR of the
   clipped, rounded output is printed beside it): input and output PSNR for PyTorch and for
   the bundle, and whether both take the same action at every step of every patch.
2. A Kodak24 image, left half ``--noise`` and right half ``--blur`` (runtime/degrade.py
   specs), restored by the bundle with per-tile toolchains and with the whole-image vote:
   PSNR (whole image and per half), the most frequent chains per half, and route maps.

Exits 1 if an acceptance check fails: output PSNR <= input PSNR on a set, an action that
differs between PyTorch and the bundle, or per-tile chains not beating the vote.

Usage: python benchmarks/rlrestore_eval.py [--weights DIR] [--bundle B] [--backend onnxruntime]
       [--image kodim01] [--noise gaussian:50] [--blur blur:2+jpeg:20] [--overlaps 10,20] [--out DIR]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np
import torch

from _common import SHARED
from edgerestore.models import create_model
from edgerestore.models.rlrestore import STEPS, load_test_set, official_psnr
from edgerestore.runtime import degrade, imageio, metrics
from edgerestore.runtime.routemap import chains, route_map
from edgerestore.runtime.session import Session

SETS = ("mild", "moderate", "severe")


def uint8_psnr(output: np.ndarray, target: np.ndarray) -> float:
    return float(np.mean([metrics.psnr(imageio.from_float(o, 8), imageio.from_float(t, 8))
                          for o, t in zip(output, target)]))


def official_sets(model, bundle: Path, backend: str) -> bool:
    session = Session(bundle, backend=backend)
    print("| set | patches | input PSNR | PyTorch PSNR | bundle PSNR | uint8: input / PyTorch / bundle | "
          "same actions | chains (PyTorch) |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    ok = True
    for name in SETS:
        inputs, targets, _ = load_test_set(SHARED / "data" / "RLRestore_test", name)
        with torch.no_grad():
            out, actions, _ = model.route(torch.from_numpy(inputs.transpose(0, 3, 1, 2).copy()))
        ours = out.numpy().transpose(0, 2, 3, 1)
        result = session.run_rows({"image": inputs.transpose(0, 3, 1, 2).copy()})
        theirs = result.image.transpose(0, 2, 3, 1)
        decided = np.stack([result.decisions.get(f"step{i}", np.full(len(inputs), -1))
                            for i in range(STEPS)], 1)
        same = int((decided == actions.numpy()).all(1).sum())
        scores = [np.mean([official_psnr(a, b) for a, b in zip(x, targets)]) for x in (inputs, ours, theirs)]
        u8 = [uint8_psnr(x, targets) for x in (inputs, ours, theirs)]
        chain = ", ".join(">".join(str(a + 1) if a < 12 else "stop" for a in row if a >= 0) for row in actions.tolist())
        print(f"| {name} | {len(inputs)} | {scores[0]:.2f} | {scores[1]:.2f} | {scores[2]:.2f} | "
              f"{u8[0]:.2f} / {u8[1]:.2f} / {u8[2]:.2f} | {same}/{len(inputs)} | {chain} |", flush=True)
        ok &= scores[1] > scores[0] and scores[2] > scores[0] and same == len(inputs)
    return ok


def mixed_image(clean: np.ndarray, noise: str, blur: str) -> np.ndarray:
    """Left half ``noise``, right half ``blur`` (each degradation drawn on the whole image)."""
    half = clean.shape[1] // 2
    return np.concatenate([degrade.parse(noise).apply(clean)[:, :half], degrade.parse(blur).apply(clean)[:, half:]], 1)


def mixed(bundle: Path, backend: str, image: str, noise: str, blur: str, overlaps: list[int], out: Path) -> bool:
    clean = imageio.to_float(imageio.read_image(SHARED / "data" / "Kodak24" / f"{image}.png")).astype(np.float64)
    degraded = mixed_image(clean, noise, blur)
    truth = imageio.from_float(clean, 8)
    half = clean.shape[1] // 2

    def scores(x: np.ndarray) -> str:
        x8 = imageio.from_float(x, 8)
        return " | ".join(f"{metrics.psnr(a, b):.2f}" for a, b in
                          [(x8, truth), (x8[:, :half], truth[:, :half]), (x8[:, half:], truth[:, half:])])

    print(f"\n{image}: left {noise}, right {blur}")
    print("| policy | tiles | PSNR | left | right | s | top chains left | top chains right |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    print(f"| input | | {scores(degraded)} | | | |")
    out.mkdir(parents=True, exist_ok=True)
    imageio.write_image(out / f"{image}_mixed.png", imageio.from_float(degraded, 8))
    psnr = {}
    for overlap in overlaps:
        for policy in ("tile", "vote"):
            session = Session(bundle, backend=backend, overlap=overlap, route_policy=policy)
            record = session.run(degraded.astype(np.float32))
            restored = record.image
            psnr[(overlap, policy)] = metrics.psnr(imageio.from_float(restored, 8), truth)
            labels = chains(record, session.bundle.plan)
            grid = record.grid
            centres = [ox + grid.tile // 2 for _ in grid.origins_y for ox in grid.origins_x]
            sides = [Counter(c for c, x in zip(labels, centres) if (x < half) == left) for left in (True, False)]
            top = [", ".join(f"{c} x{n}" for c, n in side.most_common(3)) for side in sides]
            print(f"| {policy} | 63/{overlap} | {scores(restored)} | {record.seconds:.1f} | {top[0]} | {top[1]} |",
                  flush=True)
            stem = f"{image}_{policy}_overlap{overlap}"
            imageio.write_image(out / f"{stem}.png", imageio.from_float(restored, 8))
            imageio.write_image(out / f"{stem}_route.png", route_map(imageio.from_float(degraded, 8), record,
                                                                     session.bundle.plan))
    print(f"route maps and outputs in {out}")
    return all(psnr[(o, "tile")] > psnr[(o, "vote")] for o in overlaps)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", type=Path, default=SHARED / "weights" / "rl_restore")
    parser.add_argument("--bundle", type=Path, help="An exported rlrestore bundle (default: export --weights now).")
    parser.add_argument("--backend", default="onnxruntime")
    parser.add_argument("--image", default="kodim01")
    parser.add_argument("--noise", default="gaussian:50")
    parser.add_argument("--blur", default="blur:2+jpeg:20")
    parser.add_argument("--overlaps", default="20", help="Tile overlaps to compare, e.g. 10,20")
    parser.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "rlrestore_eval")
    args = parser.parse_args()
    model = create_model("rlrestore", weights=args.weights)
    bundle = args.bundle
    if bundle is None:
        from edgerestore.export import export_bundle

        bundle = Path(tempfile.mkdtemp()) / "rlrestore"
        export_bundle("rlrestore", bundle, weights=args.weights)
    sets_ok = official_sets(model, bundle, args.backend)
    mixed_ok = mixed(bundle, args.backend, args.image, args.noise, args.blur,
                     [int(o) for o in args.overlaps.split(",")], args.out)
    print(f"\nofficial sets: {'PASS' if sets_ok else 'FAIL'} (output > input everywhere, same actions on every patch)")
    print(f"mixed image: {'PASS' if mixed_ok else 'FAIL'} (per-tile chains beat the whole-image vote)")
    return 0 if sets_ok and mixed_ok else 1


if __name__ == "__main__":
    sys.exit(main())
