"""``export --int8``: calibrate a freshly written FP32 bundle and add its INT8 artifacts.

Runs inside the exporter's temporary bundle directory, so a failure anywhere leaves no
bundle behind. Adds, per stage: ``<stage>.int8.onnx`` (Q/DQ), ``calib/<stage>.cache``
(TensorRT text cache) and, for the whole bundle, ``calibration.json`` (method, amax per
tensor, FP32 layers, accuracy table). Writes the manifest with the INT8 files recorded
(through :func:`edgerestore.runtime.schema.write_manifest`, which validates it first).
"""

from __future__ import annotations

import copy
import json
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

from edgerestore.runtime import backends
from edgerestore.runtime.bundle import Bundle
from edgerestore.runtime.errors import EdgeRestoreError
from edgerestore.runtime.schema import Manifest, file_sha256, write_manifest

from . import trt_cache
from .accuracy import Score, routing_agreement, score
from .adaround import StageRounding, round_stage
from .bias_correction import correct_biases
from .capture import Capture, capture, is_routed
from .equalize import DEFAULT_ALPHA, Equalization, equalize_stage
from .macs import int8_mac_share
from .policy import Layer, SearchResult, all_layers, default_fp32_layers, layer_weights, sensitivity_search
from .quantize import DEFAULT_WEIGHT_BITS, QMAX_OF_BITS, WEIGHT_BITS, quantize_stage, unsigned_activations
from .scales import check_method
from .sources import FolderSplit, Sample

# Chosen on DnCNN-S / Set12 (README, "INT8 export", benchmarks/int8_quantizers.py): the
# smallest PSNR loss of the four (before bias correction: 0.109 dB; mse 0.132, minmax 0.171,
# entropy 2.58).
DEFAULT_METHOD = "percentile"
CALIBRATION_FILE = "calibration.json"

Progress = Callable[..., None]


@dataclass
class Int8Options:
    data: FolderSplit | None = None  # or, from Python: calibration samples and held-out samples
    calibration: Iterable[Sample] | None = None
    held_out: list[Sample] | None = None
    method: str = DEFAULT_METHOD
    max_drop: float | None = None
    trt_version: str = trt_cache.DEFAULT_TRT_VERSION
    route_agnostic: bool = False  # routed models: ship the route-agnostic scales instead
    bias_correction: bool = True  # correct each INT8 convolution's mean shift (calibration/bias_correction.py)
    equalize: bool = True  # even out channel ranges of Conv-ReLU-Conv chains first (calibration/equalize.py)
    equalize_alpha: float = DEFAULT_ALPHA  # its weight of activation ranges against weight ranges
    weight_bits: int = DEFAULT_WEIGHT_BITS  # 7: no 16-bit saturation on AVX2 CPUs (calibration/quantize.py)
    adaround: bool = True  # learned weight rounding of the INT8 convolutions (calibration/adaround.py)
    # non-negative activations on UINT8 (ONNX Runtime, OpenVINO); False: signed INT8, as TensorRT runs them
    unsigned_activations: bool = True
    # deployment backends whose FP32/INT8 the report adds beside the Q/DQ reference (None: all installed)
    report_backends: tuple[str, ...] | None = None

    def __post_init__(self):
        check_method(self.method)
        self.trt = trt_cache.parse_trt_version(self.trt_version)
        if (self.data is None) == (self.calibration is None):
            raise EdgeRestoreError("INT8 export needs calibration data (--calib DIR)")
        if not 0 <= self.equalize_alpha <= 1:
            raise EdgeRestoreError(f"equalization alpha must be in [0, 1], got {self.equalize_alpha}")
        if self.weight_bits not in WEIGHT_BITS:
            raise EdgeRestoreError(f"weight bits must be 7 or 8, got {self.weight_bits}")
        if self.max_drop is not None and not self.max_drop >= 0:
            raise EdgeRestoreError(f"--max-drop must be >= 0 dB, got {self.max_drop}")

    def check_tiling(self, model: str, tiling: dict[str, Any]) -> None:
        """Before any export work: a model that only runs on fixed tiles needs crops of at least one tile."""
        if self.data is not None and tiling.get("fixed") and self.data.crop < tiling["tile"]:
            t = tiling["tile"]
            raise EdgeRestoreError(f"calibration crop {self.data.crop}x{self.data.crop} is smaller than the {t}x{t} "
                                   f"tile '{model}' runs on; use --calib-crop {t} or more")


