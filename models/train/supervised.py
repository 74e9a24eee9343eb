"""Small supervised training runs: degraded patch in, clean patch out, one model.

Trains the demo checkpoints of SRN-DeblurNet, DeblurGAN-v2 and MemNet, and the shipped
rtdenoise, on synthetic degradations (blur for the deblurrers, Gaussian noise for the
denoisers: blind and spatially variant, as Path-Restore's training draws it) on the CPU. Every model
starts as the identity (its output layer zero, so the output is the input, or the
blurred input routed through its skips) and learns the correction; a few hundred steps
then already restore instead of destroying. Losses follow the papers' supervision without
their adversarial/perceptual terms: SRN's sum of per-scale MSEs, MemNet's final plus
intermediate reconstructions, DeblurGAN-v2's content MSE.

Resumable: ``OUTPUT.state`` (model, optimiser, RNGs, progress) is rewritten atomically
every ``save_every`` steps; rerunning the same command continues from it.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F

from edgerestore.runtime.errors import EdgeRestoreError

from ..base import RestorationModel
from ..checkpoint import save_checkpoint
from ..deblurganv2 import DeblurGANv2, SeparableConv2d
from ..memnet import MemNet
from ..rtdenoise import RTDenoise
from ..srn import SRN, resize_bilinear
from .state import load_state, pack_numpy_rng, save_state, unpack_numpy_rng


@dataclass
class SupervisedConfig:
    model: str  # srn | deblurganv2 | memnet | rtdenoise
    data: str
    output: str
    arch: dict[str, Any] = field(default_factory=dict)  # the model's config (widths, variant, ...)
    steps: int = 400
    batch: int = 8
    patch: int = 96
    lr: float = 5e-4
    # blur: linear motion lengths (pixels) and Gaussian sigmas; noise: sensor sigma (0-255)
    blur_lengths: tuple[int, int] = (3, 31)
    noise: float = 2.0
    sigma: tuple[float, float] = (25.0, 25.0)  # denoising (memnet): noise sigma range (0-255)
    seed: int = 0
    threads: int = 1
    bf16: bool = True  # autocast on CPUs with bf16 units; fp32 master weights
    fp16_weights: bool = False  # store the final checkpoint's weights in fp16 (half the file)
    save_every: int = 25


def _dirac(conv: torch.nn.Conv2d, channels: int, in_offset: int = 0) -> None:
    """Make ``conv`` copy input channels ``in_offset..+channels`` to its first outputs."""
    k = conv.kernel_size[0] // 2
    conv.weight[:channels].zero_()
    if conv.bias is not None:
        conv.bias[:channels].zero_()
    for i in range(channels):
        conv.weight[i, in_offset + i, k, k] = 1.0


def _init_srn(model: SRN) -> None:
    """Output = the blurred input at every scale: enc1_1 copies the blur channels, every
    ResBlock's second conv starts at zero, dec1_0 reads the copy back; the decoder's
    upsampling starts small so its additions to the skip are small."""
    net, c = model.net, model.channels
    with torch.no_grad():
        _dirac(net.enc1_1, c)
        for stage in (net.enc1, net.enc2, net.enc3, net.dec3, net.dec2, net.dec1):
            for block in stage.blocks:
                block.conv2.weight.zero_()
                block.conv2.bias.zero_()
        net.dec1_0.weight.zero_()
        net.dec1_0.bias.zero_()
        _dirac(net.dec1_0, c)
        net.dec1_4.weight.mul_(0.01)


def _init_deblurganv2(model: DeblurGANv2) -> None:
    final = model.final.pointwise if isinstance(model.final, SeparableConv2d) else model.final
    with torch.no_grad():  # tanh(0) + x = x
        final.weight.zero_()
        final.bias.zero_()


def _init_memnet(model: MemNet) -> None:
    with torch.no_grad():  # every reconstruction = the input; the weights sum to 1
        model.reconstructor.conv.weight.zero_()


def _init_rtdenoise(model: RTDenoise) -> None:
    last = model.last_conv
    with torch.no_grad():  # no correction: the output is the input
        last.weight.zero_()
        last.bias.zero_()


def _loss_srn(model: SRN, degraded: torch.Tensor, clean: torch.Tensor):
    outputs = model.pyramid(degraded)
    loss = sum(F.mse_loss(out.float(), resize_bilinear(clean, *out.shape[-2:])) for out in outputs)
    return loss, outputs[-1]


def _loss_deblurganv2(model: DeblurGANv2, degraded: torch.Tensor, clean: torch.Tensor):
    out = (model(degraded * 2 - 1).float() + 1) / 2
    return F.mse_loss(out, clean), out


def _loss_direct(model: RestorationModel, degraded: torch.Tensor, clean: torch.Tensor):
    out = model(degraded).float()
    return F.mse_loss(out, clean), out


def _loss_memnet(model: MemNet, degraded: torch.Tensor, clean: torch.Tensor):
    stack = model.reconstructions(degraded).float()
    out = stack @ model.weights
    # MemNet's multi-supervision: the final output and every block's reconstruction
    return F.mse_loss(out, clean) + F.mse_loss(stack, clean[..., None].expand_as(stack)), out


@dataclass(frozen=True)
class Recipe:
    cls: type[RestorationModel]
    init: Callable[[Any], None]
    loss: Callable[..., tuple[torch.Tensor, torch.Tensor]]
    task: str  # "blur" | "noise"
    eight_bit: bool = False  # noisy inputs as a camera delivers them: clipped, 8-bit


RECIPES = {
    "srn": Recipe(SRN, _init_srn, _loss_srn, "blur"),
    "deblurganv2": Recipe(DeblurGANv2, _init_deblurganv2, _loss_deblurganv2, "blur"),
    "memnet": Recipe(MemNet, _init_memnet, _loss_memnet, "noise"),
    "rtdenoise": Recipe(RTDenoise, _init_rtdenoise, _loss_direct, "noise", eight_bit=True),
}


def _patches(config: SupervisedConfig, channels: int):
    if RECIPES[config.model].task == "blur":
        from .blur_data import BlurPatches

        return BlurPatches(config.data, config.patch, tuple(config.blur_lengths), noise=config.noise,
                           channels=channels, seed=config.seed)
    from .data import NoisyPatches

    return NoisyPatches(config.data, config.patch, tuple(config.sigma), channels=channels, seed=config.seed,
                        eight_bit=RECIPES[config.model].eight_bit)


def _comparable(config: SupervisedConfig) -> dict[str, Any]:
    """The settings a resumed run must share with the saved one (more steps are fine)."""
    settings = asdict(config)
    unused = ("sigma",) if RECIPES[config.model].task == "blur" else ("blur_lengths", "noise")
    for key in ("steps", "output", "threads", "save_every", "fp16_weights", *unused):
        settings.pop(key)
    return {k: list(v) if isinstance(v, tuple) else v for k, v in settings.items()}


def train(config: SupervisedConfig, progress: Callable[[dict], None] = lambda _: None) -> Path:
    if config.model not in RECIPES:
        raise EdgeRestoreError(f"no supervised recipe for '{config.model}'; choose from {', '.join(RECIPES)}")
    recipe = RECIPES[config.model]
    torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    output = Path(config.output)
    state_path = output.with_name(output.name + ".state")
    model = recipe.cls(**config.arch)
    data = _patches(config, model.channels)
    optimizer = torch.optim.Adam(model.parameters(), config.lr)
    step, seconds, cpu_seconds, psnr_avg = 0, 0.0, 0.0, None
    if state_path.exists():
        state = load_state(state_path)
        if state.get("config") != _comparable(config):
            raise EdgeRestoreError(f"'{state_path}' was saved by a run with other settings; rerun with those or "
                                   "delete it to start over")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        step, seconds, psnr_avg = state["step"], state["seconds"], state["psnr"]
        cpu_seconds = state.get("cpu_seconds", 0.0)
        unpack_numpy_rng(data.rng, state["data_rng"])
        torch.set_rng_state(state["torch_rng"])
    else:
        recipe.init(model)
    model.train()
    while step < config.steps:
        start, cpu_start = time.perf_counter(), time.process_time()
        for group in optimizer.param_groups:  # linear warm-up (Adam's first steps are large), cosine decay
            warmup = min(1.0, (step + 1) / max(1, config.steps // 20))
            group["lr"] = config.lr * warmup * 0.5 * (1 + math.cos(math.pi * step / config.steps))
        degraded, clean = data.batch(config.batch)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=config.bf16):
            loss, out = recipe.loss(model, degraded, clean)
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        optimizer.step()
        step += 1
        seconds += time.perf_counter() - start
        cpu_seconds += time.process_time() - cpu_start  # wall time on a shared machine says little
        mse = F.mse_loss(out.detach().float(), clean).clamp_min(1e-10)
        psnr = float(10 * torch.log10(1 / mse))
        psnr_avg = psnr if psnr_avg is None else 0.9 * psnr_avg + 0.1 * psnr
        gain = psnr - float(10 * torch.log10(1 / F.mse_loss(degraded, clean).clamp_min(1e-10)))
        progress({"step": step, "total": config.steps, "psnr": psnr_avg, "gain": gain, "seconds": seconds})
        if step % config.save_every == 0 or step == config.steps:
            _save_state(state_path, model, optimizer, step, seconds, cpu_seconds, psnr_avg, data, config)
    model.eval()
    weights = {k: (v.half() if config.fp16_weights and v.is_floating_point() else v)
               for k, v in model.state_dict().items()}
    save_checkpoint(output, weights, arch=model.arch, config=model.config(),
                    meta={"train": _comparable(config) | {"steps": step}, "train_seconds": round(seconds, 1),
                          "train_cpu_seconds": round(cpu_seconds, 1),
                          "threads": config.threads, "fp16_weights": config.fp16_weights,
                          "train_psnr_db": round(psnr_avg, 2) if psnr_avg is not None else None,
                          "command": " ".join(["edgerestore", *sys.argv[1:]]) if sys.argv[0].endswith("edgerestore")
                          else None})
    return output


def _save_state(path: Path, model, optimizer, step, seconds, cpu_seconds, psnr, data, config) -> None:
    save_state(path, {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": step,
                      "seconds": seconds, "cpu_seconds": cpu_seconds, "psnr": psnr, "data_rng": pack_numpy_rng(data.rng),
                      "torch_rng": torch.get_rng_state(), "config": _comparable(config)})
