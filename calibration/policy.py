"""Which layers stay FP32.

Default: the first convolution of the first stage the plan runs and the last
convolution of each stage that can write the output image last (one stage for a chain;
every alternative branch of a final switch, e.g. each degradation's network of an
all-in-one model). Restoration networks lose most
where an INT8 grid meets pixel values directly (the input's fine noise, the output's
bright values); users of TensorRT report the same.

``--max-drop DB``: a sensitivity search. Each compute layer alone in INT8 (everything
else FP32) gives its PSNR cost on the held-out images; then layers are kept in FP32, one
more at a time in the order of their PSNR cost per weight, until the fully assembled model
is within the budget: the least FP32 compute the per-layer ranking can find, at N + k
evaluations. Per weight, because that is what an FP32 layer costs in time (weights are the
MACs per output position): a restoration network's first and last convolutions hold 1/64
of a middle one's weights (DnCNN), so keeping them costs next to nothing.
(Ranking instead by each layer's gain when put back in FP32 in the all-INT8 model was tried
on DnCNN-S with channel equalization and bias correction, budget 0.05 dB: it kept 8 layers
where this ranking keeps 4, and did worse on Set12, 0.054 / 0.068 dB on ONNX Runtime /
OpenVINO against 0.055 / 0.054 dB; the gains, ~0.003 dB each, drown in the held-out noise.)

"Within the budget" means the mean per-image drop plus its standard error: the budget
should hold on the user's test images, not only on the few held-out ones. (DnCNN-S:
a held-out drop of 0.045 dB came out as 0.051 dB on Set12 without the margin.)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import numpy as np

from edgerestore.runtime.bundle import Bundle, walk_plan

from .quantize import compute_nodes

Layer = tuple[str, str]  # (stage, node)


def plan_runs(steps: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Every ``run`` step of a plan in execution order, through nested branches and loop bodies."""
    return (step for step in walk_plan(steps) if step.get("op") == "run")


def all_layers(bundle: Bundle) -> list[Layer]:
    """Every quantizable layer, stages in plan order (each stage once), nodes in graph order."""
    seen, layers = set(), []
    for step in plan_runs(bundle.plan):
        stage = step["stage"]
        if stage not in seen:
            seen.add(stage)
            layers += [(stage, node) for node in compute_nodes(bundle.stage_path(stage, "fp32"))]
    return layers


def last_writers(steps: list[dict[str, Any]], var: str) -> tuple[list[str], bool]:
    """Stages whose run can be the last to write ``var`` in ``steps``, and whether every path
    through ``steps`` writes it (if not, a writer before ``steps`` can be the last one too)."""
    found: list[str] = []

    def add(stages: list[str]) -> None:
        found.extend(s for s in stages if s not in found)

    for step in reversed(steps):
        if step.get("op") == "run" and var in step.get("out", {}).values():
            add([step["stage"]])
            return found, True
        if step.get("op") == "loop":
            stages, whole = last_writers(step.get("body", []), var)
            add(stages)
            if whole and step.get("values"):
                return found, True
        elif step.get("op") == "switch":
            results = [last_writers(b.get("steps", []), var) for b in step["branches"]]
            for stages, _ in results:
                add(stages)
            if all(whole and not b.get("stop") for (_, whole), b in zip(results, step["branches"])):
                return found, True
    return found, False


def layer_weights(bundle: Bundle, layers: list[Layer]) -> dict[Layer, int]:
    """Weight elements of each compute layer (its MACs per output position); a layer without
    constant weights counts as the heaviest one, so it is not kept in FP32 for free."""
    import onnx

    sizes: dict[Layer, int] = {}
    for stage in dict.fromkeys(stage for stage, _ in layers):
        graph = onnx.load(str(bundle.stage_path(stage, "fp32"))).graph
        constants = {t.name: int(np.prod(t.dims)) for t in graph.initializer}
        for node in graph.node:
            if (stage, node.name) in layers:
                sizes[(stage, node.name)] = sum(constants.get(name, 0) for name in node.input[:2])
    heaviest = max(sizes.values(), default=1) or 1
    return {layer: sizes.get(layer) or heaviest for layer in layers}