@dataclass
class Int8Report:
    method: str
    trt_header: str
    fp32_layers: list[Layer]
    calibration_images: int
    calibration_tiles: int
    held_out_images: int
    scores: list[Score] = field(default_factory=list)  # FP32 and INT8, per backend
    alternative: Score | None = None  # routed models: INT8 with the other calibration
    route_aware: bool = True
    routing_agreement: float | None = None
    search: SearchResult | None = None
    seconds: float = 0.0
    int8_mac_share: float = 1.0  # of every compute layer's MACs, what the INT8 layers carry (.macs)
    weight_bits: int = DEFAULT_WEIGHT_BITS
    adaround: dict[str, StageRounding] = field(default_factory=dict)  # stage -> learned rounding
    unsigned_tensors: int = 0  # activations quantized on UINT8 (non-negative), over all stages

    def adaround_summary(self) -> tuple[int, int, float] | None:
        """(layers using the learned rounding, layers fitted, mean held-out MSE ratio learned /
        nearest over them), or None when AdaRound did not run."""
        layers = [layer for rounding in self.adaround.values() for layer in rounding.layers]
        if not layers:
            return None
        used = [layer for layer in layers if layer.kept]
        ratios = [min(layer.learned, layer.nearest) / layer.nearest for layer in layers if layer.nearest > 0]
        return len(used), len(layers), float(sum(ratios) / len(ratios)) if ratios else 1.0

    def to_json(self) -> dict[str, Any]:
        return {
            "method": self.method, "trt_header": self.trt_header,
            "fp32_layers": [list(layer) for layer in self.fp32_layers],
            "calibration_images": self.calibration_images, "calibration_tiles": self.calibration_tiles,
            "held_out_images": self.held_out_images, "scores": [s.to_json() for s in self.scores],
            "route_aware": self.route_aware,
            "alternative": None if self.alternative is None else
            {"route_aware": not self.route_aware, **self.alternative.to_json()},
            "routing_agreement": self.routing_agreement,
            "search": None if self.search is None else self.search.to_json(), "seconds": self.seconds,
            "int8_mac_share": self.int8_mac_share, "weight_bits": self.weight_bits,
            "adaround": {stage: rounding.to_json() for stage, rounding in self.adaround.items()},
            "unsigned_tensors": self.unsigned_tensors,
        }


