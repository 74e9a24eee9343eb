"""Shared fixtures. Real data and weights live in ../shared beside the repository;
tests that need them skip with a clear message where it is absent."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from edgerestore.runtime.cli import cli

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("EDGERESTORE_SHARED", REPO.parent / "shared"))
KAIR = SHARED / "weights" / "dncnn_25_kair_state_dict.pth"
CSZN = SHARED / "weights" / "dncnn_sigma25_cszn_legacy_module.pth"
SET12 = SHARED / "data" / "Set12"


def need_shared(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"{path} not found: the shared data folder (../shared, or $EDGERESTORE_SHARED) is absent")
    return path


@pytest.fixture(scope="session")
def kair_bundle(tmp_path_factory) -> Path:
    from edgerestore.export import export_bundle

    out = tmp_path_factory.mktemp("bundles") / "dncnn_kair"
    export_bundle("dncnn", out, weights=need_shared(KAIR))
    return out


@pytest.fixture(scope="session")
def small_bundle(tmp_path_factory) -> Path:
    """A 5-layer DnCNN with random weights: fast, and its halo (5) is easy to reason about."""
    import torch

    from edgerestore.export import write_bundle
    from edgerestore.models import DnCNN

    torch.manual_seed(0)
    model = DnCNN(channels=1, depth=5, features=16).eval()
    with torch.no_grad():  # shrink the residual so outputs stay image-like
        model.model[-1].weight.mul_(0.1)
    out = tmp_path_factory.mktemp("bundles") / "dncnn_small"
    write_bundle(model, "dncnn", out)
    return out


class Cli:
    """Runs the real click app in-process; stdout and stderr kept apart."""

    def __call__(self, *args: str):
        return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture
def run_cli() -> Cli:
    return Cli()
