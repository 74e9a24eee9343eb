"""``edgerestore train srn|deblurganv2|memnet|rtdenoise``: supervised training runs.

Defaults are the settings of the shipped demo checkpoints (README, "Deblurring and MemNet"),
so ``edgerestore train srn --data ../shared/data/BSDS400_color -o srn.pth`` reproduces one;
``edgerestore train rtdenoise`` reproduces the shipped rtdenoise checkpoint.
"""

from __future__ import annotations

import click


def _common(command):
    options = [
        click.option("--data", required=True, type=click.Path(exists=True, file_okay=False),
                     help="Folder of clean training images (degradations are synthesized on the fly)."),
        click.option("-o", "--output", required=True, type=click.Path(dir_okay=False),
                     help="Checkpoint to write; OUTPUT.state holds the resumable training state."),
        click.option("--steps", type=click.IntRange(1), default=None, help="Optimiser steps (cosine decay)."),
        click.option("--batch", type=click.IntRange(1), default=None, help="Patches per step."),
        click.option("--patch", type=click.IntRange(16), default=None, help="Training patch side."),
        click.option("--lr", type=float, default=None, help="Adam learning rate."),
        click.option("--seed", type=int, default=0, show_default=True),
        click.option("--threads", type=click.IntRange(1), default=1, show_default=True,
                     help="torch threads (1 leaves the other cores to whatever shares the machine)."),
        click.option("--fp16-weights", is_flag=True,
                     help="Store the checkpoint's weights in fp16 (half the size; the model is the rounded one)."),
        click.option("--no-bf16", is_flag=True, help="Train in fp32 (bf16 autocast is the default on CPUs with it)."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def _blur_options(command):
    command = click.option("--blur-length", nargs=2, type=int, default=(3, 31), show_default=True,
                           help="Range of the linear motion kernels' lengths (pixels); 20% of patches get a "
                                "Gaussian blur instead.")(command)
    return click.option("--noise", type=float, default=2.0, show_default=True,
                        help="Sensor noise added after the blur: sigma up to this (0-255 scale).")(command)


def _run(model: str, arch: dict, defaults: dict, options: dict) -> None:
    from .cli import cpu_has_bf16, training_progress
    from .supervised import SupervisedConfig, train

    settings = {**defaults, **{k: v for k, v in options.items() if v is not None}}
    bf16 = not settings.pop("no_bf16") and cpu_has_bf16()
    for key in ("blur_length",):
        if key in settings:
            settings["blur_lengths"] = tuple(settings.pop(key))
    config = SupervisedConfig(model=model, arch=arch, bf16=bf16, **settings)
    describe = lambda s: f"PSNR {s['psnr']:.2f} dB ({s['gain']:+.2f} dB over the input)"  # noqa: E731
    with training_progress(config.steps, describe) as report:
        path = train(config, progress=report)
    click.echo(f"wrote {path}")


@click.command("srn")
@_common
@_blur_options
@click.option("--channels", type=click.Choice(["1", "3"]), default="3", show_default=True,
              help="3 = color model; 1 = per-channel model (each colour plane restored on its own).")
@click.option("--lstm/--no-lstm", default=True, show_default=True, help="ConvLSTM at the bottleneck.")
@click.option("--widths", default="8,16,32", show_default=True,
              help="Encoder/decoder channels per resolution (published: 32,64,128).")
def srn_command(channels, lstm, widths, **options):
    """SRN-DeblurNet on synthetic motion/defocus blur (multi-scale MSE)."""
    arch = {"channels": int(channels), "lstm": lstm, "widths": _ints(widths, 3)}
    _run("srn", arch, {"steps": 650, "batch": 6, "patch": 96, "lr": 5e-4}, options)


@click.command("deblurganv2")
@_common
@_blur_options
@click.option("--variant", type=click.Choice(["mobilenet", "mobilenet-dsc"]), default="mobilenet-dsc",
              show_default=True)
@click.option("--width", type=float, default=0.5, show_default=True, help="MobileNetV2 width multiplier (published 1).")
@click.option("--filters", type=click.IntRange(2), default=32, show_default=True, help="Head filters (published 64).")
@click.option("--fpn-filters", type=click.IntRange(2), default=64, show_default=True,
              help="FPN filters (published 128).")
def deblurganv2_command(variant, width, filters, fpn_filters, **options):
    """DeblurGAN-v2 generator on synthetic motion/defocus blur (content MSE, no GAN loss)."""
    arch = {"variant": variant, "width": width, "filters": filters, "fpn_filters": fpn_filters}
    _run("deblurganv2", arch, {"steps": 600, "batch": 8, "patch": 128, "lr": 1e-3}, options)


@click.command("memnet")
@_common
@click.option("--sigma", nargs=2, type=float, default=(25.0, 25.0), show_default=True,
              help="Gaussian noise sigma range (0-255 scale); one value per patch.")
@click.option("--features", type=click.IntRange(1), default=32, show_default=True, help="Channels (published 64).")
@click.option("--blocks", type=click.IntRange(1), default=3, show_default=True, help="Memory blocks (published 6).")
@click.option("--recursions", type=click.IntRange(1), default=3, show_default=True,
              help="Recursions per block (published 6).")
def memnet_command(sigma, features, blocks, recursions, **options):
    """MemNet on Gaussian noise (gray; final + intermediate reconstruction MSE)."""
    arch = {"channels": 1, "features": features, "blocks": blocks, "recursions": recursions}
    _run("memnet", arch, {"steps": 500, "batch": 8, "patch": 64, "lr": 1e-3, "sigma": tuple(sigma)}, options)


@click.command("rtdenoise")
@_common
@click.option("--sigma", nargs=2, type=float, default=(0.0, 50.0), show_default=True,
              help="Noise sigma range (0-255 scale): per patch uniform, a ramp or a few peaks within it.")
@click.option("--features", type=click.IntRange(1), default=24, show_default=True,
              help="Channels of the layers at 1/UNSHUFFLE (twice that at the U-Net's lower level).")
@click.option("--depth", type=click.IntRange(1), default=3, show_default=True,
              help="3x3 layers: of the plain stack (levels 1, >= 2), or at the U-Net's lower level (levels 2).")
@click.option("--unshuffle", type=click.IntRange(1), default=2, show_default=True,
              help="Pixel-unshuffle factor: the layers run at 1/UNSHUFFLE of the resolution.")
@click.option("--levels", type=click.IntRange(1, 2), default=2, show_default=True,
              help="1: a plain stack of DEPTH layers; 2: a two-level U-Net (DEPTH layers at half the resolution "
                   "again, 2x FEATURES).")
def rtdenoise_command(sigma, features, depth, unshuffle, levels, **options):
    """rtdenoise, the light color denoiser, on blind noise (8-bit noisy inputs, MSE)."""
    arch = {"channels": 3, "features": features, "depth": depth, "unshuffle": unshuffle, "levels": levels}
    # the shipped checkpoint's settings (README, "Real time on a CPU")
    _run("rtdenoise", arch, {"steps": 7000, "batch": 16, "patch": 96, "lr": 2e-3, "sigma": tuple(sigma)}, options)


def _ints(text: str, count: int) -> list[int]:
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        values = []
    if len(values) != count or min(values) < 1:
        raise click.BadParameter(f"'{text}' is not {count} comma-separated positive integers")
    return values


def register(group: click.Group) -> None:
    for command in (srn_command, deblurganv2_command, memnet_command, rtdenoise_command):
        group.add_command(command)
