"""Load any supported checkpoint file into a flat ``state_dict`` -- never executing pickled code.

Supported inputs
----------------
* plain ``state_dict`` files (``torch.save(model.state_dict())``), possibly wrapped in a dict
  under ``params_ema`` / ``params`` / ``state_dict`` / ``model`` / ``net`` / ``generator``
  (KAIR, BasicSR, ...) and possibly carrying ``module.`` prefixes from ``DataParallel``;
* pickled whole ``nn.Module`` objects (``torch.save(model)``), including PyTorch 0.4-era
  legacy (non-zip) files such as the original cszn DnCNN release;
* the project's own format, written by :func:`save_checkpoint`.

Safety
------
Every file is first read with ``torch.load(..., weights_only=True)``.  Only when torch refuses
it (a pickled module) is it read again through a *restricted* pickle module: ``find_class`` hands
out an explicit allowlist of data-only globals (tensor rebuild helpers, ``OrderedDict``, dtypes
...), turns every other *class* name into an inert stub class (calling it or restoring its state
only records the arguments), and refuses everything else -- functions, and anything from modules
such as ``os``, ``subprocess``, ``builtins`` -- with a one-line :class:`EdgeRestoreError`.  The
stub tree is then walked for ``_parameters`` / ``_buffers`` / ``_modules``.  TorchScript archives
are refused up front (``torch.load`` would hand them to ``torch.jit.load``).

Tensors come back detached, on the CPU, floating point ones as ``float32``; BatchNorm's
``num_batches_tracked`` counters are dropped (``load_state_dict`` restores them).
"""

from __future__ import annotations

import collections
import hashlib
import io
import os
import pickle
import stat
import tempfile
import types
import warnings
import zipfile
from _compat_pickle import IMPORT_MAPPING, NAME_MAPPING
from dataclasses import dataclass, field
from typing import Any, Mapping

import torch

from edgerestore.runtime.atomic import default_mode
from edgerestore.runtime.errors import EdgeRestoreError

__all__ = ["Checkpoint", "load_checkpoint", "save_checkpoint", "strip_prefix", "FORMAT_VERSION"]

FORMAT_VERSION = 1
_MARKER = "edgerestore_checkpoint"

# Keys under which training frameworks nest the actual state_dict, most preferred first
# (EMA weights are what one deploys when both are present).
WRAPPER_KEYS = ("params_ema", "params", "state_dict", "model", "net", "generator")
_LOAD_STRIP_PREFIXES = ("module.", "_orig_mod.")  # DataParallel / DDP, torch.compile
_SKIP_SUFFIXES = ("num_batches_tracked",)


@dataclass
class Checkpoint:
    state_dict: dict[str, torch.Tensor]  # flat, float tensors, on CPU
    kind: str  # "state_dict" | "legacy-module" | "edgerestore"
    arch: str | None = None  # set for the project's own checkpoints
    config: dict | None = None  # ditto (architecture config)
    meta: dict = field(default_factory=dict)  # ditto (training info etc.); bn_eps for legacy modules
    sha256: str = ""  # of the file bytes


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------


def _one_line(text: Any, limit: int = 200) -> str:
    s = " ".join(str(text).split())
    return s if len(s) <= limit else s[: limit - 3] + "..."


def _err(path: Any, problem: str) -> EdgeRestoreError:
    return EdgeRestoreError(_one_line(f"{os.fspath(path)}: {problem}", 400))


def strip_prefix(state_dict: Mapping[str, Any], prefixes=("module.",)) -> dict:
    """Return a copy of ``state_dict`` with any of ``prefixes`` removed from the start of keys.

    Prefixes are removed repeatedly (``module.module.x`` -> ``x``).  Raises ``EdgeRestoreError``
    if stripping would make two keys collide.
    """
    if isinstance(prefixes, str):
        prefixes = (prefixes,)
    out: dict = {}
    origin: dict = {}
    for key, value in state_dict.items():
        new = key
        if isinstance(new, str):
            changed = True
            while changed:
                changed = False
                for p in prefixes:
                    if p and new.startswith(p) and len(new) > len(p):
                        new = new[len(p):]
                        changed = True
        if new in out:
            raise EdgeRestoreError(
                f"stripping prefixes {tuple(prefixes)} makes keys {origin[new]!r} and {key!r} collide"
            )
        out[new] = value
        origin[new] = key
    return out


