"""Reading checkpoint files safely: safetensors, pickled PyTorch files, TorchScript archives.

Nothing is unpickled beyond tensors and plain containers. ``torch.load(weights_only=True)`` is used with a
short allowlist (:data:`SAFE_GLOBALS`) of the plain classes published checkpoints hold besides tensors:
``argparse.Namespace`` (the ``args`` of DINO and INTR training checkpoints) and paths. TorchScript archives
(OpenAI's CLIP ``ViT-B-16.pt``) are never compiled or run: their ``data.pkl`` is read by a restricted
unpickler (:class:`_ScriptArchiveUnpickler`) that rebuilds tensors and records every scripted module as a
plain attribute dict, so only the tensors and their names come out.

:func:`read_checkpoint` returns a :class:`CheckpointFile`: the file's top-level object (``container``, for
telling formats apart) and the flat ``{name: tensor}`` dict the weights live in (``state``).
"""

from __future__ import annotations

import argparse
import pathlib
import pickle
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch

from traitlens.errors import UserError

PICKLE_SUFFIXES = {".pth", ".pt", ".bin", ".ckpt"}
# Plain classes found next to the tensors of published checkpoints; nothing here runs code when rebuilt.
SAFE_GLOBALS = [argparse.Namespace, pathlib.PosixPath, pathlib.WindowsPath, pathlib.PurePosixPath,
                pathlib.PureWindowsPath]


@dataclass
class CheckpointFile:
    """What a weights file holds: ``container`` (its top-level object, tensors replaced by nothing), ``state``
    (the flat tensor dict chosen for loading), ``kind`` (safetensors | pickle | torchscript), ``nest`` (the
    keys walked from the top level to ``state``, e.g. ``["teacher"]``) and ``extra`` (other top-level entries
    with tensors, e.g. DINO's ``student``)."""

    path: Path
    kind: str
    container: Any
    state: Dict[str, torch.Tensor]
    nest: List[str] = field(default_factory=list)
    extra: Dict[str, Dict[str, torch.Tensor]] = field(default_factory=dict)

    @property
    def top_keys(self) -> List[str]:
        return [str(k) for k in self.container] if isinstance(self.container, dict) else []


def read_safetensors(path) -> Dict[str, torch.Tensor]:
    """The tensors of a .safetensors file; a malformed or lying header is one clear :class:`UserError`."""
    from safetensors.torch import load_file

    p = Path(path)
    try:
        return load_file(str(p), device="cpu")
    except Exception as err:  # safetensors raises its own error types (SafetensorError, ValueError, OSError)
        first = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
        raise UserError(f"cannot read {p} as safetensors ({first}): the file is damaged, truncated or not "
                        "safetensors; download it again") from None


def _refused_globals(path: Path) -> List[str]:
    try:
        return list(torch.serialization.get_unsafe_globals_in_checkpoint(str(path)))
    except Exception:  # an old torch or an unreadable archive: the message then names no class
        return []


