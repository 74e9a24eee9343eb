"""The ``edgerestore`` command. Subcommands load lazily, so ``restore`` on a device
imports neither torch nor the model code, and a user error is one line, not a traceback."""

from __future__ import annotations

import importlib
import sys

import click

from .errors import EdgeRestoreError
from .optional import missing_for_command

# name -> ("module:attribute", one-line help); each subcommand lives with the package
# it drives, and `--help` lists them without importing any.
COMMANDS = {
    "models": ("edgerestore.models.cli:models_command", "List the exportable architectures."),
    "export": ("edgerestore.export.cli:export_command", "Export a model checkpoint to a bundle."),
    "restore": ("edgerestore.runtime.commands:restore_command",
                "Restore images, videos, cameras or GStreamer streams with a bundle."),
    "eval": ("edgerestore.runtime.commands:eval_command", "Score a bundle on a dataset (PSNR/SSIM)."),
    "profile": ("edgerestore.runtime.profile_command:profile_command",
                "Per-stage latency, FPS, compute and memory of a bundle (Jetson: power via tegrastats)."),
    "check": ("edgerestore.runtime.tensorrt.commands:check_command",
              "Check a bundle's stage graphs for TensorRT (no TensorRT needed)."),
    "build": ("edgerestore.runtime.tensorrt.commands:build_command", "Build TensorRT engines into a bundle."),
    "train": ("edgerestore.models.train.cli:train_command", "Train a model's checkpoint (CPU)."),
    "demo": ("edgerestore.runtime.demo:demo_command", "Path-Restore before/after demo on the CPU."),
    "gst-plugin-path": ("edgerestore.runtime.gst:plugin_path_command",
                        "Print the folder to put on GST_PLUGIN_PATH for the edgerestore GStreamer element."),
}


class LazyGroup(click.Group):
    def list_commands(self, ctx):
        return list(COMMANDS)

    def get_command(self, ctx, name):
        if name not in COMMANDS:
            return None
        module, attribute = COMMANDS[name][0].split(":")
        try:
            return getattr(importlib.import_module(module), attribute)
        except ModuleNotFoundError as exc:  # e.g. `export` without torch: name the extra, no traceback
            error = missing_for_command(exc, name)
            if error is None:
                raise
            raise error from None

    def format_commands(self, ctx, formatter):
        with formatter.section("Commands"):
            formatter.write_dl([(name, short) for name, (_, short) in COMMANDS.items()])

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except EdgeRestoreError as err:
            click.echo(f"error: {err}", err=True)
            ctx.exit(1)
        except ModuleNotFoundError as exc:  # a command that imports an extra only when it runs (export's torch)
            error = missing_for_command(exc, ctx.invoked_subcommand or "")
            if error is None:
                raise
            click.echo(f"error: {error}", err=True)
            ctx.exit(1)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            ctx.exit(130)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="edgerestore")
def cli():
    """Export, quantize and run image-restoration networks on edge devices.

    \b
    Typical flow:
      edgerestore models                               # what can be exported
      edgerestore export dncnn --weights W.pth -o B    # checkpoint -> bundle
      edgerestore restore B noisy.png -o clean.png     # run it (CPU: OpenVINO / ONNX Runtime)
      edgerestore eval B --data DIR --degrade gaussian:25 --json
    """


def main(argv: list[str] | None = None) -> int:
    try:
        cli.main(args=argv, prog_name="edgerestore", standalone_mode=True)
    except SystemExit as exit_:
        return int(exit_.code or 0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