def add_int8(root: Path, options: Int8Options, progress: Progress = lambda *_: None) -> tuple[Manifest, Int8Report]:
    start = time.perf_counter()
    bundle = Bundle(root)
    routed = is_routed(bundle)
    data = options.data
    samples = list(options.calibration) if data is None else data.calibration()
    held = (options.held_out or []) if data is None else data.held_out()
    if held and any(s.clean is None for s in held):
        raise EdgeRestoreError("held-out samples need clean targets for the accuracy check")
    if options.max_drop is not None and not held:
        raise EdgeRestoreError("--max-drop needs held-out images with ground truth")

    with tempfile.TemporaryDirectory(prefix="edgerestore-calib-") as work:
        work = Path(work)
        equalization = (_equalize(root, bundle, samples, routed, options.equalize_alpha, work, progress)
                        if options.equalize else {})
        bundle = Bundle(root)
        aware = capture(bundle, samples, options.method, work, True, progress, len(samples))
        agnostic = capture(bundle, samples, options.method, work, False, progress, len(samples)) if routed else None
        amax_aware, fallback = _route_aware_amax(bundle, aware, agnostic)
        amax_agnostic = agnostic.amax() if agnostic is not None else None
    # Each set of ranges is bias-corrected on the tiles it was calibrated on (a fallback
    # stage's route-aware ranges are its route-agnostic ones, and so are its tiles).
    aware_feeds = {**{stage: agnostic.feeds[stage] for stage in fallback if stage in agnostic.feeds}, **aware.feeds}
    agnostic_feeds = agnostic.feeds if agnostic is not None else {}
    if options.route_agnostic and routed:
        (shipped, shipped_feeds), (other, other_feeds) = (amax_agnostic, agnostic_feeds), (amax_aware, aware_feeds)
    else:
        (shipped, shipped_feeds), (other, other_feeds) = (amax_aware, aware_feeds), (amax_agnostic, agnostic_feeds)
    rounding = _adaround(bundle, shipped, shipped_feeds, options, progress) if options.adaround else {}
    if not options.bias_correction:
        shipped_feeds = other_feeds = {}

    writer = _StageWriter(root, bundle, progress, options.weight_bits,
                          {stage: r.weights for stage, r in rounding.items()}, options.unsigned_activations)
    layers = all_layers(bundle)
    search = None
    fp32_score = score(writer.bundle(), held, "fp32") if held else None
    if options.max_drop is not None:
        def psnrs_with(fp32_layers: set[Layer]) -> list[float]:
            writer.write(shipped, fp32_layers, shipped_feeds)
            return score(writer.bundle(), held, "int8").per_image

        search = sensitivity_search(layers, options.max_drop, fp32_score.per_image, psnrs_with, progress,
                                    layer_weights(bundle, layers))
        fp32_layers = search.fp32_layers
    else:
        fp32_layers = default_fp32_layers(bundle)

    share = int8_mac_share(bundle, layers, fp32_layers, _input_shapes(aware, agnostic))
    if share == 0.0:  # nothing left in INT8: refuse to write an "INT8" bundle
        why = f"the sensitivity search for --max-drop {options.max_drop:g} dB" if search else "the FP32 policy"
        raise EdgeRestoreError(f"{why} keeps every compute layer ({len(layers)}) in FP32: the bundle would have no "
                               "INT8 layer; allow a larger --max-drop, or export without --int8")
    report = Int8Report(options.method, trt_cache.header(options.trt, options.method), fp32_layers,
                        aware.images, aware.tiles, len(held), route_aware=not (options.route_agnostic and routed),
                        search=search, int8_mac_share=share, weight_bits=options.weight_bits, adaround=rounding)
    if held:
        progress("scoring FP32 vs INT8 on the held-out crops", 0, 0)
        if other is not None:
            writer.write(other, set(fp32_layers), other_feeds)
            report.alternative = score(writer.bundle(), held, "int8", branches_of=fp32_score)
    quantized = writer.write(shipped, set(fp32_layers), shipped_feeds)
    if held:
        report.scores = _score_table(writer.bundle(), held, fp32_score, options.report_backends)
        report.routing_agreement = routing_agreement(report.scores[0], report.scores[1])
    caches, effective = _write_caches(root, report.trt_header, shipped, quantized)
    unsigned = {stage: unsigned_activations(root / f"{stage}.int8.onnx") for stage in quantized}
    report.unsigned_tensors = sum(map(len, unsigned.values()))
    report.seconds = time.perf_counter() - start
    _write_calibration_json(root, options, report, shipped, amax_aware, amax_agnostic, effective, caches,
                            fallback, aware, agnostic, fp32_layers, writer.shifts, equalization, unsigned)
    return write_manifest(root, writer.manifest(caches, final=True)), report


def _adaround(bundle: Bundle, amax: dict[str, dict[str, float]], feeds: dict[str, list[dict]],
              options: Int8Options, progress: Progress) -> dict[str, StageRounding]:
    """Learned rounding per stage, fitted once on the calibration tiles the shipped ranges
    came from; every later write (search candidates, the final bundle) reuses it."""
    qmax = QMAX_OF_BITS[options.weight_bits]
    return {stage: round_stage(bundle.stage_path(stage, "fp32"), feeds[stage], amax[stage], qmax, progress,
                               unsigned=options.unsigned_activations)
            for stage in bundle.stages if feeds.get(stage)}


def _input_shapes(*captures: Capture | None) -> dict[str, dict[str, tuple[int, ...]]]:
    """Each stage's input shapes from the first tiles a capture kept for it (route-aware
    first; a stage no routed tile reached, from the route-agnostic pass)."""
    shapes: dict[str, dict[str, tuple[int, ...]]] = {}
    for found in captures:
        for stage, batches in (found.feeds.items() if found is not None else ()):
            if batches and stage not in shapes:
                shapes[stage] = {name: tuple(value.shape) for name, value in batches[0].items()}
    return shapes


