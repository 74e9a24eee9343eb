"""Path-Restore training, as in the paper: stage I trains the multi-path network with a
random path policy; stage II trains the pathfinder by REINFORCE (jointly with the network
unless its stage-II learning rate is 0).

Reward at block i: ``-p * [a_i = complex]``; at the last block additionally
``d * (mse_in - mse_out)`` (the tile's restoration gain, in 8-bit MSE units), with the
difficulty ``d`` proportional to the tile's MSE (hard tiles weigh more). ``p`` trades
quality for compute.

Variance: tiles differ far more in difficulty than one block's choice changes their loss,
and a batch-mean baseline leaves that difference in every advantage; measured here, the
pathfinder then learned a constant policy (all bypass or all complex, whatever the noise).
So each tile is rolled out along ``samples`` sampled paths and each path's return is
compared with the mean return of the tile's other paths (a leave-one-out baseline: it does
not depend on the path it is compared with, so the gradient stays unbiased), which leaves
only what the actions changed. Checkpoints are resumable: the state file holds model,
optimisers, RNG and progress, rewritten atomically every ``save_every`` steps.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F


from ..checkpoint import save_checkpoint
from ..pathrestore import PathRestore
from .data import NoisyPatches
from .state import load_state, pack_numpy_rng, save_state, unpack_numpy_rng

SCALE = 255.0 ** 2  # rewards in 8-bit MSE units


@dataclass
class TrainConfig:
    data: str
    output: str
    stage1_steps: int = 2500
    stage2_steps: int = 400
    batch: int = 16
    lr: float = 1e-3
    pathfinder_lr: float = 3e-4
    # Network learning rate in stage II as a fraction of --lr; 0 freezes the network so only
    # the pathfinder learns. Joint training (the paper's) needs a network trained long enough
    # that the branches keep their value: after a short stage I, a policy drifting towards
    # bypass lets the network adapt to bypass, which makes the branches worse, which makes
    # bypass better - measured here, it collapsed to 0% complex blocks.
    stage2_network_lr: float = 0.0
    samples: int = 4  # stage II: each of the batch's tiles is rolled out along this many sampled paths
    penalty: float = 0.06
    entropy: float = 0.01
    sigma_lo: float = 5.0
    sigma_hi: float = 50.0
    seed: int = 0
    bf16: bool = True  # stage I autocast on CPUs with bf16 units: ~2x faster, fp32 master weights
    save_every: int = 50


def identity_init(model: PathRestore) -> None:
    """Start as the identity (head copies the input into 3 channels, tail reads them
    back, residual branches start near zero) so training learns only the residual."""
    with torch.no_grad():
        c = model.channels
        model.head.weight[:c].zero_()
        model.head.bias[:c].zero_()
        for i in range(c):
            model.head.weight[i, i, 1, 1] = 1.0
        model.tail.weight.zero_()
        model.tail.bias.zero_()
        for i in range(c):
            model.tail.weight[i, i, 1, 1] = 1.0
        for block in [*model.shared, *model.branch]:
            block.conv2.weight.mul_(0.1)
            block.conv2.bias.zero_()


# 5x5 discrete Laplacian-of-Gaussian: zero DC response, so its rectified output measures
# local high-frequency energy (noise and fine texture) rather than brightness.
_LOG5 = torch.tensor([[0, 0, -1, 0, 0], [0, -1, -2, -1, 0], [-1, -2, 16, -2, -1], [0, -1, -2, -1, 0],
                      [0, 0, -1, 0, 0]], dtype=torch.float32) / 16


def init_pathfinder(model: PathRestore, seed: int = 0) -> None:
    """Start the pathfinder as a local noise-energy detector, so REINFORCE has tile-dependent
    features to credit from its first step.

    conv1's four filters are +-LoG on the image channels the head carries through
    (:func:`identity_init` makes the head's first channels copy the input), so after the ReLU
    they are rectified high-pass responses; conv2 starts as small positive averages of them;
    the FC layer is He-normal. Measured on the shipped checkpoint's stage-I network: with
    He-normal convs the pathfinder's logits varied by under 0.01 across tiles of sigma 5 to 50
    and REINFORCE learned only a constant bias (all bypass or all complex, depending on the
    penalty); given labels, it told sigma > 25 from sigma < 25 on 67% of held-out tiles after
    150 steps, against 91% from this start."""
    generator = torch.Generator().manual_seed(seed)
    pf = model.pathfinder
    with torch.no_grad():
        pf.conv1.weight.zero_()
        pf.conv1.bias.zero_()
        for o in range(pf.conv1.out_channels):
            pf.conv1.weight[o, o % model.channels] = _LOG5 * (1.0 if o < model.channels else -1.0)
        pf.conv2.weight.copy_(torch.rand(pf.conv2.weight.shape, generator=generator) * 2 / pf.conv2.weight[0].numel())
        pf.conv2.bias.zero_()
        torch.nn.init.kaiming_normal_(pf.fc.weight, nonlinearity="relu", generator=generator)
        pf.fc.bias.zero_()


def rollout(model: PathRestore, noisy: torch.Tensor, policy: str):
    """One pass with sampled actions: ``random`` (stage I) or the pathfinder's (stage II)."""
    f = model.head(noisy)
    h = noisy.new_zeros(len(noisy), model.units)
    c = noisy.new_zeros(len(noisy), model.units)
    log_probs, entropies, actions = [], [], []
    for i in range(model.blocks):
        if policy == "random":
            a = torch.randint(0, 2, (len(noisy),))
        else:
            logits, h, c = model.pathfinder(f, h, c)
            dist = torch.distributions.Categorical(logits=logits.float())
            a = dist.sample()
            log_probs.append(dist.log_prob(a))
            entropies.append(dist.entropy())
        f = model.shared[i](f)
        chosen = a.nonzero().flatten()
        if len(chosen):  # run the branch only where it is taken, as the runtime does
            f = f.index_put((chosen,), model.branch[i](f[chosen]))
        actions.append(a)
    return model.tail(F.relu(f)), torch.stack(actions, 1), log_probs, entropies


def reinforce_loss(actions, log_probs, entropies, mse_in, mse_out, samples: int, penalty: float,
                   entropy_weight: float) -> torch.Tensor:
    """REINFORCE loss for ``samples`` consecutive rollouts of each tile (rows ``k*samples ..``).

    Returns-to-go per block: ``-p * (complex blocks from here on) + d * gain``; the
    advantage of a path is its return minus the mean return of the tile's other paths."""
    tiles = len(actions) // samples
    mse_in, mse_out = mse_in.detach().view(tiles, samples), mse_out.detach().view(tiles, samples)
    difficulty = mse_out.mean(1, keepdim=True) / mse_out.mean()  # one weight per tile, not per path
    gain = (mse_in - mse_out) * SCALE
    cost_to_go = penalty * actions.float().flip(1).cumsum(1).flip(1).view(tiles, samples, -1)
    returns = -cost_to_go + (difficulty * gain)[..., None]
    others = (returns.sum(1, keepdim=True) - returns) / (samples - 1)
    # Scaled per tile: the reward decides which paths a tile prefers, and each tile's
    # preference then counts alike. Scaled over the batch, the few noisy, textured tiles
    # (gains 100x those of flat ones) decided every update, and each such run here ended
    # with a constant policy.
    advantage = returns - others
    advantage = (advantage / (advantage.std(dim=(1, 2), keepdim=True) + 1e-6)).view(tiles * samples, -1)
    log_prob = torch.stack(log_probs, 1)
    return -(log_prob * advantage).mean() - entropy_weight * torch.stack(entropies, 1).mean()


def train(config: TrainConfig, progress: Callable[[dict], None] = lambda _: None) -> Path:
    torch.manual_seed(config.seed)
    output = Path(config.output)
    state_path = output.with_name(output.name + ".state")
    data = NoisyPatches(config.data, sigma=(config.sigma_lo, config.sigma_hi), seed=config.seed)
    model = PathRestore()
    trunk = [p for n, p in model.named_parameters() if not n.startswith("pathfinder.")]
    net_opt = torch.optim.Adam(trunk, config.lr)
    pf_opt = torch.optim.Adam(model.pathfinder.parameters(), config.pathfinder_lr)
    step, seconds = 0, 0.0
    total = config.stage1_steps + config.stage2_steps
    if state_path.exists():
        state = load_state(state_path)
        model.load_state_dict(state["model"])
        net_opt.load_state_dict(state["net_opt"])
        pf_opt.load_state_dict(state["pf_opt"])
        step, seconds = state["step"], state["seconds"]
        unpack_numpy_rng(data.rng, state["data_rng"])
        torch.set_rng_state(state["torch_rng"])
        for group in pf_opt.param_groups:  # the command line wins over the saved learning rate
            group["lr"] = config.pathfinder_lr
    else:
        identity_init(model)
    model.train()
    while step < total:
        start = time.perf_counter()
        stage = 1 if step < config.stage1_steps else 2
        if stage == 2 and not pf_opt.state:  # the pathfinder starts learning now
            init_pathfinder(model, config.seed)
        # cosine decay within each stage
        length, offset = (config.stage1_steps, step) if stage == 1 else (config.stage2_steps, step - config.stage1_steps)
        scale = 1.0 if stage == 1 else config.stage2_network_lr
        for group in net_opt.param_groups:
            group["lr"] = config.lr * (0.5 + 0.5 * np.cos(np.pi * offset / max(length, 1))) * scale
        if stage == 1:
            noisy, clean = data.batch(config.batch)
        else:  # the same tile along several sampled paths
            noisy, clean = (t.repeat_interleave(config.samples, 0) for t in data.batch(config.batch))
        train_network = stage == 1 or config.stage2_network_lr > 0
        for parameter in trunk:
            parameter.requires_grad_(train_network)
        # Stage II runs in float32: one block changes a tile's MSE by a few tenths of an 8-bit
        # unit, about what bf16's 3 significant digits change it by.
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=config.bf16 and stage == 1):
            out, actions, log_probs, entropies = rollout(model, noisy, "random" if stage == 1 else "pathfinder")
        mse_out = ((out.float() - clean) ** 2).mean((1, 2, 3))
        loss = mse_out.mean()
        if stage == 2:
            mse_in = ((noisy - clean) ** 2).mean((1, 2, 3))
            loss = loss + reinforce_loss(actions, log_probs, entropies, mse_in, mse_out, config.samples,
                                         config.penalty, config.entropy)
        net_opt.zero_grad()
        pf_opt.zero_grad()
        loss.backward()
        if train_network:
            net_opt.step()
        if stage == 2:
            pf_opt.step()
        step += 1
        seconds += time.perf_counter() - start
        psnr = float(10 * torch.log10(1 / mse_out.detach().clamp_min(1e-10)).mean())
        progress({"step": step, "total": total, "stage": stage, "psnr": psnr,
                  "complex": float(actions.float().mean()), "seconds": seconds})
        if step % config.save_every == 0 or step == total:
            _save_state(state_path, model, net_opt, pf_opt, step, seconds, data, config)
    save_checkpoint(output, model.state_dict(), arch=model.arch, config=model.config(),
                    meta={"train": asdict(config), "train_seconds": round(seconds, 1), "steps": step})
    return output


def _save_state(path: Path, model, net_opt, pf_opt, step, seconds, data, config) -> None:
    save_state(path, {"model": model.state_dict(), "net_opt": net_opt.state_dict(), "pf_opt": pf_opt.state_dict(),
                      "step": step, "seconds": seconds, "data_rng": pack_numpy_rng(data.rng),
                      "torch_rng": torch.get_rng_state(), "config": asdict(config)})
