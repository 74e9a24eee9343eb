"""``edgerestore train MODEL ...``: one subcommand per trainable model."""

from __future__ import annotations

import sys
from typing import Callable

import click


@click.group("train")
def train_command() -> None:
    """Train a model's checkpoint on the CPU; rerun the same command to resume."""


def cpu_has_bf16() -> bool:
    """Whether this CPU has bf16 units (AVX-512 BF16 / AMX). Elsewhere PyTorch emulates bf16
    autocast: about 6x slower than fp32 on an AVX2 CPU, so it is not the default there."""
    import torch

    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def training_progress(total: int, describe: Callable[[dict], str]):
    """A rich progress bar on a terminal; elsewhere (nohup, CI logs) one line every 50 steps,
    so a long run under a pipe still shows where it is. Use as a context manager that
    yields the ``progress(step_info)`` callback the trainers take."""
    from contextlib import contextmanager

    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    @contextmanager
    def context():
        if not sys.stderr.isatty():
            def report(s: dict) -> None:
                if s["step"] % 50 == 0 or s["step"] == total:
                    click.echo(f"step {s['step']}/{total} ({s['seconds']:.0f} s): {describe(s)}", err=True)

            yield report
            return
        with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                      TimeRemainingColumn(), TextColumn("{task.fields[info]}")) as bar:
            task = bar.add_task("training", total=total, info="")
            yield lambda s: bar.update(task, completed=s["step"], info=describe(s))

    return context()


@train_command.command("pathrestore")
@click.option("--data", required=True, type=click.Path(exists=True, file_okay=False),
              help="Folder of clean training images (noise is synthesized on the fly).")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False),
              help="Checkpoint to write; OUTPUT.state holds the resumable training state.")
@click.option("--stage1-steps", type=click.IntRange(0), default=2500, show_default=True,
              help="Steps of stage I (multi-path network, random path policy).")
@click.option("--stage2-steps", type=click.IntRange(0), default=400, show_default=True,
              help="Steps of stage II (pathfinder by REINFORCE, jointly with the network).")
@click.option("--batch", type=click.IntRange(1), default=16, show_default=True, help="63x63 patches per step.")
@click.option("--samples", type=click.IntRange(2), default=4, show_default=True,
              help="Stage II: sampled paths per patch (each path is compared with the patch's other paths).")
@click.option("--lr", type=float, default=1e-3, show_default=True, help="Network learning rate (cosine decay).")
@click.option("--penalty", type=float, default=0.06, show_default=True,
              help="Cost p of each complex block in the reward (8-bit MSE units): larger = more bypass.")
@click.option("--entropy", type=float, default=0.01, show_default=True,
              help="Entropy bonus of the pathfinder in stage II (keeps it exploring).")
@click.option("--pathfinder-lr", type=float, default=3e-4, show_default=True, help="Pathfinder learning rate.")
@click.option("--stage2-network-lr", type=float, default=0.0, show_default=True,
              help="Network learning rate in stage II as a fraction of --lr; 0 freezes the network there.")
@click.option("--sigma", nargs=2, type=float, default=(5.0, 50.0), show_default=True,
              help="Blind noise range for the synthesized training noise.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--no-bf16", is_flag=True, help="Train in fp32 (bf16 autocast is the default on CPUs that have it).")
def pathrestore_command(data, output, stage1_steps, stage2_steps, batch, samples, lr, penalty, entropy, pathfinder_lr,
                        stage2_network_lr, sigma, seed, no_bf16):
    """Path-Restore: stage I (random paths), then stage II (pathfinder by REINFORCE)."""
    from .pathrestore import TrainConfig, train

    config = TrainConfig(data=data, output=output, stage1_steps=stage1_steps, stage2_steps=stage2_steps,
                         batch=batch, samples=samples, lr=lr, penalty=penalty, entropy=entropy,
                         pathfinder_lr=pathfinder_lr, stage2_network_lr=stage2_network_lr, sigma_lo=sigma[0],
                         sigma_hi=sigma[1], seed=seed, bf16=not no_bf16 and cpu_has_bf16())
    describe = lambda s: f"stage {s['stage']}, PSNR {s['psnr']:.2f} dB, complex {s['complex']:.0%}"
    with training_progress(stage1_steps + stage2_steps, describe) as report:
        path = train(config, progress=report)
    click.echo(f"wrote {path}")


def _numbers(text: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise click.BadParameter(f"'{text}' is not a comma-separated list of numbers") from None


@train_command.command("allinone")
@click.option("--data", required=True, type=click.Path(exists=True, file_okay=False),
              help="Folder of clean training images (rain, blur and noise are synthesized on the fly).")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False),
              help="Checkpoint to write; OUTPUT.state holds the resumable training state.")
@click.option("--degradations", default="rain,blur,noise", show_default=True,
              help="Comma-separated degradations, one classifier class and one branch each.")
@click.option("--features", type=click.IntRange(1), default=40, show_default=True, help="Channels of the UM.")
@click.option("--depth", type=click.IntRange(2), default=10, show_default=True, help="Convolutions of the UM.")
@click.option("--classifier-features", type=click.IntRange(2), default=32, show_default=True)
@click.option("--unified-steps", type=click.IntRange(0), default=1200, show_default=True,
              help="Steps of the unified model on all degradations.")
@click.option("--finetune-steps", type=click.IntRange(0), default=200, show_default=True,
              help="Steps of fine-tuning per degradation.")
@click.option("--faig-steps", type=click.IntRange(1), default=8, show_default=True,
              help="Points on the path UM -> fine-tuned at which FAIG takes the gradient.")
@click.option("--faig-batches", type=click.IntRange(1), default=2, show_default=True,
              help="Batches of patches the FAIG loss is measured on.")
@click.option("--filter-steps", type=click.IntRange(0), default=300, show_default=True,
              help="Steps of training each degradation's masked filters, per --q.")
@click.option("--filter-lr", type=float, default=1e-3, show_default=True, help="Learning rate of the masked filters.")
@click.option("--classifier-steps", type=click.IntRange(0), default=1000, show_default=True,
              help="Steps of the degradation classifier.")
@click.option("--batch", type=click.IntRange(1), default=16, show_default=True, help="Patches per step.")
@click.option("--patch", type=click.IntRange(8), default=48, show_default=True, help="Training patch side.")
@click.option("--lr", type=float, default=1e-3, show_default=True, help="UM learning rate (cosine decay).")
@click.option("--finetune-lr", type=float, default=5e-4, show_default=True, help="Fine-tuning learning rate.")
@click.option("--classifier-lr", type=float, default=2e-3, show_default=True, help="Classifier learning rate.")
@click.option("--q", "q_list", default="1,3,5", show_default=True,
              help="Percentages q of filters per degradation to train and store (the mask M_d at q: the top q% by "
                   "FAIG).")
@click.option("--deploy-q", type=float, default=3.0, show_default=True,
              help="Percentage the checkpoint deploys (at most the largest --q).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--no-bf16", is_flag=True, help="Train in fp32 (bf16 autocast is the default on CPUs that have it).")
def allinone_command(data, output, degradations, features, depth, classifier_features, unified_steps, finetune_steps,
                     faig_steps, faig_batches, filter_steps, filter_lr, classifier_steps, batch, patch, lr, finetune_lr,
                     classifier_lr, q_list, deploy_q, seed, no_bf16):
    """All-in-one (ADMS): unified model, per-degradation fine-tuning, FAIG filter masks, the masked
    filters' own weights, classifier."""
    from .allinone import TrainConfig, train

    config = TrainConfig(data=data, output=output, degradations=[d.strip() for d in degradations.split(",")],
                         features=features, depth=depth, classifier_features=classifier_features,
                         unified_steps=unified_steps, finetune_steps=finetune_steps, faig_steps=faig_steps,
                         faig_batches=faig_batches, filter_steps=filter_steps, filter_lr=filter_lr,
                         classifier_steps=classifier_steps, batch=batch, patch=patch,
                         lr=lr, finetune_lr=finetune_lr, classifier_lr=classifier_lr, q=_numbers(q_list),
                         deploy_q=deploy_q, seed=seed, bf16=not no_bf16 and cpu_has_bf16())

    def describe(s: dict) -> str:
        if "psnr" in s:
            return f"{s['stage']}, PSNR {s['psnr']:.2f} dB"
        if "accuracy" in s:
            return f"{s['stage']}, accuracy {s['accuracy']:.0%}"
        return f"{s['stage']}, loss {s['loss']:.5f}"

    with training_progress(_total(config), describe) as report:
        path = train(config, progress=report)
    click.echo(f"wrote {path}")


def _total(config) -> int:
    from .allinone import stages

    return sum(s.steps for s in stages(config))


from .supervised_cli import register as _register_supervised  # noqa: E402 - srn, deblurganv2, memnet

_register_supervised(train_command)