def _equalize(root: Path, bundle: Bundle, samples: list[Sample], routed: bool, alpha: float, work: Path,
              progress: Progress) -> dict[str, Equalization]:
    """Equalizes every stage's FP32 file in the bundle being built (and its checksum in the
    manifest) before anything is calibrated on it. The scales come from the stage inputs of
    a first pass over the calibration set; a routed model's from its route-agnostic pass,
    in which every branch sees tiles."""
    first = capture(bundle, samples, "minmax", work, not routed, progress, len(samples), ranges=False)
    manifest = copy.deepcopy(bundle.spec)
    done = {}
    for i, (stage, feeds) in enumerate(first.feeds.items()):
        progress(f"channel equalization {stage}", i, len(first.feeds))
        path = bundle.stage_path(stage, "fp32")
        result = equalize_stage(path, feeds, alpha)
        if result.pairs:
            manifest.stages[stage].sha256["fp32"] = file_sha256(path)
            done[stage] = result
    write_manifest(root, manifest)
    return done


def _route_aware_amax(bundle: Bundle, aware: Capture, agnostic: Capture | None):
    """Route-aware ranges; a stage no calibration tile was routed to falls back to its
    route-agnostic ranges (recorded in calibration.json)."""
    amax = aware.amax()
    fallback = []
    for stage in bundle.stages:
        if stage in amax:
            continue
        if agnostic is None or stage not in agnostic.ranges or not agnostic.ranges[stage].rows:
            raise EdgeRestoreError(f"stage '{stage}' saw no calibration data; calibrate on more images")
        amax[stage] = agnostic.ranges[stage].amax()
        fallback.append(stage)
    return amax, fallback


class _StageWriter:
    """Writes ``<stage>.int8.onnx`` into the bundle being built and keeps its manifest in
    step, re-quantizing only the stages whose ranges, FP32 layers or correction changed. A
    stage with feeds (its input batches) is bias-corrected after quantization."""

    def __init__(self, root: Path, bundle: Bundle, progress: Progress = lambda *_: None,
                 weight_bits: int = DEFAULT_WEIGHT_BITS, rounded: dict[str, dict[str, Any]] | None = None,
                 unsigned: bool = True):
        self.root, self.stages, self.weight_bits, self.unsigned = root, list(bundle.stages), weight_bits, unsigned
        self.rounded = rounded or {}  # stage -> node -> weights on the grid (AdaRound)
        self.fp32 = {stage: bundle.stage_path(stage, "fp32") for stage in self.stages}
        self.base = bundle.spec
        self.written: dict[str, tuple[str, frozenset]] = {}
        self.amax: dict[str, dict[str, float]] = {}  # stage -> tensor -> amax its Q/DQ pair uses
        self.progress = progress
        self.shifts: dict[str, dict[str, list[float]]] = {}  # stage -> conv output -> bias shift removed

    def write(self, amax: dict[str, dict[str, float]], fp32_layers: set[Layer],
              feeds: dict[str, list[dict]]) -> dict[str, dict[str, float]]:
        for stage in self.stages:
            nodes = frozenset(node for s, node in fp32_layers if s == stage)
            # the same ranges always come with the same feeds: whether they correct is enough
            key = (json.dumps(amax[stage], sort_keys=True), nodes, bool(feeds.get(stage)))
            if self.written.get(stage) != key:
                path = self.root / f"{stage}.int8.onnx"
                self.amax[stage] = quantize_stage(self.fp32[stage], path, amax[stage], sorted(nodes),
                                                  self.weight_bits, self.rounded.get(stage), self.unsigned)
                self.shifts[stage] = (correct_biases(self.fp32[stage], path, feeds[stage], self.progress)
                                      if feeds.get(stage) else {})
                self.written[stage] = key
        write_manifest(self.root, self.manifest({}, final=False))
        return dict(self.amax)

    def bundle(self) -> Bundle:
        return Bundle(self.root)

    def manifest(self, caches: dict[str, str], final: bool) -> Manifest:
        manifest = copy.deepcopy(self.base)
        for stage in self.written:
            entry = manifest.stages[stage]
            entry.files["int8"] = f"{stage}.int8.onnx"
            if final:  # checksums only once the files stop changing
                entry.sha256["int8"] = file_sha256(self.root / entry.files["int8"])
                entry.calibration_cache = caches[stage]
        manifest.precisions = ["fp32", "int8"]
        if final:
            manifest.calibration = CALIBRATION_FILE
        return manifest


