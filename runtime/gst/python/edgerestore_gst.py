"""GStreamer's entry point to the ``edgerestore`` element (see ``edgerestore/runtime/gst``).

GStreamer's Python plugin loader imports this file with the Python it embeds (the system's),
whose ``sys.path`` knows nothing of the virtual environment edgerestore was installed into.
The file sits inside the installed package (``<site-packages>/edgerestore/runtime/gst/python``),
so it adds its own site-packages folder (with ``site.addsitedir``: ``.pth`` files too) when
that folder was made for the same Python version; a venv of another Python would load
extension modules (numpy, ONNX Runtime) built for another interpreter, so that is refused
with one line naming the fix.
"""

import site
import sys
from pathlib import Path

_HERE = Path(__file__).resolve()
_PACKAGE = _HERE.parents[3]  # <site-packages>/edgerestore
_SITE = _PACKAGE.parent


def _add_own_site() -> None:
    if _PACKAGE.name != "edgerestore" or str(_SITE) in sys.path:
        return  # a source checkout, or already importable
    wanted = f"python{sys.version_info.major}.{sys.version_info.minor}"
    if _SITE.name == "site-packages" and _SITE.parent.name.startswith("python") and _SITE.parent.name != wanted:
        raise ImportError(f"edgerestore's GStreamer element: GStreamer embeds Python {sys.version_info.major}."
                          f"{sys.version_info.minor}, but edgerestore is installed for {_SITE.parent.name} in "
                          f"{_SITE}; install it into a venv made with /usr/bin/python3 -m venv "
                          "--system-site-packages")
    site.addsitedir(str(_SITE))


_add_own_site()

from edgerestore.runtime.gst.element import EdgeRestoreElement, FACTORY_NAME  # noqa: E402
from gi.repository import GObject, Gst  # noqa: E402

GObject.type_register(EdgeRestoreElement)
__gstelementfactory__ = (FACTORY_NAME, Gst.Rank.NONE, EdgeRestoreElement)