def torch_load(path) -> Any:
    """``torch.load(weights_only=True)`` with :data:`SAFE_GLOBALS` allowed; a refusal is one clear line."""
    p = Path(path)
    if _is_torchscript(p):
        return read_torchscript(p)
    try:
        with torch.serialization.safe_globals(SAFE_GLOBALS):
            return torch.load(str(p), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if "global" not in str(err).lower():  # not a refused class: the file is not a checkpoint at all
            raise UserError(f"cannot read weights file {p}: not a PyTorch checkpoint") from None
        names = [n for n in _refused_globals(p) if not n.startswith(("argparse.", "pathlib."))]
        found = f" ({', '.join(names[:3])})" if names else ""
        raise UserError(
            f"{p} holds pickled Python objects besides tensors{found}, which traitlens does not unpickle; "
            "convert it to a plain state dict (e.g. safetensors.torch.save_file(state_dict, 'w.safetensors'))"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile) as err:
        first = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
        raise UserError(f"cannot read weights file {p}: {first}") from None


# ---------------------------------------------------------------------------------------------
# TorchScript archives, read as data.


def _is_torchscript(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as z:
        names = z.namelist()
    return any(n.endswith("/constants.pkl") for n in names) and any("/code/" in n for n in names)


class _ScriptModule:
    """A scripted module's attributes, as read from the archive (no code, no methods)."""

    qualname = ""

    def __new__(cls, *args):
        obj = super().__new__(cls)
        obj.attributes = {}
        return obj

    def __setstate__(self, state):
        if isinstance(state, dict):
            self.attributes.update(state)


_STORAGE_DTYPES = {
    "FloatStorage": torch.float32, "HalfStorage": torch.float16, "DoubleStorage": torch.float64,
    "BFloat16Storage": torch.bfloat16, "LongStorage": torch.int64, "IntStorage": torch.int32,
    "ShortStorage": torch.int16, "CharStorage": torch.int8, "ByteStorage": torch.uint8, "BoolStorage": torch.bool,
}


def _rebuild_tensor(storage, offset, size, stride, *_):
    flat = storage
    if not size:
        return flat[offset:offset + 1].reshape(()).clone()
    return torch.as_strided(flat, tuple(size), tuple(stride), int(offset)).clone()


class _ScriptArchiveUnpickler(pickle.Unpickler):
    """Rebuilds only tensors, ordered dicts and scripted-module records; any other global is refused."""

    def __init__(self, file, archive: zipfile.ZipFile, prefix: str):
        super().__init__(file)
        self.archive, self.prefix = archive, prefix
        self.storages: Dict[str, torch.Tensor] = {}

    def find_class(self, module: str, name: str):
        if module == "torch._utils" and name in ("_rebuild_tensor_v2", "_rebuild_tensor"):
            return _rebuild_tensor
        if module == "torch._utils" and name == "_rebuild_parameter":
            return lambda data, requires_grad, hooks: data
        if module == "collections" and name == "OrderedDict":
            import collections

            return collections.OrderedDict
        if module == "torch" and name in _STORAGE_DTYPES:
            return _STORAGE_DTYPES[name]
        if module == "torch.jit._pickle" and name == "restore_type_tag":  # typed containers: the value itself
            return lambda value, _type: value
        if module == "torch.jit._pickle" and name in ("build_intlist", "build_doublelist", "build_boollist",
                                                      "build_tensorlist"):
            return list
        if module.startswith("__torch__"):
            return type(name, (_ScriptModule,), {"qualname": f"{module}.{name}"})
        raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in a TorchScript archive")

    def persistent_load(self, pid):
        kind, dtype, key = pid[0], pid[1], str(pid[2])
        if kind != "storage" or not isinstance(dtype, torch.dtype):
            raise pickle.UnpicklingError(f"unsupported persistent id {pid[:2]!r}")
        if key not in self.storages:
            raw = bytearray(self.archive.read(f"{self.prefix}data/{key}"))
            self.storages[key] = torch.frombuffer(raw, dtype=dtype) if raw else torch.empty(0, dtype=dtype)
        return self.storages[key]


def _script_tensors(obj, prefix: str, out: Dict[str, torch.Tensor]) -> None:
    for name, value in obj.attributes.items():
        if isinstance(value, torch.Tensor):
            out[prefix + name] = value
        elif isinstance(value, _ScriptModule):
            _script_tensors(value, f"{prefix}{name}.", out)


def read_torchscript(path) -> Dict[str, torch.Tensor]:
    """The named tensors (parameters and buffers) of a TorchScript archive, without compiling or running it."""
    p = Path(path)
    try:
        with zipfile.ZipFile(p) as z:
            data = [n for n in z.namelist() if n.endswith("/data.pkl") and n.count("/") == 1]
            if not data:
                raise UserError(f"{p} is a zip archive without data.pkl: not a TorchScript model")
            prefix = data[0][: -len("data.pkl")]
            import io

            root = _ScriptArchiveUnpickler(io.BytesIO(z.read(data[0])), z, prefix).load()
    except pickle.UnpicklingError as err:
        raise UserError(f"cannot read TorchScript archive {p}: {err}") from None
    except (zipfile.BadZipFile, KeyError, EOFError, RuntimeError, ValueError) as err:
        raise UserError(f"cannot read TorchScript archive {p}: {str(err).splitlines()[0][:200]}") from None
    if not isinstance(root, _ScriptModule):
        raise UserError(f"{p}: the TorchScript archive holds no module")
    out: Dict[str, torch.Tensor] = {}
    _script_tensors(root, "", out)
    return out


# ---------------------------------------------------------------------------------------------
# The tensors to load.

# Nestings seen in the wild, outermost first. DINO checkpoints hold "student" and "teacher": the teacher is
# the one the paper evaluates.
NEST_KEYS = ("state_dict", "model_state_dict", "model_state", "model", "teacher", "module", "net", "student")


def _is_state(obj) -> bool:
    if not isinstance(obj, dict) or not obj:
        return False
    n = sum(isinstance(v, torch.Tensor) for v in obj.values())
    return n > 0 and n >= len(obj) // 2


def _unwrap(obj):
    """(flat tensor dict, nest path, other tensor dicts at the level the state was found)."""
    nest: List[str] = []
    for _ in range(4):
        if not isinstance(obj, dict):
            return {}, nest, {}
        if _is_state(obj):
            break
        key = next((k for k in NEST_KEYS if isinstance(obj.get(k), dict)), None)
        if key is None:
            return {}, nest, {}
        extra = {str(k): v for k, v in obj.items() if k != key and isinstance(v, dict) and _is_state(v)}
        nest.append(key)
        obj = obj[key]
    state = {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    return state, nest, (extra if nest else {})


def read_checkpoint(path) -> CheckpointFile:
    """Read ``path`` (.safetensors, .pth/.pt/.bin/.ckpt, TorchScript) into a :class:`CheckpointFile`."""
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix == ".safetensors":
        state = read_safetensors(p)
        ck = CheckpointFile(p, "safetensors", state, dict(state))
    elif suffix in PICKLE_SUFFIXES:
        if _is_torchscript(p):
            state = read_torchscript(p)
            ck = CheckpointFile(p, "torchscript", state, state)
        else:
            obj = torch_load(p)
            state, nest, extra = _unwrap(obj)
            ck = CheckpointFile(p, "pickle", obj, state, nest, extra)
    else:
        raise UserError(f"unsupported weights file {p}: use .safetensors, .pth, .pt, .bin or .ckpt")
    if not ck.state:
        raise UserError(f"no tensors found in weights file {p}")
    return ck


def first_nonfinite(state: Dict[str, torch.Tensor]) -> Optional[str]:
    """The name of the first floating tensor holding NaN or inf (in the dict's order), or None."""
    for name, t in state.items():
        if t.is_floating_point() and t.numel() and not bool(torch.isfinite(t).all()):
            return name
    return None


def check_finite(state: Dict[str, torch.Tensor], source) -> None:
    """Refuse weights with NaN or inf values, naming the first bad tensor."""
    bad = first_nonfinite(state)
    if bad is not None:
        t = state[bad]
        kind = "NaN" if bool(torch.isnan(t).any()) else "inf"
        raise UserError(f"weights {source} hold {kind} values (first in tensor {bad!r}): the file comes from a run "
                        "that diverged or is damaged; use another checkpoint", option="weights")
