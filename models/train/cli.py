"""``edgerestore train pathrestore --data DIR -o CKPT``."""

from __future__ import annotations

import click


@click.command("train")
@click.argument("model", type=click.Choice(["pathrestore"]))
@click.option("--data", required=True, type=click.Path(exists=True, file_okay=False),
              help="Folder of clean training images (noise is synthesized on the fly).")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False),
              help="Checkpoint to write; OUTPUT.state holds the resumable training state.")
@click.option("--stage1-steps", type=click.IntRange(0), default=2000, show_default=True,
              help="Steps of stage I (multi-path network, random path policy).")
@click.option("--stage2-steps", type=click.IntRange(0), default=1000, show_default=True,
              help="Steps of stage II (pathfinder by REINFORCE, jointly with the network).")
@click.option("--batch", type=click.IntRange(1), default=16, show_default=True, help="63x63 patches per step.")
@click.option("--lr", type=float, default=1e-3, show_default=True, help="Network learning rate (cosine decay).")
@click.option("--penalty", type=float, default=0.5, show_default=True,
              help="Cost p of each complex block in the reward (8-bit MSE units): larger = more bypass.")
@click.option("--entropy", type=float, default=0.002, show_default=True,
              help="Entropy bonus of the pathfinder in stage II (keeps it exploring).")
@click.option("--pathfinder-lr", type=float, default=1e-3, show_default=True, help="Pathfinder learning rate.")
@click.option("--stage2-network-lr", type=float, default=0.2, show_default=True,
              help="Network learning rate in stage II as a fraction of --lr; 0 freezes the network there.")
@click.option("--sigma", nargs=2, type=float, default=(5.0, 50.0), show_default=True,
              help="Blind noise range for the synthesized training noise.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--no-bf16", is_flag=True, help="Train in fp32 (bf16 autocast is the default on CPUs that have it).")
def train_command(model, data, output, stage1_steps, stage2_steps, batch, lr, penalty, entropy, pathfinder_lr,
                  stage2_network_lr, sigma, seed,
                  no_bf16):
    """Train MODEL on an image folder; rerun the same command to resume."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    from .pathrestore import TrainConfig, train

    config = TrainConfig(data=data, output=output, stage1_steps=stage1_steps, stage2_steps=stage2_steps,
                         batch=batch, lr=lr, penalty=penalty, entropy=entropy, pathfinder_lr=pathfinder_lr,
                         stage2_network_lr=stage2_network_lr, sigma_lo=sigma[0], sigma_hi=sigma[1], seed=seed,
                         bf16=not no_bf16)
    with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                  TimeRemainingColumn(), TextColumn("{task.fields[info]}")) as bar:
        task = bar.add_task("training", total=stage1_steps + stage2_steps, info="")

        def report(s):
            bar.update(task, completed=s["step"], description=f"stage {s['stage']}",
                       info=f"PSNR {s['psnr']:.2f} dB, complex {s['complex']:.0%}")

        path = train(config, progress=report)
    click.echo(f"wrote {path}")
