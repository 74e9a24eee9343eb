"""All-in-one (ADMS) acceptance table, measured in one run through the runtime.

On held-out sets the model never saw in training (McMaster, Kodak24), each clean image gets
each degradation's evaluation spec (``KINDS`` in edgerestore.models.allinone: ``rain:0.002``,
``blur:2``, ``gaussian:25``, plus ``gaussian:15`` as all-in-one papers also report; seeded per
image as ``edgerestore eval`` does) and is restored by bundles on ONNX Runtime:

* the unified model (UM) alone, one plain network for every degradation (whole images);
* the routed model at q = 1, 3, 5 % with one decision per image (``--whole``: the classifier
  sees the whole image, then one folded network restores it);
* the routed model at the deployed q with one decision per tile (the default policy, tiles
  128/30);
* the same with INT8 stages, calibrated route-aware on crops of BSDS400_color (the training
  images) with the three specs taking turns; the default precision policy (first and last
  convolutions FP32), or ``--max-drop DB`` (the sensitivity search keeps the fewest layers FP32
  that hold the held-out crops within DB).

Printed: per set and degradation the PSNR of input, UM and each routed variant, the
classifier's accuracy per tile and per image, the parameter overhead of the filters, the
INT8 drop and the share of the MACs the INT8 bundle runs in INT8. Exits 1 if an acceptance
check fails: classifier accuracy per image < 95%, a routed FP32 variant not above the UM on
some degradation, INT8 drop > 0.15 dB, INT8 share of the MACs < 75%.

Usage: python benchmarks/allinone_eval.py [--weights CKPT] [--sets McMaster,Kodak24] [--images N]
       [--q 1,3,5] [--no-int8] [--max-drop DB] [--backend onnxruntime]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from _common import SHARED
from edgerestore.export import write_bundle
from edgerestore.models import RestorationModel, create_model
from edgerestore.models.allinone import KINDS
from edgerestore.runtime import degrade, imageio, metrics
from edgerestore.runtime.session import Session

MIN_ACCURACY = 0.95
MAX_INT8_DROP = 0.15
MIN_INT8_MAC_SHARE = 0.75


class Unified(RestorationModel):
    """The UM of an all-in-one checkpoint as a plain one-stage model (the baseline)."""

    arch = "allinone-unified"

    def __init__(self, model):
        super().__init__()
        self.channels, self.net, self._model = model.channels, model.um, [model]

    def forward(self, x):
        return self.net(x)

    @property
    def receptive_field(self) -> int:
        return self._model[0].receptive_field

    def default_tiling(self):
        return self._model[0].default_tiling()

    def config(self):
        return {}


def export(model, name: str, root: Path, int8=None) -> Path:
    out = root / name
    write_bundle(model, name, out, int8=int8)
    return out


def bundle_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.glob("*.onnx") if ".int8." not in f.name)


SPECS = [(d, kind.evaluation) for d, kind in KINDS.items()] + [("noise", "gaussian:15")]


def evaluate(sessions: dict[str, Session], per_image: str, per_tile: str, sets: list[str],
             images: int | None) -> dict:
    """(set, spec) -> variant -> per-image PSNRs; routing hits of the ``per_tile`` variant per
    tile and of the ``per_image`` one per image (the classifier is the same at every q)."""
    results: dict = {}
    for set_name in sets:
        files = imageio.list_images(SHARED / "data" / set_name)[:images]
        for d, spec in SPECS:
            index = list(KINDS).index(d)
            row = results.setdefault((set_name, spec), {"input": [], "tile_hits": [], "image_hits": []})
            for path in files:
                clean = imageio.to_float(imageio.read_image(path)).astype(np.float64)
                degraded = degrade.parse(spec).apply(clean)
                truth = imageio.from_float(clean, 8)
                row["input"].append(metrics.psnr(imageio.from_float(degraded, 8), truth))
                for variant, session in sessions.items():
                    result = session.run(degraded.astype(np.float32))
                    row.setdefault(variant, []).append(metrics.psnr(imageio.from_float(result.image, 8), truth))
                    hits = {per_tile: "tile_hits", per_image: "image_hits"}.get(variant)
                    if hits:
                        row[hits].append(float((result.decisions["degradation"] == index).mean()))
                print(f"  {set_name} {spec} {path.name}: " + ", ".join(
                    f"{v} {row[v][-1]:.2f}" for v in ["input", *sessions]), file=sys.stderr, flush=True)
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", type=Path, help="An allinone checkpoint (default: the shipped one).")
    parser.add_argument("--sets", default="McMaster,Kodak24")
    parser.add_argument("--images", type=int, default=None, help="Images per set (default: all).")
    parser.add_argument("--q", default="1,3,5", help="Filter percentages to compare.")
    parser.add_argument("--no-int8", action="store_true", help="Skip the INT8 export and its column.")
    parser.add_argument("--calib-images", type=int, default=48)
    parser.add_argument("--max-drop", type=float, default=None,
                        help="INT8 export's PSNR budget on the held-out crops (sensitivity search; default: the "
                             "first/last-conv policy)")
    parser.add_argument("--backend", default="onnxruntime")
    args = parser.parse_args()
    start = time.perf_counter()
    base = create_model("allinone", weights=args.weights)
    qs = sorted({float(v) for v in args.q.split(",")} | {base.q})
    sets = [s.strip() for s in args.sets.split(",")]
    root = Path(tempfile.mkdtemp(prefix="allinone-eval-"))
    bundles = {"UM": export(Unified(base), "unified", root)}
    for q in qs:
        bundles[f"q={q:g}% per image"] = export(create_model("allinone", weights=args.weights, q=q), f"q{q:g}", root)
    sessions = {name: Session(path, backend=args.backend, precision="fp32", whole=True)
                for name, path in bundles.items()}
    deployed = f"q={base.q:g}% per tile"
    sessions[deployed] = Session(bundles[f"q={base.q:g}% per image"], backend=args.backend, precision="fp32")
    calibration = None
    if not args.no_int8:
        from edgerestore.calibration import FolderSplit, Int8Options

        specs = ",".join(kind.evaluation for kind in KINDS.values())
        split = FolderSplit(SHARED / "data" / "BSDS400_color", specs, count=args.calib_images, holdout=12, crop=128)
        print(f"INT8 export: route-aware calibration on {args.calib_images} BSDS400_color crops, {specs}",
              file=sys.stderr, flush=True)
        int8_bundle = export(base, "int8", root, int8=Int8Options(split, max_drop=args.max_drop))
        calibration = json.loads((int8_bundle / "calibration.json").read_text())
        sessions[f"INT8 {deployed}"] = Session(int8_bundle, backend=args.backend, precision="int8")
    results = evaluate(sessions, f"q={base.q:g}% per image", deployed, sets, args.images)
    ok = report(base, results, list(sessions), deployed, qs, bundles, calibration)
    tiles = sessions[deployed].tiles
    print(f"\n{time.perf_counter() - start:.0f} s; {args.backend}, {os.cpu_count()} CPU cores, per-tile rows on "
          f"tiles {tiles.tile}/{tiles.overlap}")
    return 0 if ok else 1


def report(base, results: dict, variants: list[str], deployed: str, qs: list[float], bundles: dict,
           calibration: dict | None) -> bool:
    ok = True
    int8 = next((v for v in variants if v.startswith("INT8")), None)
    header = ["set", "degradation", "images", "input", *variants, "tiles routed right", "images routed right"]
    print("\n| " + " | ".join(header) + " |")
    print("|" + " --- |" * len(header))
    totals: dict[str, dict[str, list[float]]] = {}
    rows = list(results.items())
    for (set_name, d), row in rows:  # d: the spec
        agg = totals.setdefault(d, {})
        for key in ["input", *variants, "tile_hits", "image_hits"]:
            agg.setdefault(key, []).extend(row[key])
    for label, row in [(k, v) for k, v in rows] + [(("both", d), agg) for d, agg in totals.items()]:
        cells = [*label, str(len(row["input"])), *(f"{np.mean(row[v]):.2f}" for v in ["input", *variants]),
                 f"{np.mean(row['tile_hits']):.1%}", f"{np.mean(row['image_hits']):.1%}"]
        print("| " + " | ".join(cells) + " |")
    for d, agg in totals.items():
        um = np.mean(agg["UM"])
        for v in variants:
            if v.startswith("q=") and not np.mean(agg[v]) > um:
                print(f"FAIL: {v} {np.mean(agg[v]):.2f} dB is not above the UM's {um:.2f} dB on {d}")
                ok = False
        if np.mean(agg["image_hits"]) < MIN_ACCURACY:
            print(f"FAIL: {d}: {np.mean(agg['image_hits']):.1%} of images routed right < {MIN_ACCURACY:.0%}")
            ok = False
        if int8 is not None:
            drop = np.mean(agg[deployed]) - np.mean(agg[int8])
            print(f"INT8 drop on {d}: {drop:+.3f} dB ({deployed} FP32 {np.mean(agg[deployed]):.2f} dB)")
            if drop > MAX_INT8_DROP:
                print(f"FAIL: INT8 drop {drop:.3f} dB > {MAX_INT8_DROP} dB on {d}")
                ok = False
    tiles = np.mean([np.mean(a["tile_hits"]) for a in totals.values()])
    images = np.mean([np.mean(a["image_hits"]) for a in totals.values()])
    print(f"\nclassifier accuracy: {tiles:.1%} of tiles, {images:.1%} of images")

    um = base.parameter_counts()["unified"]
    print(f"\n| q | filters per degradation | filter parameters per degradation | overhead vs UM "
          f"({um:,} parameters), all {len(base.degradations)} degradations | FP32 bundle |")
    print("| --- | --- | --- | --- | --- |")
    for q in qs:
        model = create_model("allinone", weights=base.provenance["weights"], q=q)
        extra = [model.adf_parameter_count(d) for d in model.degradations]
        print(f"| {q:g}% | {model.selected_count()} of {model.filter_count()} | "
              f"{', '.join(f'{d} {n:,}' for d, n in zip(model.degradations, extra))} | "
              f"{sum(extra) / um:.2%} | {bundle_bytes(bundles[f'q={q:g}% per image']) / 1e6:.2f} MB |")
    print(f"classifier: {base.parameter_counts()['classifier']:,} parameters; a hard decision runs it and one "
          f"folded network ({um:,} parameters) per tile")
    if calibration is not None:
        accuracy = calibration["accuracy"]
        print(f"INT8 export check on {accuracy['held_out_images']} held-out BSDS400 crops: " + ", ".join(
            f"{s['backend']} {s['precision']} {s['psnr']:.2f} dB" for s in accuracy["scores"]))
        print("FP32 layers: " + ", ".join(f"{s}:{n}" for s, n in accuracy["fp32_layers"]))
        share = calibration["int8_mac_share"]
        print(f"INT8 runs {share:.1%} of the MACs (limit {MIN_INT8_MAC_SHARE:.0%})")
        if share < MIN_INT8_MAC_SHARE:
            print(f"FAIL: INT8 share of the MACs {share:.1%} < {MIN_INT8_MAC_SHARE:.0%}")
            ok = False
    return ok


if __name__ == "__main__":
    sys.exit(main())