def default_fp32_layers(bundle: Bundle) -> list[Layer]:
    runs = list(plan_runs(bundle.plan))
    first = runs[0]["stage"]
    first_nodes = compute_nodes(bundle.stage_path(first, "fp32"))
    layers = [(first, first_nodes[0])] if first_nodes else []
    for last in last_writers(bundle.plan, bundle.io.get("output", "image"))[0]:
        last_nodes = compute_nodes(bundle.stage_path(last, "fp32"))
        if last_nodes and (last, last_nodes[-1]) not in layers:
            layers.append((last, last_nodes[-1]))
    return layers


@dataclass
class SearchResult:
    budget_db: float
    fp32_psnr: float
    fp32_layers: list[Layer]
    drop_db: float  # mean per-image drop of the chosen model on the held-out images
    margin_db: float = 0.0  # its standard error
    # per layer: PSNR drop with only that layer in INT8
    sensitivity: list[tuple[Layer, float]] = field(default_factory=list)
    # (k, drop, standard error) after keeping the k most sensitive layers in FP32
    steps: list[tuple[int, float, float]] = field(default_factory=list)

    def to_json(self) -> dict:
        return {"max_drop_db": self.budget_db, "fp32_psnr": self.fp32_psnr, "drop_db": self.drop_db,
                "standard_error_db": self.margin_db,
                "fp32_layers": [list(layer) for layer in self.fp32_layers],
                "sensitivity": [{"stage": s, "node": n, "drop_db": d} for (s, n), d in self.sensitivity],
                "steps": [{"fp32_layers": k, "drop_db": d, "standard_error_db": e} for k, d, e in self.steps]}


def drop_stats(reference: np.ndarray, candidate: np.ndarray) -> tuple[float, float]:
    """Mean per-image PSNR drop and its standard error."""
    drops = np.asarray(reference, np.float64) - np.asarray(candidate, np.float64)
    error = float(drops.std(ddof=1) / np.sqrt(len(drops))) if len(drops) > 1 else 0.0
    return float(drops.mean()), error


def sensitivity_search(layers: list[Layer], budget_db: float, fp32_psnrs: list[float],
                       psnrs_with_fp32: Callable[[set[Layer]], list[float]],
                       progress: Callable[[str, int, int], None] = lambda *_: None,
                       weights: dict[Layer, int] | None = None) -> SearchResult:
    """``psnrs_with_fp32(S)``: per-image held-out PSNRs of the model with the layers in ``S``
    in FP32 and every other layer in INT8; ``fp32_psnrs`` the same for the FP32 model;
    ``weights``: each layer's weight count (default: all alike)."""
    result = SearchResult(budget_db, float(np.mean(fp32_psnrs)), [], 0.0)

    def within(k: int, fp32_layers: list[Layer]) -> bool:
        drop, error = drop_stats(fp32_psnrs, psnrs_with_fp32(set(fp32_layers))) if k < len(layers) else (0.0, 0.0)
        result.steps.append((k, drop, error))
        if drop + error <= budget_db:
            result.fp32_layers, result.drop_db, result.margin_db = fp32_layers, drop, error
            return True
        return False

    if within(0, []):
        return result
    everything = set(layers)
    for i, layer in enumerate(layers):
        progress(f"sensitivity: {layer[0]} {layer[1]}", i, len(layers) * 2)
        result.sensitivity.append((layer, drop_stats(fp32_psnrs, psnrs_with_fp32(everything - {layer}))[0]))
    per_weight = {layer: cost / (weights[layer] if weights else 1) for layer, cost in result.sensitivity}
    ranked = sorted(per_weight, key=lambda layer: -per_weight[layer])
    for k in range(1, len(ranked) + 1):
        progress(f"sensitivity: {k} layer(s) in FP32", len(layers) + k, len(layers) * 2)
        if within(k, ranked[:k]):
            return result
    raise AssertionError("unreachable: with every layer in FP32 the drop is 0")