def _normalize_tensor(t: torch.Tensor) -> torch.Tensor:
    t = t.detach()
    if type(t) is not torch.Tensor:  # Parameter or other subclass -> plain tensor
        t = t.as_subclass(torch.Tensor) if isinstance(t, torch.Tensor) else t
    if t.device.type != "cpu":
        t = t.cpu()
    if t.is_floating_point() and t.dtype != torch.float32:
        t = t.float()
    return t


def _finish_state_dict(path, raw: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    sd: dict[str, torch.Tensor] = {}
    for k, v in raw.items():
        if not isinstance(k, str) or not isinstance(v, torch.Tensor):
            continue
        if k.rsplit(".", 1)[-1] in _SKIP_SUFFIXES:
            continue
        sd[k] = _normalize_tensor(v)
    try:
        sd = strip_prefix(sd, _LOAD_STRIP_PREFIXES)
    except EdgeRestoreError as e:
        raise _err(path, str(e)) from None
    if not any(isinstance(v, torch.Tensor) for v in sd.values()):
        raise _err(path, "no weights found (the file holds no tensors)")
    return sd


# --------------------------------------------------------------------------------------------
# restricted unpickler
# --------------------------------------------------------------------------------------------


class _Refused(Exception):
    """Raised from inside the unpickler; turned into an EdgeRestoreError naming the file."""

    def __init__(self, global_name: str, detail: str = ""):
        super().__init__(global_name)
        self.global_name = global_name
        self.detail = detail


# Modules from which nothing -- not even an inert stub -- is handed out.
_DANGEROUS_ROOTS = frozenset(
    """
    os posix nt posixpath ntpath subprocess _posixsubprocess sys builtins __builtin__ shutil
    importlib pickle _pickle pickletools copyreg copy_reg socket _socket runpy pty ctypes _ctypes
    code codeop types functools _functools operator _operator io _io codecs _codecs webbrowser
    marshal shelve tempfile pathlib glob signal threading _thread multiprocessing concurrent
    asyncio inspect gc weakref _weakref ast dis compileall zipimport pkgutil site sysconfig
    platform getpass pdb bdb trace tracemalloc faulthandler atexit urllib http ftplib smtplib
    telnetlib xmlrpc ssl select selectors mmap fcntl resource dill cloudpickle joblib
    setuptools pip distutils zipfile tarfile
    """.split()
)
# Dangerous submodules of otherwise trusted packages.
_DANGEROUS_PREFIXES = ("torch._C", "torch.ops", "torch.jit", "torch.hub", "torch.utils.cpp_extension",
                       "torch._dynamo", "torch._inductor", "torch.package", "torch.distributed",
                       "torch.serialization", "torch.cuda", "numpy.testing", "numpy.distutils",
                       "numpy.f2py", "numpy.ctypeslib", "numpy.lib.format")

_STUB_MODULE = "edgerestore._inert_pickle_stubs"  # not importable: inspect finds no source


class _InertStub:
    """Base of the per-name stub classes: records what the pickle asks for, does nothing else."""

    _er_global = "?"
    dump_patches = False  # consulted by torch's legacy source check; never write patch files

    def __new__(cls, *args, **kwargs):
        return object.__new__(cls)

    def __init__(self, *args, **kwargs):
        self._er_args = args
        self._er_kwargs = kwargs

    def __setstate__(self, state):
        self.__dict__["_er_state"] = state

    def __repr__(self) -> str:
        return f"<inert stub of {self._er_global}>"


_STUBS: dict[str, type] = {}


def _stub_class(global_name: str) -> type:
    cls = _STUBS.get(global_name)
    if cls is None:
        short = global_name.rsplit(".", 1)[-1]
        cls = type(short, (_InertStub,), {
            "_er_global": global_name,
            "__module__": _STUB_MODULE,
            "__qualname__": f"_InertStub<{global_name}>",
        })
        _STUBS[global_name] = cls
    return cls


def _is_stub_class(obj: Any) -> bool:
    return isinstance(obj, type) and issubclass(obj, _InertStub)


def _safe_reconstructor(cls, base, state):
    """``copyreg._reconstructor`` (protocol 0/1 object creation), limited to our stubs."""
    if not _is_stub_class(cls):
        raise _Refused("copyreg._reconstructor", f"with {getattr(cls, '__qualname__', type(cls).__name__)}")
    obj = object.__new__(cls)
    obj._er_args = () if state is None else (state,)
    obj._er_kwargs = {}
    return obj


def _safe_newobj(cls, *args):
    if not _is_stub_class(cls):
        raise _Refused("copyreg.__newobj__", f"with {getattr(cls, '__qualname__', type(cls).__name__)}")
    return cls.__new__(cls, *args)


def _safe_codecs_encode(obj, encoding="utf-8", errors="strict"):
    """``_codecs.encode`` as used by protocol-2 pickles for ``bytes`` -- latin1 only."""
    if not isinstance(obj, str) or str(encoding).lower().replace("_", "-") not in ("latin1", "latin-1"):
        raise _Refused("_codecs.encode", f"with encoding {encoding!r}")
    return obj.encode("latin1")


def _inert_backend(*args, **kwargs):
    """Stand-in for ``torch.nn.backends.thnn._get_thnn_function_backend`` (PyTorch <= 1.0)."""
    return None


_RESTRICTED_REBUILDS = ("torch._utils._rebuild_tensor", "torch._utils._rebuild_tensor_v2",
                        "torch._utils._rebuild_parameter", "torch._utils._rebuild_parameter_with_state")


def _safe_rebuild_from_type_v2(func, new_type, args, state):
    ok_funcs = {_resolve_real(n) for n in _RESTRICTED_REBUILDS if _resolve_real(n) is not None}
    if func not in ok_funcs or new_type not in (torch.Tensor, torch.nn.Parameter):
        raise _Refused("torch._tensor._rebuild_from_type_v2", "with an unexpected type or function")
    return torch._tensor._rebuild_from_type_v2(func, new_type, args, state)


def _resolve_real(dotted: str):
    mod_name, _, name = dotted.rpartition(".")
    try:
        mod = __import__(mod_name, fromlist=[name])
        return getattr(mod, name)
    except Exception:  # noqa: BLE001 - optional globals (older/newer torch, numpy 1 vs 2)
        return None


# Explicit allowlist: global name -> object to hand out (None: resolve the real object lazily).
_ALLOWED: dict[str, Any] = {
    "collections.OrderedDict": collections.OrderedDict,
    "torch.Size": torch.Size,
    "torch.device": torch.device,
    "torch._tensor.Tensor": torch.Tensor,
    "torch.Tensor": torch.Tensor,
    "torch.nn.parameter.Parameter": torch.nn.Parameter,
    "torch.nn.parameter.Buffer": None,
    "torch.serialization._get_layout": None,
    "torch._utils._rebuild_tensor": None,
    "torch._utils._rebuild_tensor_v2": None,
    "torch._utils._rebuild_tensor_v3": None,
    "torch._utils._rebuild_parameter": None,
    "torch._utils._rebuild_parameter_with_state": None,
    "torch._utils._rebuild_device_tensor_from_numpy": None,
    "torch._utils._rebuild_meta_tensor_no_storage": None,
    "torch._tensor._rebuild_from_type_v2": _safe_rebuild_from_type_v2,
    "torch.nn.backends.thnn._get_thnn_function_backend": _inert_backend,
    "copyreg._reconstructor": _safe_reconstructor,
    "copyreg.__newobj__": _safe_newobj,
    "builtins.object": object,
    "builtins.set": set,
    "builtins.frozenset": frozenset,
    "builtins.slice": slice,
    "builtins.complex": complex,
    "builtins.bytearray": bytearray,
    "_codecs.encode": _safe_codecs_encode,
    # numpy scalars / arrays that sometimes ride along in training checkpoints (data only)
    "numpy.core.multiarray.scalar": None,
    "numpy._core.multiarray.scalar": None,
    "numpy.core.multiarray._reconstruct": None,
    "numpy._core.multiarray._reconstruct": None,
    "numpy.ndarray": None,
    "numpy.dtype": None,
}


def _restricted_global(module: str, name: str) -> Any:
    if (module, name) in NAME_MAPPING:  # Python 2 names (legacy pickles)
        module, name = NAME_MAPPING[(module, name)]
    elif module in IMPORT_MAPPING:
        module = IMPORT_MAPPING[module]
    dotted = f"{module}.{name}"

    if dotted in _ALLOWED:
        obj = _ALLOWED[dotted]
        if obj is None:
            obj = _resolve_real(dotted)
            if obj is None:
                raise _Refused(dotted, "which this torch/numpy does not provide")
        return obj

    # torch dtypes / memory formats / layouts are plain values ("torch float32")
    # (storage types like "torch FloatStorage" are intercepted by torch's own find_class)
    if module == "torch" and "." not in name:
        val = torch.__dict__.get(name)  # no getattr: torch's module __getattr__ imports lazily
        if isinstance(val, (torch.dtype, torch.memory_format, torch.layout)):
            return val

    root = module.split(".", 1)[0]
    if root in _DANGEROUS_ROOTS or any(module == p or module.startswith(p + ".") for p in _DANGEROUS_PREFIXES):
        raise _Refused(dotted)
    if name.startswith("__") or not all(part.isidentifier() for part in (module.split(".") + name.split("."))):
        raise _Refused(dotted)
    last = name.rsplit(".", 1)[-1]
    if last[:1].isupper():  # class-like: module structure -> inert stub
        return _stub_class(dotted)
    raise _Refused(dotted)


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module, name):  # noqa: D401 - pickle API
        if not isinstance(module, str) or not isinstance(name, str):
            raise _Refused(repr((module, name)))
        return _restricted_global(module, name)


