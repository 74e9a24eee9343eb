"""The ``edgerestore`` GStreamer element (:mod:`.element`) and where GStreamer finds it.

GStreamer's Python plugin loader (``gstreamer1.0-python3-plugin-loader``) scans the
``python/`` folder of every directory on ``GST_PLUGIN_PATH`` and imports each ``*.py`` file
there with the Python it was built against (the system's: Debian's 3.11, JetPack's on a
Jetson). That folder here holds one file, :mod:`python/edgerestore_gst`; nothing in this
module imports GStreamer, so the CLI can print the path on a machine without it.
"""

from __future__ import annotations

from pathlib import Path

import click

PLUGIN_FILE = "edgerestore_gst.py"


def plugin_path() -> Path:
    """The folder to put on ``GST_PLUGIN_PATH`` (it holds ``python/edgerestore_gst.py``)."""
    return Path(__file__).resolve().parent


@click.command("gst-plugin-path")
def plugin_path_command():
    """Print the folder to put on GST_PLUGIN_PATH for the edgerestore element.

    \b
    GST_PLUGIN_PATH=$(edgerestore gst-plugin-path) gst-inspect-1.0 edgerestore

    GStreamer's Python loader embeds the system Python: edgerestore must be installed for
    that Python (a venv made with /usr/bin/python3 -m venv --system-site-packages).
    """
    click.echo(str(plugin_path()))