def _score_table(bundle: Bundle, held: list[Sample], fp32: Score, report_backends: tuple[str, ...] | None) -> list[Score]:
    """The reference rows (exact Q/DQ arithmetic: what calibration measured), then FP32 and
    INT8 on each deployment backend (all installed ones unless ``report_backends`` says)."""
    rows = [fp32, score(bundle, held, "int8", branches_of=fp32)]
    for backend in backends.available(deployment=True) if report_backends is None else report_backends:
        reference = score(bundle, held, "fp32", backend)
        rows += [reference, score(bundle, held, "int8", backend, branches_of=reference)]
    return rows


def _write_caches(root: Path, head: str, calibrated: dict[str, dict[str, float]],
                  quantized: dict[str, dict[str, float]]) -> tuple[dict[str, str], dict[str, dict[str, float]]]:
    """One cache per stage with the ranges the Q/DQ graph uses; returns the cache paths and
    the effective amax per quantized tensor (TensorRT's scale is amax / 127, signed, whatever
    grid ONNX Runtime and OpenVINO use for it). ONNX Runtime gives a Conv output
    that only a ReLU reads the ReLU's range (negatives die there anyway), so a tensor's
    effective amax is the calibrated amax of itself or of the activation it shares with."""
    (root / "calib").mkdir(exist_ok=True)
    caches, effective = {}, {}
    for stage, ranges in quantized.items():
        values = dict(ranges)
        known = list(calibrated[stage].values())
        for tensor, value in values.items():
            if not any(abs(value - v) <= 1e-6 * v for v in known):
                raise AssertionError(f"{stage}/{tensor}: Q/DQ amax {value} is none of the calibrated ranges")
        rel = f"calib/{stage}.cache"
        (root / rel).write_text(trt_cache.render(head, values))
        caches[stage], effective[stage] = rel, values
    return caches, effective


def _write_calibration_json(root, options, report, shipped, amax_aware, amax_agnostic, effective, caches,
                            fallback, aware, agnostic, fp32_layers, shifts, equalization, unsigned) -> None:
    data = options.data
    stages = {}
    for stage in effective:
        stages[stage] = {
            "method": options.method,
            "calibration": "route-agnostic" if (shipped is amax_agnostic or stage in fallback) else "route-aware",
            "samples": aware.ranges[stage].rows if stage in aware.ranges else 0,
            # amax of each tensor the Q/DQ graph and the cache quantize (cache scale = amax / 127)
            "amax": effective[stage],
            "quantized": sorted(effective[stage]),
            # the quantized tensors on UINT8 (zero point 0, amax / 255); the others on INT8 (amax / 127)
            "unsigned": unsigned[stage],
            # what the calibrator measured, per tensor it observed
            "calibrated_amax": shipped[stage],
            "fp32_nodes": [node for s, node in fp32_layers if s == stage],
            # per convolution output: the per-channel mean shift of INT8 vs FP32 removed from its bias
            "bias_correction": shifts.get(stage, {}),
            # the Conv-ReLU-Conv rescaling applied to the FP32 file before calibration (None: none)
            "equalization": equalization[stage].to_json() if stage in equalization else None,
            # per convolution: held-out output MSE with nearest vs learned rounding, and which is used
            "adaround": report.adaround[stage].to_json() if stage in report.adaround else None,
            "cache": caches[stage],
            **({"amax_route_agnostic": amax_agnostic[stage], "amax_route_aware": amax_aware[stage],
                "samples_route_agnostic": agnostic.ranges[stage].rows} if amax_agnostic is not None else {}),
        }
    document = {
        "method": options.method,
        "weight_bits": options.weight_bits,
        "activations": "unsigned" if options.unsigned_activations else "signed",
        "trt_version": ".".join(map(str, options.trt)), "trt_header": report.trt_header,
        "source": None if data is None else {
            "folder": str(data.folder), "degrade": data.degrade_spec, "gt": None if data.gt is None else str(data.gt),
            "images": report.calibration_images, "held_out": report.held_out_images, "crop": data.crop,
            "seed": data.seed},
        "route_aware": report.route_aware, "routing": aware.routing,
        "route_aware_fallback": fallback,
        "int8_mac_share": report.int8_mac_share,
        "stages": stages,
        "accuracy": report.to_json(),
    }
    (root / CALIBRATION_FILE).write_text(json.dumps(document, indent=2) + "\n")
