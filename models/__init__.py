"""Architectures, their registry and checkpoint import (PyTorch only; no backend code)."""

from pathlib import Path

from .base import RestorationModel, StageGraph, StagePlan, TensorSpec, Tiling
from .checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from .dncnn import DnCNN
from .pathrestore import PathRestore
from .registry import ModelEntry, create_model, get_entry, list_models, register
from .rlrestore import RLRestore

register(ModelEntry("dncnn", DnCNN, "DnCNN-S denoiser, gray, 17 layers (weights set depth/channels)",
                    {"channels": 1, "depth": 17}))
register(ModelEntry("dncnn-b", DnCNN, "DnCNN-B blind denoiser, gray, 20 layers", {"channels": 1, "depth": 20}))
register(ModelEntry("cdncnn-b", DnCNN, "CDnCNN-B blind color denoiser, 20 layers", {"channels": 3, "depth": 20}))
register(ModelEntry("pathrestore", PathRestore,
                    "Path-Restore color denoiser: per-tile pathfinder routes each block to bypass or complex",
                    {"channels": 3}, default_weights=Path(__file__).parent / "weights" / "pathrestore_color.pth"))
register(ModelEntry("rlrestore", RLRestore,
                    "RL-Restore toolchain (official TF1 weights folder): per 63x63 tile an agent picks one of "
                    "12 tools or stop, up to 3 steps"))

__all__ = [
    "Checkpoint", "DnCNN", "PathRestore", "RLRestore", "ModelEntry", "RestorationModel", "StageGraph", "StagePlan", "TensorSpec", "Tiling",
    "create_model", "get_entry", "list_models", "load_checkpoint", "register", "save_checkpoint",
]