def _restricted_load(file, **kwargs):
    return _RestrictedUnpickler(file, **kwargs).load()


def _restricted_loads(data, **kwargs):
    return _RestrictedUnpickler(io.BytesIO(data), **kwargs).load()


# A module-like object for torch.load(pickle_module=...): torch subclasses ``Unpickler`` and
# delegates ``find_class`` to it, and uses ``load`` for the legacy format's header pickles.
_restricted = types.ModuleType("edgerestore_restricted_pickle")
_restricted.Unpickler = _RestrictedUnpickler
_restricted.load = _restricted_load
_restricted.loads = _restricted_loads
_restricted.UnpicklingError = pickle.UnpicklingError


def _find_refusal(exc: BaseException | None) -> _Refused | None:
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, _Refused):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


# --------------------------------------------------------------------------------------------
# walking pickled module trees
# --------------------------------------------------------------------------------------------


def _stub_state(obj: _InertStub) -> dict:
    state = obj.__dict__.get("_er_state")
    if isinstance(state, tuple) and len(state) == 2:  # (dict state, slot state)
        merged: dict = {}
        for part in state:
            if isinstance(part, dict):
                merged.update(part)
        state = merged
    return state if isinstance(state, dict) else {}


def _is_module_stub(obj: Any) -> bool:
    if not isinstance(obj, _InertStub):
        return False
    st = _stub_state(obj)
    return any(k in st for k in ("_parameters", "_buffers", "_modules"))


