"""Architectures, their registry and checkpoint import (PyTorch only; no backend code)."""

from pathlib import Path

from .allinone import AllInOne
from .base import RestorationModel, StageGraph, StagePlan, TensorSpec, Tiling
from .checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from .deblurganv2 import DeblurGANv2
from .dncnn import DnCNN
from .memnet import MemNet
from .pathrestore import PathRestore
from .registry import ModelEntry, create_model, get_entry, list_models, register
from .rlrestore import RLRestore
from .rtdenoise import RTDenoise
from .srn import SRN

WEIGHTS = Path(__file__).parent / "weights"

register(ModelEntry("dncnn", DnCNN, "DnCNN-S denoiser, gray, 17 layers (weights set depth/channels)",
                    {"channels": 1, "depth": 17}))
register(ModelEntry("dncnn-b", DnCNN, "DnCNN-B blind denoiser, gray, 20 layers", {"channels": 1, "depth": 20}))
register(ModelEntry("cdncnn-b", DnCNN, "CDnCNN-B blind color denoiser, 20 layers", {"channels": 3, "depth": 20}))
register(ModelEntry("pathrestore", PathRestore,
                    "Path-Restore color denoiser: per-tile pathfinder routes each block to bypass or complex",
                    {"channels": 3}, default_weights=WEIGHTS / "pathrestore_color.pth"))
register(ModelEntry("rlrestore", RLRestore,
                    "RL-Restore toolchain (official TF1 weights folder): per 63x63 tile an agent picks one of "
                    "12 tools or stop, up to 3 steps"))
# Without --weights these export the shipped demo checkpoints (reduced widths, trained briefly on
# synthetic degradations; their configs are stored in them). The configs here are the published
# architectures, which official checkpoints select (and refine) themselves.
register(ModelEntry("srn", SRN, "SRN-DeblurNet deblurrer: 3-scale recurrent encoder-decoder, color or per-channel "
                    "with ConvLSTM (official TF1 checkpoints import); whole images, host-side scale loop",
                    {"channels": 3, "lstm": False}, default_weights=WEIGHTS / "srn_demo.pth"))
register(ModelEntry("deblurganv2", DeblurGANv2, "DeblurGAN-v2 generator: FPN on MobileNetV2 (variant mobilenet or "
                    "mobilenet-dsc), input [-1, 1], per-image norm statistics; whole images",
                    {"variant": "mobilenet"}, default_weights=WEIGHTS / "deblurganv2_demo.pth"))
register(ModelEntry("memnet", MemNet, "MemNet denoiser, gray: 6 memory blocks x 6 recursions, gated long-term "
                    "memory, multi-supervised reconstruction", {"channels": 1, "blocks": 6, "recursions": 6},
                    default_weights=WEIGHTS / "memnet_demo.pth"))
register(ModelEntry("rtdenoise", RTDenoise,
                    "Light blind color denoiser for real time on a CPU: pixel-unshuffle, a few narrow 3x3 "
                    "layers, residual output (sigma 0-50)", {"channels": 3},
                    default_weights=WEIGHTS / "rtdenoise.pth"))
register(ModelEntry("allinone", AllInOne,
                    "All-in-one (ADMS) rain/blur/noise: a classifier routes each tile to its degradation's "
                    "folded network (UM + 3% discriminative filters)",
                    default_weights=Path(__file__).parent / "weights" / "allinone.pth"))

__all__ = [
    "AllInOne", "Checkpoint", "DeblurGANv2", "DnCNN", "MemNet", "PathRestore", "RLRestore", "RTDenoise", "SRN", "ModelEntry", "RestorationModel", "StageGraph", "StagePlan", "TensorSpec", "Tiling",
    "create_model", "get_entry", "list_models", "load_checkpoint", "register", "save_checkpoint",
]
