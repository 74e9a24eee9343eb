"""All-in-one (ADMS) training, small enough for a CPU. Stages, in order:

1. ``unified``: the UM on patches of every degradation (each patch one degradation, balanced
   per batch, its parameter uniform in the kind's training range, ``KINDS`` in
   :mod:`edgerestore.models.allinone`); MSE loss, Adam, cosine decay.
2. ``finetune:<d>``: per degradation ``d`` a copy of the UM trained on ``d`` alone
   (``theta_ft_d``), MSE, Adam at ``finetune_lr``, cosine decay.
3. ``faig:<d>``: filter attribution integrated gradients along the straight path
   ``theta(alpha) = theta_UM + alpha * (theta_ft_d - theta_UM)``, one progress step per
   ``alpha``, midpoint rule over ``A = faig_steps`` points ``alpha_k = (k + 1/2) / A``::

       FAIG_d(f) = 1/A * sum_k sum_{p in f} | dL_d(theta(alpha_k)) / dtheta_p * (theta_ft_d,p - theta_UM,p) |

   ``f`` is a filter (one output channel of a convolution: ``W[o]`` and ``b[o]``), ``L_d`` the
   MSE of the network on a fixed set of ``faig_batches`` batches of ``d`` patches. The
   absolute value is taken per parameter and path point (the paper takes it after the path
   sum); either way a filter scores high when its change towards ``theta_ft_d`` moves the
   loss on ``d`` a lot. ``M_d`` = the ``round(q / 100 * N)`` filters with the largest scores,
   ``N`` = all filters of the network, for each ``q`` in ``--q``.
4. ``filters:<d>:<q>%``: the discriminative filters' own weights. From the UM, fine-tune on
   ``d`` alone with only the filters of ``M_d`` free (the gradient is masked, so Adam leaves
   every other parameter exactly at the UM's); ``theta_d * M_d`` is the result minus the UM.
   This is the fine-tuned delta restricted to the mask. The delta of the unrestricted model of
   stage 2 cut to the mask is not: measured here, that change made the blur branch worse than
   the UM at every q (the unrestricted fine-tuning spreads a coordinated change over all
   filters, and a few of them alone do not carry it).
5. ``classifier``: the degradation classifier, cross-entropy on patches of random size
   (64..128, the runtime's tiles and more) labelled with their degradation.

The checkpoint keeps the UM, the classifier, the FAIG ranking of each ``d`` up to ``max(--q)``
and the deltas of stage 4 for every ``q``, deployed at ``--deploy-q``. Its meta records the
configuration, the command, the time per stage and a validation table (PSNR of the UM, the
stage-2 models and the folded branches at each ``q`` on fixed patches of the training
distribution).

Resumable: ``OUTPUT.state`` holds the finished stages' results and the running stage's model,
optimiser, position and RNGs, rewritten atomically every ``save_every`` steps and at each
stage's end; rerunning the command continues where it stopped.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch.func import functional_call

from edgerestore.runtime import degrade, imageio
from edgerestore.runtime.errors import EdgeRestoreError

from ..allinone import DEGRADATIONS, KINDS, AllInOne, DegradationClassifier, PlainNet, check_degradations, q_key
from ..checkpoint import save_checkpoint
from .state import load_state, pack_numpy_rng, save_state, unpack_numpy_rng

MARGIN = 12  # pixels degraded around each patch, then cut away (blur reaches 3 sigma = 9 at sigma 3)
CLASSIFIER_SIZES = (64, 80, 96, 112, 128)
# Options whose change makes a saved state meaningless (the others may change between runs).
ARCHITECTURE = ("features", "depth", "degradations", "classifier_features", "patch", "seed")


@dataclass
class TrainConfig:
    data: str
    output: str
    degradations: list[str] = field(default_factory=lambda: list(DEGRADATIONS))
    features: int = 40
    depth: int = 10
    classifier_features: int = 32
    unified_steps: int = 1200
    finetune_steps: int = 200  # per degradation
    faig_steps: int = 8  # path points per degradation
    faig_batches: int = 2
    filter_steps: int = 300  # per degradation and q
    filter_lr: float = 1e-3
    classifier_steps: int = 1000
    batch: int = 16
    patch: int = 48
    lr: float = 1e-3
    finetune_lr: float = 5e-4
    classifier_lr: float = 2e-3
    q: list[float] = field(default_factory=lambda: [1.0, 3.0, 5.0])
    deploy_q: float = 3.0
    seed: int = 0
    bf16: bool = True  # autocast on CPUs with bf16 units, fp32 master weights
    save_every: int = 50

    def __post_init__(self):
        check_degradations(list(self.degradations))
        if not self.q or any(not 0 < q <= 100 for q in self.q):
            raise EdgeRestoreError(f"--q takes percentages in (0, 100], got {', '.join(map(str, self.q)) or 'none'}")
        if self.deploy_q not in self.q:
            listed = ", ".join(f"{q:g}" for q in self.q)
            raise EdgeRestoreError(f"--deploy-q {self.deploy_q:g} is not one of --q {listed}")
        if self.features < 1 or self.depth < 2 or self.patch < 8:
            raise EdgeRestoreError("need --features >= 1, --depth >= 2 and --patch >= 8")


@dataclass(frozen=True)
class Stage:
    name: str
    kind: str  # unified | finetune | faig | filters | classifier
    degradation: str | None
    steps: int
    q: float | None = None


def stages(config: TrainConfig) -> list[Stage]:
    ds = config.degradations
    return ([Stage("unified", "unified", None, config.unified_steps)]
            + [Stage(f"finetune:{d}", "finetune", d, config.finetune_steps) for d in ds]
            + [Stage(f"faig:{d}", "faig", d, config.faig_steps) for d in ds]
            + [Stage(f"filters:{d}:{q:g}%", "filters", d, config.filter_steps, q) for d in ds for q in config.q]
            + [Stage("classifier", "classifier", None, config.classifier_steps)])


def command_line(config: TrainConfig) -> str:
    """The ``edgerestore train allinone`` command that reproduces ``config``."""
    flags = {"--data": config.data, "-o": config.output, "--degradations": ",".join(config.degradations),
             "--features": config.features, "--depth": config.depth,
             "--classifier-features": config.classifier_features, "--unified-steps": config.unified_steps,
             "--finetune-steps": config.finetune_steps, "--faig-steps": config.faig_steps,
             "--faig-batches": config.faig_batches, "--filter-steps": config.filter_steps,
             "--filter-lr": config.filter_lr, "--classifier-steps": config.classifier_steps,
             "--batch": config.batch, "--patch": config.patch, "--lr": config.lr,
             "--finetune-lr": config.finetune_lr, "--classifier-lr": config.classifier_lr,
             "--q": ",".join(f"{q:g}" for q in config.q), "--deploy-q": f"{config.deploy_q:g}",
             "--seed": config.seed}
    text = " ".join(f"{k} {v}" for k, v in flags.items())
    return f"edgerestore train allinone {text}" + ("" if config.bf16 else " --no-bf16")


class DegradedPatches:
    """Random crops of clean images, each degraded by one kind at a random strength."""

    def __init__(self, folder: str | Path, degradations: list[str], patch: int, channels: int = 3, seed: int = 0):
        self.degradations, self.patch = list(degradations), patch
        need = max(patch, *CLASSIFIER_SIZES) + 2 * MARGIN
        self.images = []
        for path in imageio.list_images(folder):
            pixels = imageio.read_image(path).pixels
            if pixels.shape[2] != channels:
                pixels = np.repeat(pixels, channels, axis=2) if pixels.shape[2] == 1 else pixels[..., :channels]
            if min(pixels.shape[:2]) >= need:
                self.images.append(pixels)
        if not self.images:
            raise EdgeRestoreError(f"no training image in '{folder}' is at least {need}x{need} pixels")
        self.rng = np.random.RandomState(seed)

    def sample(self, degradation: str, size: int, rng: np.random.RandomState) -> tuple[np.ndarray, np.ndarray]:
        image = self.images[rng.randint(len(self.images))]
        side = size + 2 * MARGIN
        h, w = image.shape[:2]
        y, x = rng.randint(h - side + 1), rng.randint(w - side + 1)
        crop = image[y:y + side, x:x + side].astype(np.float64) / 255.0
        if rng.rand() < 0.5:
            crop = crop[:, ::-1]
        crop = np.ascontiguousarray(np.rot90(crop, rng.randint(4)))
        kind = KINDS[degradation]
        spec = kind.training_spec(rng.uniform(kind.low, kind.high))
        degraded = degrade.parse(spec, seed=int(rng.randint(2**31))).apply(crop)
        inner = np.s_[MARGIN:MARGIN + size, MARGIN:MARGIN + size]
        return degraded[inner], crop[inner]

    def batch(self, labels: list[int], size: int | None = None, rng: np.random.RandomState | None = None):
        """(degraded, clean, labels): float32 NCHW tensors in [0, 1] (degraded not clipped)."""
        rng = self.rng if rng is None else rng
        pairs = [self.sample(self.degradations[k], size or self.patch, rng) for k in labels]
        to_tensor = lambda xs: torch.from_numpy(np.stack(xs).transpose(0, 3, 1, 2).astype(np.float32))
        return to_tensor([p[0] for p in pairs]), to_tensor([p[1] for p in pairs]), torch.tensor(labels)

    def mixed_labels(self, size: int, rng: np.random.RandomState | None = None) -> list[int]:
        """``size`` labels, every degradation as often as the batch allows, in random order."""
        rng = self.rng if rng is None else rng
        labels = np.arange(size) % len(self.degradations)
        return [int(v) for v in rng.permutation(labels)]


def he_init(net: PlainNet) -> None:
    """He-normal hidden convolutions and a last convolution scaled by 0.1, biases zero: the
    residual starts small but every layer passes signal. (With PyTorch's default init the
    activations shrink layer by layer; measured here, a 10-layer UM then stayed at the input's
    PSNR for the first hundred steps of denoising.)"""
    with torch.no_grad():
        for conv in net.convs[:-1]:
            torch.nn.init.kaiming_normal_(conv.weight, nonlinearity="relu")
            conv.bias.zero_()
        net.convs[-1].weight.mul_(0.1)
        net.convs[-1].bias.zero_()


def psnr(output: torch.Tensor, clean: torch.Tensor) -> float:
    mse = ((output.float().clamp(0, 1) - clean) ** 2).mean((1, 2, 3)).clamp_min(1e-10)
    return float((10 * torch.log10(1 / mse)).mean())


def cosine(base: float, step: int, steps: int) -> float:
    return base * (0.5 + 0.5 * np.cos(np.pi * step / max(steps, 1)))


class Trainer:
    def __init__(self, config: TrainConfig, progress: Callable[[dict], None]):
        self.config, self.progress = config, progress
        self.output = Path(config.output)
        self.state_path = self.output.with_name(self.output.name + ".state")
        self.data = DegradedPatches(config.data, config.degradations, config.patch, seed=config.seed)
        self.plan = stages(config)
        self.total = sum(s.steps for s in self.plan)
        self.state: dict[str, Any] = {"done": {}, "current": None, "unified": None, "finetuned": {}, "faig": {},
                                      "filters": {}, "classifier": None, "seconds": {}, "config": asdict(config)}
        torch.manual_seed(config.seed)
        if self.state_path.exists():
            self._resume()

    # -- state ------------------------------------------------------------------------
    def _resume(self) -> None:
        state = load_state(self.state_path)
        saved = state.get("config", {})
        changed = [k for k in ARCHITECTURE if saved.get(k) != asdict(self.config)[k]]
        if changed:
            k = changed[0]
            raise EdgeRestoreError(f"'{self.state_path}' was written with --{k.replace('_', '-')} {saved.get(k)}, "
                                   f"not {asdict(self.config)[k]}; use the same options or delete it to start over")
        self.state = {**self.state, **state}  # keys of stages a newer version added start empty
        unpack_numpy_rng(self.data.rng, state["data_rng"])
        torch.set_rng_state(state["torch_rng"])

    def _save(self) -> None:
        self.state["data_rng"] = pack_numpy_rng(self.data.rng)
        self.state["torch_rng"] = torch.get_rng_state()
        self.state["config"] = asdict(self.config)
        save_state(self.state_path, self.state)

    def _position(self, stage: Stage) -> int:
        current = self.state["current"]
        return current["step"] if current and current["stage"] == stage.name else 0

    # -- the run ------------------------------------------------------------------------
    def run(self) -> Path:
        step = 0
        for stage in self.plan:
            if not self.state["done"].get(stage.name):
                runner = {"unified": self._train_network, "finetune": self._train_network,
                          "filters": self._train_network, "faig": self._faig,
                          "classifier": self._classifier}[stage.kind]
                runner(stage, step)
                self.state["done"][stage.name] = True
                self.state["current"] = None
                self._save()
            step += stage.steps
        model = self.assemble()
        meta = {"train": asdict(self.config), "command": command_line(self.config),
                "train_seconds": round(sum(self.state["seconds"].values()), 1),
                "stage_seconds": {k: round(v, 1) for k, v in self.state["seconds"].items()},
                "steps": self.total, "validation": self.validation(model),
                "faig_top": {d: [round(float(s), 8) for s in sorted(self.state["faig"][d], reverse=True)[:10]]
                             for d in self.config.degradations}}
        save_checkpoint(self.output, model.state_dict(), arch=model.arch, config=model.config(), meta=meta)
        return self.output

    def _report(self, stage: Stage, base: int, k: int, start: float, **info) -> None:
        self.state["seconds"][stage.name] = self.state["seconds"].get(stage.name, 0.0) + time.perf_counter() - start
        self.progress({"step": base + k, "total": self.total, "stage": stage.name,
                       "seconds": sum(self.state["seconds"].values()), **info})

    def _checkpoint_current(self, stage: Stage, k: int, **parts) -> None:
        self.state["current"] = {"stage": stage.name, "step": k, **parts}
        if k % self.config.save_every == 0:
            self._save()

    def _train_network(self, stage: Stage, base: int) -> None:
        c = self.config
        net = PlainNet(3, c.features, c.depth)
        if stage.kind == "unified":
            he_init(net)
        else:
            net.load_state_dict(self.state["unified"])
        lr = {"unified": c.lr, "finetune": c.finetune_lr, "filters": c.filter_lr}[stage.kind]
        masks = None
        if stage.kind == "filters":
            chosen = [net.filters()[i] for i in top_filters(self.state["faig"][stage.degradation], stage.q)]
            masks = filter_masks(net, chosen)
        opt = torch.optim.Adam(net.parameters(), lr)
        k = self._position(stage)
        if k:
            net.load_state_dict(self.state["current"]["model"])
            opt.load_state_dict(self.state["current"]["opt"])
        label = None if stage.degradation is None else c.degradations.index(stage.degradation)
        net.train()
        while k < stage.steps:
            start = time.perf_counter()
            for group in opt.param_groups:
                group["lr"] = cosine(lr, k, stage.steps)
            labels = self.data.mixed_labels(c.batch) if label is None else [label] * c.batch
            degraded, clean, _ = self.data.batch(labels)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=c.bf16):
                out = net(degraded)
            loss = F.mse_loss(out.float(), clean)
            opt.zero_grad()
            loss.backward()
            if masks is not None:  # zero gradient off the mask: Adam then never moves those entries
                for name, p in net.named_parameters():
                    p.grad.mul_(masks[name])
            opt.step()
            k += 1
            self._checkpoint_current(stage, k, model=net.state_dict(), opt=opt.state_dict())
            self._report(stage, base, k, start, psnr=psnr(out.detach(), clean))
        result = self.state["current"]["model"] if self.state["current"] else net.state_dict()
        if stage.kind == "unified":
            self.state["unified"] = result
        elif stage.kind == "finetune":
            self.state["finetuned"][stage.degradation] = result
        else:
            self.state["filters"].setdefault(stage.degradation, {})[stage.q] = result

    def _faig(self, stage: Stage, base: int) -> None:
        c = self.config
        d = stage.degradation
        um = PlainNet(3, c.features, c.depth)
        um.load_state_dict(self.state["unified"])
        theta_um = {n: p.detach() for n, p in um.named_parameters()}
        ft = self.state["finetuned"][d]
        delta = {n: ft[n] - theta_um[n] for n in theta_um}
        # The same patches at every path point (and after a resume): their own seeded RNG.
        rng = np.random.RandomState([c.seed, 1 + c.degradations.index(d)])
        label = c.degradations.index(d)
        batches = [self.data.batch([label] * c.batch, rng=rng)[:2] for _ in range(c.faig_batches)]
        k = self._position(stage)
        scores = self.state["current"]["scores"] if k else {n: torch.zeros_like(p) for n, p in theta_um.items()}
        while k < stage.steps:
            start = time.perf_counter()
            point, loss = faig_point(um, theta_um, delta, batches, (k + 0.5) / stage.steps)
            for n, value in point.items():
                scores[n] += value / stage.steps
            k += 1
            self._checkpoint_current(stage, k, scores=scores)
            self._report(stage, base, k, start, loss=loss)
        self.state["faig"][d] = per_filter(scores, um)

    def _classifier(self, stage: Stage, base: int) -> None:
        c = self.config
        net = DegradationClassifier(3, len(c.degradations), c.classifier_features)
        opt = torch.optim.Adam(net.parameters(), c.classifier_lr)
        k = self._position(stage)
        if k:
            net.load_state_dict(self.state["current"]["model"])
            opt.load_state_dict(self.state["current"]["opt"])
        net.train()
        while k < stage.steps:
            start = time.perf_counter()
            for group in opt.param_groups:
                group["lr"] = cosine(c.classifier_lr, k, stage.steps)
            size = CLASSIFIER_SIZES[self.data.rng.randint(len(CLASSIFIER_SIZES))]
            degraded, _, labels = self.data.batch(self.data.mixed_labels(c.batch), size=size)
            logits = net(degraded)
            loss = F.cross_entropy(logits, labels)
            opt.zero_grad()
            loss.backward()
            opt.step()
            k += 1
            self._checkpoint_current(stage, k, model=net.state_dict(), opt=opt.state_dict())
            self._report(stage, base, k, start, accuracy=float((logits.argmax(1) == labels).float().mean()))
        self.state["classifier"] = self.state["current"]["model"] if self.state["current"] else net.state_dict()

    # -- the checkpoint -------------------------------------------------------------------
    def assemble(self, q: float | None = None) -> AllInOne:
        """The deployable model: UM, classifier and the ranked filter deltas up to max(--q)."""
        c = self.config
        um = self._net(self.state["unified"])
        trained = {d: {v: self._net(self.state["filters"][d][v]) for v in c.q} for d in c.degradations}
        model = from_finetuned(um, trained, {d: self.state["faig"][d] for d in c.degradations}, c.q,
                               c.deploy_q if q is None else q, c.classifier_features)
        model.classifier.load_state_dict(self.state["classifier"])
        return model.eval()

    def _net(self, state: dict[str, torch.Tensor]) -> PlainNet:
        net = PlainNet(3, self.config.features, self.config.depth)
        net.load_state_dict(state)
        return net.eval()

    def validation(self, model: AllInOne) -> dict[str, dict[str, float]]:
        """PSNR on fixed patches of each degradation (the training distribution, not held-out
        images; benchmarks/allinone_eval.py scores those)."""
        c = self.config
        table = {}
        with torch.no_grad():
            for index, d in enumerate(c.degradations):
                rng = np.random.RandomState([c.seed, 100 + index])
                degraded, clean, _ = self.data.batch([index] * 16, rng=rng)
                finetuned = self._net(self.state["finetuned"][d])
                row = {"input": psnr(degraded, clean), "unified": psnr(model.um(degraded), clean),
                       "finetuned": psnr(finetuned(degraded), clean)}
                for q in c.q:
                    row[f"q{q:g}"] = psnr(self.assemble(q).fold(d)(degraded), clean)
                    # stage 2's unrestricted delta cut to the same mask, for comparison
                    chosen = [model.um.filters()[i] for i in top_filters(self.state["faig"][d], q)]
                    masks = filter_masks(model.um, chosen)
                    theta_ft = dict(finetuned.named_parameters())
                    cut = {n: p + (theta_ft[n] - p) * masks[n] for n, p in model.um.named_parameters()}
                    row[f"q{q:g}_cut"] = psnr(functional_call(model.um, cut, (degraded,)), clean)
                table[d] = {k: round(v, 3) for k, v in row.items()}
        return table


def faig_point(net: PlainNet, theta_um: dict[str, torch.Tensor], delta: dict[str, torch.Tensor],
               batches: list[tuple[torch.Tensor, torch.Tensor]], alpha: float):
    """``|dL/dtheta * delta|`` per parameter at ``theta_UM + alpha * delta`` (one path point of
    FAIG), and the loss there. ``L``: the mean MSE over ``batches`` of (degraded, clean)."""
    params = {n: (theta_um[n] + alpha * delta[n]).detach().requires_grad_(True) for n in theta_um}
    loss = sum(F.mse_loss(functional_call(net, params, (x,)), y) for x, y in batches) / len(batches)
    grads = torch.autograd.grad(loss, list(params.values()))
    return {n: (g * delta[n]).abs() for n, g in zip(params, grads)}, float(loss.detach())


def faig(um: PlainNet, finetuned: PlainNet, batches: list[tuple[torch.Tensor, torch.Tensor]],
         steps: int = 8) -> list[float]:
    """FAIG per filter (the module docstring's definition) of ``um -> finetuned`` on ``batches``,
    in the order of :meth:`PlainNet.filters`."""
    theta_um = {n: p.detach() for n, p in um.named_parameters()}
    target = dict(finetuned.named_parameters())
    delta = {n: target[n].detach() - theta_um[n] for n in theta_um}
    scores = {n: torch.zeros_like(p) for n, p in theta_um.items()}
    for k in range(steps):
        for n, value in faig_point(um, theta_um, delta, batches, (k + 0.5) / steps)[0].items():
            scores[n] += value / steps
    return per_filter(scores, um)


def per_filter(scores: dict[str, torch.Tensor], net: PlainNet) -> list[float]:
    """Parameter scores -> one score per filter (its weight slice and its bias), in the order of
    :meth:`PlainNet.filters`."""
    out = []
    for layer, conv in enumerate(net.convs):
        weight, bias = scores[f"convs.{layer}.weight"], scores[f"convs.{layer}.bias"]
        out += (weight.flatten(1).sum(1) + bias).tolist()
    return out


def top_filters(scores: list[float], q: float) -> list[int]:
    """Indices of the ``round(q / 100 * N)`` best filters (at least one), best first; ties to
    the lower index."""
    count = max(1, round(q / 100.0 * len(scores)))
    order = np.argsort(-np.asarray(scores, np.float64), kind="stable")
    return [int(i) for i in order[:count]]


def filter_masks(net: PlainNet, chosen: list[tuple[int, int]]) -> dict[str, torch.Tensor]:
    """0/1 masks over ``net``'s parameters: 1 on the weight slices and biases of ``chosen`` filters."""
    masks = {name: torch.zeros_like(p) for name, p in net.named_parameters()}
    for layer, o in chosen:
        masks[f"convs.{layer}.weight"][o] = 1.0
        masks[f"convs.{layer}.bias"][o] = 1.0
    return masks


def from_finetuned(um: PlainNet, finetuned: dict[str, PlainNet | dict[float, PlainNet]],
                   scores: dict[str, list[float]], qs: list[float], q: float,
                   classifier_features: int = 32) -> AllInOne:
    """An :class:`AllInOne` whose deltas at ``q'`` in ``qs`` are ``theta_ft - theta_UM`` at the top
    ``q'`` percent of filters by ``scores[d]``, with ``theta_ft = finetuned[d][q']`` (or
    ``finetuned[d]`` for every ``q'``), deployed at ``q``."""
    convs = um.convs
    filters = um.filters()
    rankings = {d: [list(filters[i]) for i in top_filters(s, max(qs))] for d, s in scores.items()}
    model = AllInOne(convs[0].in_channels, convs[0].out_channels, len(convs), list(finetuned), classifier_features,
                     q, qs, rankings)
    model.um.load_state_dict(um.state_dict())
    with torch.no_grad():
        for d, nets in finetuned.items():
            for v in qs:
                net = nets[v] if isinstance(nets, dict) else nets
                deltas = model.adf[d][q_key(v)]
                for rank, (layer, o) in enumerate(model._ranked(d, v)):
                    deltas.weight[rank].copy_(net.convs[layer].weight[o] - convs[layer].weight[o])
                    deltas.bias[rank] = net.convs[layer].bias[o] - convs[layer].bias[o]
    return model


def train(config: TrainConfig, progress: Callable[[dict], None] = lambda _: None) -> Path:
    return Trainer(config, progress).run()