def _walk_stub(obj: _InertStub, prefix: str, out: dict, bn_eps: dict, seen: set) -> None:
    if id(obj) in seen:
        return
    seen.add(id(obj))
    state = _stub_state(obj)
    non_persistent = state.get("_non_persistent_buffers_set") or ()
    for group in ("_parameters", "_buffers"):
        entries = state.get(group)
        if not isinstance(entries, Mapping):
            continue
        for name, value in entries.items():
            if value is None or not isinstance(name, str) or not isinstance(value, torch.Tensor):
                continue
            if group == "_buffers" and isinstance(non_persistent, (set, frozenset, list, tuple)) \
                    and name in non_persistent:
                continue
            if name in _SKIP_SUFFIXES:
                continue
            out[prefix + name] = value
    cls_name = type(obj)._er_global
    buffers = state.get("_buffers") if isinstance(state.get("_buffers"), Mapping) else {}
    if "eps" in state and ("BatchNorm" in cls_name or "running_var" in buffers):
        try:
            bn_eps[prefix[:-1]] = float(state["eps"])
        except (TypeError, ValueError):
            pass
    children = state.get("_modules")
    if isinstance(children, Mapping):
        for name, child in children.items():
            if child is None or not isinstance(name, str):
                continue
            if isinstance(child, _InertStub):
                _walk_stub(child, f"{prefix}{name}.", out, bn_eps, seen)


# --------------------------------------------------------------------------------------------
# interpreting what was unpickled
# --------------------------------------------------------------------------------------------


def _is_tensor_dict(obj: Any) -> bool:
    return isinstance(obj, Mapping) and any(isinstance(v, torch.Tensor) for v in obj.values())


