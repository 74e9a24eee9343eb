"""What the benchmark scripts share: where the shared data lives, and a bundle of the
shipped Path-Restore checkpoint when none is given."""

from __future__ import annotations

import tempfile
from pathlib import Path

SHARED = Path(__file__).resolve().parents[2] / "shared"


def bundle_or_shipped(bundle: Path | None, model: str = "pathrestore") -> Path:
    """``bundle`` itself, or a fresh export of ``model``'s shipped checkpoint."""
    if bundle is not None:
        return bundle
    from edgerestore.export import export_bundle

    out = Path(tempfile.mkdtemp()) / model
    export_bundle(model, out)
    return out
