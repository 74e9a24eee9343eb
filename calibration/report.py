"""The human-readable INT8 export report (``--json`` prints :meth:`Int8Report.to_json`)."""

from __future__ import annotations

from .int8 import Int8Report
from .macs import WARN_SHARE


def _db(value: float | None) -> str:
    return "inf" if value is None or value == float("inf") else f"{value:.2f}"


def render(report: Int8Report) -> str:
    lines = [f"INT8: {report.method} ranges from {report.calibration_images} calibration crops "
             f"({report.calibration_tiles} tiles), {'route-aware' if report.route_aware else 'route-agnostic'}, "
             f"{report.weight_bits}-bit weights; caches {report.trt_header}",
             "FP32 layers: " + (", ".join(f"{s}:{n}" for s, n in report.fp32_layers) or "none"),
             f"INT8 runs {report.int8_mac_share:.1%} of the MACs"]
    adaround = report.adaround_summary()
    if adaround is not None:
        used, fitted, ratio = adaround
        lines.append(f"AdaRound: learned rounding used for {used} of {fitted} convolutions "
                     f"(held-out output error {ratio:.0%} of nearest rounding's)")
    if report.unsigned_tensors:
        lines.append(f"activations: {report.unsigned_tensors} non-negative tensors on unsigned 8 bits (256 levels; "
                     "ONNX Runtime, OpenVINO); TensorRT runs them as signed INT8 (128 levels): to validate a bundle "
                     "as TensorRT computes it, export with --signed-activations")
    lines.append("TensorRT builds the Q/DQ graph (explicit INT8, 8.5 to 11); DLA below TensorRT 11 builds implicit "
                 "INT8 from the FP32 graph and the caches: without the learned rounding and bias correction")
    if report.int8_mac_share < WARN_SHARE:
        lines.append(f"warning: more than half of the MACs stay in FP32 ({1 - report.int8_mac_share:.1%}): "
                     "expect little of INT8's speed")
    if report.search is not None:
        s = report.search
        lines.append(f"sensitivity search: budget {s.budget_db:g} dB, "
                     f"{len(s.fp32_layers)} layer(s) kept in FP32, held-out drop {s.drop_db:.3f} "
                     f"+- {s.margin_db:.3f} dB")
    if not report.scores:
        lines.append("no held-out images: accuracy not checked")
        return "\n".join(lines)
    lines.append(f"held-out check on {report.held_out_images} crops:")
    lines.append(f"  {'backend':<12} {'precision':<9} {'PSNR dB':>8} {'SSIM':>7} {'seconds':>8}")
    by_backend: dict[str, dict[str, object]] = {}
    for score in report.scores:
        by_backend.setdefault(score.backend, {})[score.precision] = score
        lines.append(f"  {score.backend:<12} {score.precision:<9} {_db(score.psnr):>8} {score.ssim:>7.4f} "
                     f"{score.seconds:>8.3f}")
    for backend, rows in by_backend.items():
        if "fp32" in rows and "int8" in rows:
            fp32, int8 = rows["fp32"], rows["int8"]
            lines.append(f"  {backend}: INT8 - FP32 = {int8.psnr - fp32.psnr:+.3f} dB, "
                         f"time ratio {int8.seconds / fp32.seconds:.2f}")
    if report.alternative is not None:
        fp32, ours = report.scores[0], report.scores[1]
        other = report.alternative
        mine, theirs = ("route-aware", "route-agnostic") if report.route_aware else ("route-agnostic", "route-aware")
        lines.append(f"calibration ({fp32.backend}): {mine} {_db(ours.psnr)} dB vs {theirs} {_db(other.psnr)} dB "
                     f"(FP32 {_db(fp32.psnr)} dB); routing agrees with FP32 on {report.routing_agreement:.1%} of decisions")
        lines.append(f"  {'branch':<20} {'FP32':>7} {mine:>15} {theirs:>15}")
        for key in fp32.per_branch:
            lines.append(f"  {key:<20} {_db(fp32.per_branch[key]):>7} {_db(ours.per_branch.get(key)):>15} "
                         f"{_db(other.per_branch.get(key)):>15}")
    return "\n".join(lines)