def _unwrap(obj: Any, depth: int = 0) -> tuple[Any, list[str]]:
    """Descend through wrapper dicts to a dict of tensors or a module stub.

    A known wrapper key holding a dict/module wins over stray top-level tensors (a real
    state_dict never maps a bare key like ``model`` to a dict).
    """
    if depth > 4 or not isinstance(obj, Mapping):
        return obj, []
    for key in WRAPPER_KEYS:
        inner = obj.get(key)
        if _is_tensor_dict(inner) or _is_module_stub(inner) or isinstance(inner, torch.nn.Module):
            return inner, [key]
        if isinstance(inner, Mapping):
            deeper, path = _unwrap(inner, depth + 1)
            if path:
                return deeper, [key] + path
    if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return obj, []  # a plain state_dict
    # unknown wrapper name (net_g, model_state_dict, ...): accept exactly one candidate
    cands = [k for k, v in obj.items() if isinstance(k, str) and (_is_tensor_dict(v) or _is_module_stub(v))]
    if len(cands) == 1:
        return obj[cands[0]], [cands[0]]
    return obj, []  # whatever tensors sit at the top level


def _interpret(path, obj: Any, sha: str) -> Checkpoint:
    if isinstance(obj, Mapping) and _MARKER in obj:
        return _interpret_own(path, obj, sha)

    inner, wrapper = _unwrap(obj)
    meta: dict = {}
    if wrapper:
        meta["wrapper_key"] = ".".join(wrapper)

    if isinstance(inner, torch.nn.Module):  # only if someone allowlisted module classes in torch
        return Checkpoint(_finish_state_dict(path, inner.state_dict()), "legacy-module", meta=meta, sha256=sha)

    if isinstance(inner, _InertStub):
        if not _is_module_stub(inner):
            raise _err(path, f"no weights found (the file holds a {type(inner)._er_global}, not a module)")
        raw: dict = {}
        bn_eps: dict = {}
        _walk_stub(inner, "", raw, bn_eps, set())
        sd = _finish_state_dict(path, raw)
        meta["module_class"] = type(inner)._er_global
        if bn_eps:
            meta["bn_eps"] = {next(iter(strip_prefix({k: None}, _LOAD_STRIP_PREFIXES))): v
                              for k, v in bn_eps.items()}
        return Checkpoint(sd, "legacy-module", meta=meta, sha256=sha)

    if isinstance(inner, Mapping):
        return Checkpoint(_finish_state_dict(path, inner), "state_dict", meta=meta, sha256=sha)

    what = "a tensor" if isinstance(inner, torch.Tensor) else f"a {type(inner).__name__}"
    raise _err(path, f"no weights found (the file holds {what}, not a state_dict or module)")


def _interpret_own(path, obj: Mapping, sha: str) -> Checkpoint:
    version = obj.get(_MARKER)
    if not isinstance(version, int) or isinstance(version, bool):
        raise _err(path, f"bad edgerestore checkpoint header ({_MARKER}={version!r})")
    if version > FORMAT_VERSION:
        raise _err(path, f"edgerestore checkpoint format {version} is newer than this version "
                         f"understands ({FORMAT_VERSION}); upgrade edgerestore")
    arch, config, meta, sd = obj.get("arch"), obj.get("config"), obj.get("meta", {}), obj.get("state_dict")
    if not isinstance(arch, str) or not arch:
        raise _err(path, "edgerestore checkpoint has no 'arch' name")
    if not isinstance(config, Mapping):
        raise _err(path, "edgerestore checkpoint has no 'config' dict")
    if meta is None:
        meta = {}
    if not isinstance(meta, Mapping):
        raise _err(path, "edgerestore checkpoint 'meta' is not a dict")
    if not isinstance(sd, Mapping):
        raise _err(path, "no weights found (edgerestore checkpoint has no 'state_dict')")
    return Checkpoint(_finish_state_dict(path, sd), "edgerestore", arch=arch, config=dict(config),
                      meta=dict(meta), sha256=sha)


# --------------------------------------------------------------------------------------------
# public API
# --------------------------------------------------------------------------------------------


def _read_bytes(path) -> bytes:
    p = os.fspath(path)
    try:
        st = os.stat(p)
    except FileNotFoundError:
        raise _err(path, "checkpoint file not found") from None
    except OSError as e:
        raise _err(path, f"cannot read checkpoint ({e.strerror or e})") from None
    if stat.S_ISDIR(st.st_mode):
        raise _err(path, "is a directory, not a checkpoint file")
    try:
        with open(p, "rb") as f:
            data = f.read()
    except OSError as e:
        raise _err(path, f"cannot read checkpoint ({e.strerror or e})") from None
    if not data:
        raise _err(path, "checkpoint file is empty")
    return data


