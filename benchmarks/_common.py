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


def int8_share_line(bundle: Path) -> str:
    """What share of the bundle's MACs its INT8 stages run in INT8 (``calibration.json``), which
    every INT8 figure is stated with: a fast "INT8" bundle may be mostly FP32."""
    import json

    path = Path(bundle) / "calibration.json"
    if not path.is_file():
        return f"{bundle}: no calibration.json (not exported with --int8)"
    calibration = json.loads(path.read_text())
    fp32 = calibration["accuracy"]["fp32_layers"]
    return (f"INT8 bundle {Path(bundle).name}: {calibration['int8_mac_share']:.1%} of the MACs in INT8 "
            f"({len(fp32)} compute layers FP32; activations {calibration.get('activations', 'signed')})")
