"""Scaling of ``restore --ray``: images/s of 2 actors against 1, and of 1 actor against plain
``restore``, each actor and the plain command with one ONNX Runtime FP32 thread.

    python benchmarks/ray_scale.py --repeat 2 --json ray_scale.json         # a local cluster of --cpus CPUs
    ray start --head --port 6379 --num-cpus 1 && ray start --address 127.0.0.1:6379 --num-cpus 1
    python benchmarks/ray_scale.py --address 127.0.0.1:6379                  # two nodes: one actor each

The images are Kodak24 listed ``--repeat`` times (48 with the default 2; ``--images N`` takes the
first N for a quick check), the bundle DnCNN-S sigma=25 from the KAIR weights (or ``--bundle``).
Every run writes into a fresh folder. Plain ``restore`` is timed as the command a user runs (a
fresh process: start-up and session load included); a Ray job from its submission to its last
image on a cluster already up (actor start-up and session loads included; the cluster's own
start and a one-image warm-up job, the driver's first, not). The acceptance: 2 actors >= 1.7x one actor, one actor >= 0.9x plain, on an
otherwise idle machine (the load average is in the report). The outputs of all runs must be
the same files (SHA-256).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import SHARED

WEIGHTS = SHARED / "weights" / "dncnn_25_kair_state_dict.pth"
OPTIONS = {"backend": "onnxruntime", "precision": "fp32", "threads": 1}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", type=Path, default=None, help="default: DnCNN-S sigma=25 (KAIR) exported now")
    parser.add_argument("--data", type=Path, default=SHARED / "data" / "Kodak24")
    parser.add_argument("--repeat", type=int, default=2, help="times the image set is listed (Kodak24 x 2 = 48)")
    parser.add_argument("--images", type=int, default=None, help="only the first N images (a quick check)")
    parser.add_argument("--cpus", type=int, default=2, help="CPUs of the local cluster (without --address)")
    parser.add_argument("--address", default=None, help="join this cluster: 1 actor vs 1 actor on each of 2 nodes")
    parser.add_argument("--json", type=Path, default=None, help="also write the report here")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="ray_scale-"))
    try:
        return run(args, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def run(args, work: Path) -> int:
    import ray

    from edgerestore import distributed

    bundle = args.bundle or export(work / "dncnn_kair")
    inputs = image_set(args.data, args.repeat, args.images, work / "in")
    print(f"{len(inputs)} images, bundle {bundle}, load average {os.getloadavg()[0]:.2f}", flush=True)
    runs = {"plain restore, 1 thread": plain(bundle, inputs, work / "plain")}
    if args.address:
        ray.init(address=args.address, include_dashboard=False, log_to_driver=False)
    else:
        ray.init(num_cpus=args.cpus, include_dashboard=False, log_to_driver=False)
    nodes = [n for n in ray.nodes() if n["Alive"]]
    per_node = 1 if len(nodes) > 1 else None  # two nodes: one actor on each
    # Not timed: the driver's first job imports Ray Data and the nodes start their worker
    # processes; each timed job then starts its own actors and loads their sessions.
    distributed.restore(bundle, [inputs[0]], work / "warmup", actors=1, **OPTIONS)
    for actors in (1, 2):
        out = work / f"ray{actors}"
        report = distributed.restore(bundle, [work / "in"], out, actors=actors, actors_per_node=per_node, **OPTIONS)
        if report.failed or report.restored != len(inputs) or report.actors != actors:
            raise SystemExit(f"the Ray job with {actors} actor(s) did not restore every image: {report.as_dict()}")
        runs[f"Ray, {actors} actor(s) x 1 thread"] = {"seconds": report.seconds, "folder": str(out)}
    ray.shutdown()

    digests = {name: checksums(Path(run.pop("folder"))) for name, run in runs.items()}
    same = len({tuple(sorted(d.items())) for d in digests.values()}) == 1
    for run in runs.values():
        run["images_per_second"] = len(inputs) / run["seconds"]
    rate = [r["images_per_second"] for r in runs.values()]
    result = {"images": len(inputs), "nodes": len(nodes), "runs": runs, "same_outputs": same,
              "ray_2_vs_1": rate[2] / rate[1], "ray_1_vs_plain": rate[1] / rate[0],
              "load_average_after": os.getloadavg()[0]}
    print("| run | seconds | images/s |\n| --- | --- | --- |")
    for name, run in runs.items():
        print(f"| {name} | {run['seconds']:.1f} | {run['images_per_second']:.3f} |")
    print(f"2 actors vs 1: {result['ray_2_vs_1']:.2f}x (>= 1.7); Ray 1 actor vs plain: "
          f"{result['ray_1_vs_plain']:.2f}x (>= 0.9); {len(nodes)} node(s); same outputs: {same}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0 if same else 1


def export(out: Path) -> Path:
    from edgerestore.export import export_bundle

    if not WEIGHTS.exists():
        raise SystemExit(f"{WEIGHTS} not found: give --bundle, or the shared folder")
    export_bundle("dncnn", out, weights=WEIGHTS)
    return out


def image_set(data: Path, repeat: int, limit: int | None, folder: Path) -> list[Path]:
    """The images ``repeat`` times under distinct names (links to the originals)."""
    from edgerestore.runtime.imageio import list_images

    folder.mkdir(parents=True)
    links = []
    for k in range(repeat):
        for source in list_images(data):
            links.append(folder / f"r{k}_{source.name}")
            links[-1].symlink_to(source.resolve())
    for extra in links[limit:] if limit else []:
        extra.unlink()
    return links[:limit] if limit else links


def plain(bundle: Path, inputs: list[Path], out: Path) -> dict:
    command = [sys.executable, "-m", "edgerestore.runtime.cli", "restore", str(bundle), *map(str, inputs),
               "-o", str(out), "--backend", OPTIONS["backend"], "--precision", OPTIONS["precision"],
               "--threads", str(OPTIONS["threads"]), "--json"]
    start = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    return {"seconds": time.perf_counter() - start, "folder": str(out)}


def checksums(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.glob("*.png")}


if __name__ == "__main__":
    sys.exit(main())