def _torchscript_zip(data: bytes) -> bool:
    if not data.startswith(b"PK"):
        return False
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as z:
            return any(n.split("/", 1)[-1] == "constants.pkl" for n in z.namelist())
    except (zipfile.BadZipFile, OSError, ValueError):
        return False


def load_checkpoint(path) -> Checkpoint:
    """Load ``path`` into a :class:`Checkpoint`; raises :class:`EdgeRestoreError` on any problem."""
    data = _read_bytes(path)
    sha = hashlib.sha256(data).hexdigest()

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            obj = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as first:  # noqa: BLE001 - torch raises many types; we retry restricted
        first_error = first
    else:
        return _interpret(path, obj, sha=sha)

    if _torchscript_zip(data):
        raise _err(path, "is a TorchScript archive, not a checkpoint (it contains code); "
                         "export its state_dict instead")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            obj = torch.load(io.BytesIO(data), map_location="cpu", weights_only=False,
                             pickle_module=_restricted)
    except Exception as second:  # noqa: BLE001
        refusal = _find_refusal(second)
        if refusal is not None:
            detail = f" {refusal.detail}" if refusal.detail else ""
            raise EdgeRestoreError(_one_line(
                f"refusing to load '{os.fspath(path)}': it references {refusal.global_name}{detail}, "
                "which is code, not weights (only tensors and module structure are read)", 600)) from None
        reason = _one_line(second) or _one_line(first_error) or type(second).__name__
        raise _err(path, f"not a readable PyTorch checkpoint ({reason})") from None
    return _interpret(path, obj, sha=sha)


_JSON_SCALARS = (str, int, float, bool, type(None))


def _check_plain(path, where: str, value: Any) -> Any:
    """Validate/convert config & meta to JSON-like data so weights_only loading accepts it."""
    if isinstance(value, _JSON_SCALARS):
        return value
    if isinstance(value, Mapping):
        out = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise _err(path, f"cannot save checkpoint: {where} has a non-string key {k!r}")
            out[k] = _check_plain(path, f"{where}[{k!r}]", v)
        return out
    if isinstance(value, (list, tuple)):
        return [_check_plain(path, f"{where}[{i}]", v) for i, v in enumerate(value)]
    if hasattr(value, "item") and not isinstance(value, torch.Tensor) and getattr(value, "ndim", 1) == 0:
        return _check_plain(path, where, value.item())  # numpy scalars
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return value.item()
    raise _err(path, f"cannot save checkpoint: {where} is a {type(value).__name__}; "
                     "only str/int/float/bool/None/list/dict values are allowed")


def save_checkpoint(path, state_dict, arch: str, config: dict, meta: dict | None = None) -> None:
    """Write the project's own checkpoint format atomically (temp file in the same dir + os.replace)."""
    p = os.fspath(path)
    if not isinstance(arch, str) or not arch:
        raise _err(path, "cannot save checkpoint: arch must be a non-empty string")
    if not isinstance(config, Mapping):
        raise _err(path, "cannot save checkpoint: config must be a dict")
    if meta is not None and not isinstance(meta, Mapping):
        raise _err(path, "cannot save checkpoint: meta must be a dict")
    if not isinstance(state_dict, Mapping):
        raise _err(path, "cannot save checkpoint: state_dict must be a dict of tensors")
    sd: dict[str, torch.Tensor] = {}
    for k, v in state_dict.items():
        if not isinstance(k, str) or not isinstance(v, torch.Tensor):
            raise _err(path, f"cannot save checkpoint: state_dict entry {k!r} is not a named tensor")
        sd[k] = v.detach().to("cpu").as_subclass(torch.Tensor).clone()
    if not sd:
        raise _err(path, "cannot save checkpoint: no weights found (state_dict is empty)")
    payload = {
        _MARKER: FORMAT_VERSION,
        "arch": arch,
        "config": _check_plain(path, "config", dict(config)),
        "meta": _check_plain(path, "meta", dict(meta or {})),
        "state_dict": sd,
    }

    directory = os.path.dirname(os.path.abspath(p))
    if not os.path.isdir(directory):
        raise _err(path, "cannot save checkpoint: directory does not exist")
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(p) + ".", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, default_mode(directory=False))
        os.replace(tmp, p)
    except BaseException as e:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(e, OSError):
            raise _err(path, f"cannot save checkpoint ({e.strerror or e})") from None
        raise
    try:  # make the rename durable; best effort
        dfd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass
