"""All-in-one restoration with adaptive discriminative filters (ADMS: Park, Lee, Chun, CVPR 2023).

One unified model (UM) restores every degradation; per degradation ``d`` a few of its
convolution filters get their own weights. A filter is one output channel of a convolution:
its weight slice ``W[o]`` (all input channels, 3x3) and its bias ``b[o]``. ``M_d`` marks the
top ``q`` percent of all filters of the network for ``d`` (by FAIG, see
:mod:`edgerestore.models.train.allinone`) and ``theta_d`` holds their deltas, so a degradation
classifier's scores ``c`` give the network

    theta = theta_UM + sum_d c_d * theta_d * M_d,    theta_d * M_d = (theta_ft_d - theta_UM) * M_d

where ``theta_ft_d`` is the UM fine-tuned on ``d`` alone with only the filters ``M_d`` marks
free (so its delta is zero off the mask). With a hard decision (``c`` one-hot)
the sum has one term and folds into plain weights: branch ``d`` is the UM's architecture with
``theta_UM + theta_d * M_d``, so a tile costs exactly one plain network plus the classifier.
That is what the export writes: a ``classifier`` stage and one stage per degradation, joined by
one switch (``"blend": ["image"]`` lets the runtime mix the two most probable branches'
outputs, ``--route-policy soft``, for images with mixed degradations).

``M_d`` at ``q`` percent is the first ``round(q / 100 * N)`` filters of the degradation's FAIG
ranking (``N`` = all filters of the network). The checkpoint stores the ranking up to its
largest ``q`` (``config["filters"][d]``: ``[layer, output channel]`` pairs, best first) and,
for each ``q`` it was trained at (``config["qs"]``), the deltas of the masked filters
(``adf.<d>.q<q>.weight.<rank>``, ``adf.<d>.q<q>.bias``); ``config["q"]`` (default 3) is the one
deployed, and ``create_model("allinone", q=1)`` picks another.

Networks: the UM is a plain residual CNN (``x + convs(x)``, 3x3 convs with ReLU between,
no normalisation, so folding is exact); the classifier is four 3x3 convs (strides 1, 2, 2, 2)
with ReLU, global average pooling and one linear layer, so it runs on tiles of any size and
on whole images alike.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from edgerestore.runtime.errors import EdgeRestoreError

from .base import RestorationModel, StageGraph, StagePlan, TensorSpec, Tiling



@dataclass(frozen=True)
class DegradationKind:
    """What one class of the classifier means: a degradation step (runtime/degrade.py), the
    range its parameter is drawn from in training, and the spec the benchmarks score."""

    step: str
    low: float
    high: float
    evaluation: str

    def training_spec(self, value: float) -> str:
        return f"{self.step}:{value:.6g}"


KINDS = {
    "rain": DegradationKind("rain", 0.001, 0.004, "rain:0.002"),
    "blur": DegradationKind("blur", 1.0, 3.0, "blur:2"),
    "noise": DegradationKind("gaussian", 10.0, 40.0, "gaussian:25"),
}
DEGRADATIONS = tuple(KINDS)
TILE = 128


class PlainNet(nn.Module):
    """The UM and every folded branch: ``x + conv_n(relu(... relu(conv_1(x))))``."""

    def __init__(self, channels: int = 3, features: int = 40, depth: int = 10):
        super().__init__()
        widths = [channels] + [features] * (depth - 1) + [channels]
        self.convs = nn.ModuleList(nn.Conv2d(a, b, 3, padding=1) for a, b in zip(widths, widths[1:]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x
        for i, conv in enumerate(self.convs):
            y = conv(y) if i == 0 else conv(F.relu(y))
        return x + y

    def filters(self) -> list[tuple[int, int]]:
        """Every filter as ``(layer, output channel)``, in layer order."""
        return [(layer, o) for layer, conv in enumerate(self.convs) for o in range(conv.out_channels)]


class DegradationClassifier(nn.Module):
    """Image (any size) -> one logit per degradation."""

    def __init__(self, channels: int = 3, classes: int = 3, features: int = 32):
        super().__init__()
        widths = [channels, features // 2, features, features, 2 * features]
        self.convs = nn.ModuleList(nn.Conv2d(a, b, 3, stride=1 if i == 0 else 2, padding=1)
                                   for i, (a, b) in enumerate(zip(widths, widths[1:])))
        self.fc = nn.Linear(widths[-1], classes)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        y = image
        for conv in self.convs:
            y = F.relu(conv(y))
        return self.fc(F.adaptive_avg_pool2d(y, 1).flatten(1))

    def macs_per_pixel(self) -> float:
        """Per input pixel (each stride-2 conv runs on a quarter of the previous positions)."""
        total, area = 0.0, 1.0
        for conv in self.convs:
            area /= conv.stride[0] ** 2
            total += conv.in_channels * conv.out_channels * 9 * area
        return total


class FilterDeltas(nn.Module):
    """theta_d at the filters M_d marks, one weight slice per ranked filter plus their biases."""

    def __init__(self, net: PlainNet, ranking: list[tuple[int, int]]):
        super().__init__()
        self.weight = nn.ParameterList(nn.Parameter(torch.zeros_like(net.convs[layer].weight[o]))
                                       for layer, o in ranking)
        self.bias = nn.Parameter(torch.zeros(len(ranking)))


def q_key(q: float) -> str:
    """Module name of the deltas trained at ``q`` percent (``q3``, ``q2_5``)."""
    return "q" + f"{q:g}".replace(".", "_")


class AllInOne(RestorationModel):
    arch = "allinone"

    def __init__(self, channels: int = 3, features: int = 40, depth: int = 10,
                 degradations: list[str] | tuple[str, ...] = DEGRADATIONS, classifier_features: int = 32,
                 q: float = 3.0, qs: list[float] | tuple[float, ...] = (1.0, 3.0, 5.0),
                 filters: dict[str, list[list[int]]] | None = None):
        super().__init__()
        degradations = list(degradations)
        check_degradations(degradations)
        if depth < 2 or features < 1:
            raise EdgeRestoreError(f"all-in-one network needs depth >= 2 and features >= 1, got {depth}, {features}")
        self.channels, self.features, self.depth = channels, features, depth
        self.degradations, self.classifier_features = degradations, classifier_features
        self.q, self.qs = float(q), sorted({float(v) for v in qs})
        if not self.qs or any(not 0 < v <= 100 for v in [self.q, *self.qs]):
            raise EdgeRestoreError(f"q must be a percentage in (0, 100], got {q:g} (trained: {qs})")
        if self.q not in self.qs:
            raise EdgeRestoreError(f"q = {q:g}% is not one the checkpoint was trained at "
                                   f"({', '.join(f'{v:g}%' for v in self.qs)})")
        self.um = PlainNet(channels, features, depth)
        self.classifier = DegradationClassifier(channels, len(degradations), classifier_features)
        unknown = sorted(set(filters or {}) - set(degradations))
        if unknown:
            raise EdgeRestoreError(f"filters given for '{unknown[0]}', which is not one of the degradations "
                                   f"{', '.join(degradations)}")
        self.rankings = {d: _check_ranking(d, (filters or {}).get(d, []), self.um) for d in degradations}
        if any(self.rankings.values()):  # a trained model: every degradation ranks enough filters
            need = self.count(max(self.qs))
            short = next((d for d, r in self.rankings.items() if len(r) < need), None)
            if short is not None:
                raise EdgeRestoreError(f"'{short}' ranks {len(self.rankings[short])} filters; q = {max(self.qs):g}% "
                                       f"needs {need}")
        self.adf = nn.ModuleDict({d: nn.ModuleDict({q_key(v): FilterDeltas(self.um, self._ranked(d, v))
                                                    for v in self.qs}) for d in degradations})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.route(x)[0]

    def route(self, x: torch.Tensor, choice: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Each row through the branch its classifier picks (or ``choice``), as the runtime's
        hard switch does. Returns the output and the branch index per row."""
        if choice is None:
            choice = self.classifier(x).argmax(1)
        out = torch.empty_like(x)
        for index, d in enumerate(self.degradations):
            rows = (choice == index).nonzero().flatten()
            if len(rows):
                out[rows] = self.fold(d)(x[rows])
        return out, choice

    # -- the adaptive discriminative filters ----------------------------------------------
    def filter_count(self) -> int:
        return sum(conv.out_channels for conv in self.um.convs)

    def count(self, q: float) -> int:
        """Filters per degradation at ``q`` percent (at least one)."""
        return max(1, round(q / 100.0 * self.filter_count()))

    def selected_count(self) -> int:
        """Filters per degradation at this model's ``q``."""
        return self.count(self.q)

    def _ranked(self, d: str, q: float) -> list[tuple[int, int]]:
        return self.rankings[d][:self.count(q)] if self.rankings[d] else []

    def selected(self, d: str) -> list[tuple[int, int]]:
        """M_d at the deployed ``q``: the filters as (layer, output channel), best first."""
        return self._ranked(d, self.q)

    def deltas(self, d: str) -> FilterDeltas:
        return self.adf[d][q_key(self.q)]

    def fold(self, d: str) -> PlainNet:
        """Branch ``d`` as a plain network: ``theta_UM + theta_d * M_d``."""
        net = copy.deepcopy(self.um)
        deltas = self.deltas(d)
        with torch.no_grad():
            for rank, (layer, o) in enumerate(self.selected(d)):
                net.convs[layer].weight[o] += deltas.weight[rank]
                net.convs[layer].bias[o] += deltas.bias[rank]
        return net.eval()

    def masked_deltas(self, d: str) -> dict[str, torch.Tensor]:
        """``theta_d * M_d`` as dense tensors over the UM's parameters (zero off the mask)."""
        dense = {name: torch.zeros_like(p) for name, p in self.um.named_parameters()}
        deltas = self.deltas(d)
        for rank, (layer, o) in enumerate(self.selected(d)):
            dense[f"convs.{layer}.weight"][o] = deltas.weight[rank].detach()
            dense[f"convs.{layer}.bias"][o] = deltas.bias[rank].detach()
        return dense

    def mixed_parameters(self, scores: dict[str, float]) -> dict[str, torch.Tensor]:
        """``theta_UM + sum_d c_d * theta_d * M_d`` for classifier scores ``c`` (any mix)."""
        params = {name: p.detach().clone() for name, p in self.um.named_parameters()}
        for d, c in scores.items():
            for name, delta in self.masked_deltas(d).items():
                params[name] += c * delta
        return params

    def adf_parameter_count(self, d: str) -> int:
        return sum(self.um.convs[layer].weight[o].numel() + 1 for layer, o in self.selected(d))

    # -- RestorationModel ------------------------------------------------------------------
    @property
    def receptive_field(self) -> int:
        return 2 * self.depth + 1

    def default_tiling(self) -> Tiling:
        halo = self.receptive_field // 2
        return Tiling(tile=TILE, overlap=2 * (halo + 5), halo=halo, ramp=5)

    def config(self) -> dict[str, Any]:
        return {"channels": self.channels, "features": self.features, "depth": self.depth,
                "degradations": list(self.degradations), "classifier_features": self.classifier_features,
                "q": self.q, "qs": list(self.qs),
                "filters": {d: [list(f) for f in r] for d, r in self.rankings.items()}}

    def parameter_counts(self) -> dict[str, int]:
        counts = {"unified": sum(p.numel() for p in self.um.parameters()),
                  "classifier": sum(p.numel() for p in self.classifier.parameters())}
        counts["filters"] = sum(self.adf_parameter_count(d) for d in self.degradations) if any(
            self.rankings.values()) else 0
        return counts

    def stage_plan(self) -> StagePlan:
        c = self.channels
        image = TensorSpec("image", (c, None, None), "image")
        restored = TensorSpec("restored", (c, None, None), "image")
        um_macs = self.um_macs_per_pixel()
        stages = [StageGraph("classifier", self.classifier, [image],
                             [TensorSpec("logits", (len(self.degradations),), "logits")],
                             macs_per_pixel=self.classifier.macs_per_pixel(),
                             macs_per_call=float(self.classifier.fc.in_features * self.classifier.fc.out_features))]
        branches = []
        for d in self.degradations:
            stages.append(StageGraph(d, self.fold(d), [image], [restored], macs_per_pixel=um_macs))
            branches.append({"name": d, "label": d, "steps": [
                {"op": "run", "stage": d, "in": {"image": "image"}, "out": {"restored": "image"}}]})
        plan = [{"op": "run", "stage": "classifier", "in": {"image": "image"}, "out": {"logits": "logits"}},
                # One decision per tile (per image with --route-policy vote); --route-policy soft mixes
                # the two most probable branches' images by the classifier's renormalised probabilities.
                {"op": "switch", "name": "degradation", "logits": "logits", "blend": ["image"],
                 "branches": branches}]
        return StagePlan(stages, plan)

    def um_macs_per_pixel(self) -> float:
        return float(sum(conv.in_channels * conv.out_channels * 9 for conv in self.um.convs))


def check_degradations(names: list[str]) -> None:
    unknown = [d for d in names if d not in DEGRADATIONS]
    if unknown:
        raise EdgeRestoreError(f"unknown degradation '{unknown[0]}'; choose from {', '.join(DEGRADATIONS)}")
    if len(set(names)) != len(names) or len(names) < 2:
        raise EdgeRestoreError(f"need at least two different degradations, got {', '.join(names) or 'none'}")


def _check_ranking(d: str, ranking: list, net: PlainNet) -> list[tuple[int, int]]:
    valid = set(net.filters())
    out = []
    for entry in ranking:
        pair = tuple(int(v) for v in entry) if isinstance(entry, (list, tuple)) and len(entry) == 2 else None
        if pair not in valid:
            raise EdgeRestoreError(f"filter {entry!r} of '{d}' is not a (layer, output channel) of the network")
        out.append(pair)
    if len(set(out)) != len(out):
        raise EdgeRestoreError(f"the filter ranking of '{d}' lists a filter twice")
    return out
