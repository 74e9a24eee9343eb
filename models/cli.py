"""``edgerestore models``: the registry, with what each architecture declares."""

from __future__ import annotations

import json

import click

from .registry import list_models


def describe_all() -> list[dict]:
    rows = []
    for entry in list_models():
        model = entry.cls(**entry.config)
        tiling = model.default_tiling()
        rows.append({
            "name": entry.name, "arch": model.arch, "description": entry.description,
            "channels": model.channels, "range": list(model.value_range), "scale": model.scale,
            "size_multiple": model.size_multiple, "receptive_field": model.receptive_field,
            "tile": tiling.tile, "overlap": tiling.overlap, "whole": tiling.whole,
            "stages": len(model.stage_plan().stages),
            "shipped_weights": entry.default_weights is not None,
            "parameters": sum(p.numel() for p in model.parameters()),
            **({"parameter_counts": model.parameter_counts()} if hasattr(model, "parameter_counts") else {}),
        })
    return rows


@click.command("models")
@click.option("--json", "as_json", is_flag=True, help="Print the registry as JSON.")
def models_command(as_json: bool) -> None:
    """List the architectures that can be exported, with their declared I/O and tiling."""
    rows = describe_all()
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table("name", "ch", "range", "multiple", "RF", "tile/overlap", "stages", "params", "weights", "description")
    for column in table.columns[:-1]:
        column.no_wrap = True
    for r in rows:
        table.add_row(r["name"], str(r["channels"]), f"{r['range'][0]:g}..{r['range'][1]:g}", str(r["size_multiple"]),
                      str(r["receptive_field"]), "whole" if r["whole"] else f"{r['tile']}/{r['overlap']}",
                      str(r["stages"]), _params(r),
                      "shipped" if r["shipped_weights"] else "--weights", r["description"])
    Console(width=None if Console().is_terminal else 160).print(table)


def _params(row: dict) -> str:
    parts = row.get("parameter_counts")
    if parts:
        return " + ".join(f"{v:,} {k}" for k, v in parts.items())
    return f"{row['parameters']:,}"
