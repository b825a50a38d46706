"""Reading CompVis / pytorch_lightning `.ckpt` files without running any of their code.

Such a checkpoint is a pickle in torch's zip format (`<prefix>/data.pkl`, one record
`<prefix>/data/<key>` per storage) that also names classes we neither have nor trust: Lightning
callbacks, `argparse.Namespace` hyper-parameters, numpy scalars. `torch.load(weights_only=True)`
refuses those files and `weights_only=False` would execute whatever the pickle asks for, so the
pickle is read here by an unpickler whose `find_class` hands out only:

- inert stand-ins for the tensor rebuild functions and storage types: a tensor becomes a
  `TensorRef`, read from the archive only when asked for (so optimiser states and EMA copies
  that are never used are never read into memory);
- `collections.OrderedDict`, `set`, `frozenset`, torch dtypes, and a latin-1-only `_codecs.encode`
  (how protocol 2 stores `bytes`);
- a `CheckpointStub` subclass for any other class-like name (CapWords, or the few numpy
  reconstructors listed below): calling it only records the arguments, so nothing runs.

Every other global is refused with an SDMCError before it can be called: names from modules
that can run code (`os`/`posix`, `subprocess`, `builtins`, `importlib`, ...), whatever their
spelling, and any lower-case name (a function) from any module outside the allow-list.
"""

import _compat_pickle
import collections
import pickle
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from sdmcunet.utils.errors import SDMCError

# Modules with callables that execute code or touch the system; nothing of theirs is handed out
# (beyond the allow-list), not even as a stub, so that a malicious file is refused outright.
_CODE_RUNNING_PACKAGES = frozenset({
    "os", "posix", "nt", "subprocess", "sys", "builtins", "importlib", "shutil", "socket", "pickle", "_pickle",
    "marshal", "codecs", "_codecs", "io", "_io", "ctypes", "runpy", "code", "types", "functools", "operator",
    "copyreg", "pty", "signal", "multiprocessing", "threading", "_thread", "webbrowser", "tempfile", "pdb",
    "timeit", "inspect", "pydoc", "torch", "numpy",
})
# Lower-case names that are classes or plain value reconstructors in real Lightning checkpoints.
_STUBBED = frozenset({
    ("numpy", "dtype"), ("numpy", "ndarray"),
    ("numpy.core.multiarray", "scalar"), ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "scalar"), ("numpy._core.multiarray", "_reconstruct"),
})
# The legacy typed storages torch.save names in its persistent ids.
_STORAGE_DTYPES = {
    "DoubleStorage": torch.float64, "FloatStorage": torch.float32, "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16, "LongStorage": torch.int64, "IntStorage": torch.int32,
    "ShortStorage": torch.int16, "CharStorage": torch.int8, "ByteStorage": torch.uint8, "BoolStorage": torch.bool,
}
_TORCH_DTYPES = {name: value for name, value in vars(torch).items() if isinstance(value, torch.dtype)}


@dataclass(frozen=True, slots=True)
class _StorageType:
    """What a `torch.<X>Storage` global stands for here: just its dtype (not callable)."""

    dtype: torch.dtype


@dataclass(frozen=True, slots=True)
class _StorageRef:
    key: str
    dtype: torch.dtype
    numel: int


@dataclass(frozen=True, slots=True)
class TensorRef:
    """A tensor of the checkpoint, not yet read: its storage record and its view of it."""

    storage: _StorageRef
    offset: int
    size: tuple[int, ...]
    stride: tuple[int, ...]


class CheckpointStub:
    """An object of a class we do not import; it keeps what the pickle gives it and does nothing.

    `stub_of` names the class ("module.name"); `args` / `kwargs` are what it was built with,
    `state` what BUILD set, `items` / `elements` what SETITEMS / APPENDS added.
    """

    stub_of = ""

    def __new__(cls, *args: Any, **kwargs: Any) -> "CheckpointStub":
        instance = super().__new__(cls)
        instance.args, instance.kwargs = args, kwargs
        instance.state, instance.items, instance.elements = None, {}, []
        return instance

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        """Everything was recorded by __new__ (NEWOBJ calls only __new__, REDUCE both)."""

    def __setstate__(self, state: Any) -> None:
        self.state = state

    # Dict and list subclasses (Lightning's AttributeDict) are filled by SETITEMS / APPENDS.
    def __setitem__(self, key: Any, value: Any) -> None:
        self.items[key] = value

    def append(self, value: Any) -> None:
        self.elements.append(value)

    def extend(self, values: Any) -> None:
        self.elements.extend(values)

    def __repr__(self) -> str:
        return f"<stub of {self.stub_of}>"


def _is_int_tuple(value: object) -> bool:
    return isinstance(value, tuple) and all(isinstance(item, int) for item in value)


def _rebuild_tensor(storage: object, storage_offset: object, size: object, stride: object, *_: object) -> TensorRef:
    """Stands in for `torch._utils._rebuild_tensor_v2` (requires_grad, hooks and metadata dropped)."""
    if not (isinstance(storage, _StorageRef) and isinstance(storage_offset, int)
            and _is_int_tuple(size) and _is_int_tuple(stride)):
        raise ValueError("malformed tensor record")
    return TensorRef(storage, storage_offset, size, stride)


def _rebuild_parameter(data: object, *_: object) -> TensorRef:
    """Stands in for `torch._utils._rebuild_parameter`: a parameter is its tensor here."""
    if not isinstance(data, TensorRef):
        raise ValueError("malformed parameter record")
    return data


def _encode_latin1(text: object, encoding: object = "utf-8") -> bytes:
    """`_codecs.encode` as protocol 2 uses it for `bytes`; other codecs are not needed."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise ValueError("unexpected _codecs.encode call")
    return text.encode("latin-1")


_ALLOWED: dict[tuple[str, str], object] = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("_codecs", "encode"): _encode_latin1,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    **{("torch", name): _StorageType(dtype) for name, dtype in _STORAGE_DTYPES.items()},
    **{("torch", name): dtype for name, dtype in _TORCH_DTYPES.items()},
}


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, stream: Any, path: Path) -> None:
        super().__init__(stream)
        self._path = path
        self._stubs: dict[tuple[str, str], type] = {}

    def find_class(self, module: str, name: str) -> object:
        # Protocol 2 pickles use Python 2 module names (`__builtin__`); pickle's own find_class
        # translates them, ours has to as well.
        module, name = _compat_pickle.NAME_MAPPING.get((module, name), (module, name))
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        if (module, name) in _ALLOWED:
            return _ALLOWED[(module, name)]
        if (module, name) in _STUBBED or (module.split(".")[0] not in _CODE_RUNNING_PACKAGES and name[:1].isupper()):
            return self._stub_class(module, name)
        raise SDMCError(f"{self._path}: refused: the checkpoint asks to call {module}.{name}, which could run code")

    def persistent_load(self, saved_id: object) -> _StorageRef:
        match saved_id:
            case ("storage", _StorageType(dtype=dtype), str(key), str(), int(numel)) if numel >= 0:
                return _StorageRef(key, dtype, numel)
        raise ValueError(f"unexpected persistent id {saved_id!r}")

    def _stub_class(self, module: str, name: str) -> type:
        # One class per name, so that the same global read twice is the same object (dict keys).
        if (module, name) not in self._stubs:
            class_name = name.rpartition(".")[2]
            self._stubs[(module, name)] = type(class_name, (CheckpointStub,), {"stub_of": f"{module}.{name}"})
        return self._stubs[(module, name)]


class CompVisCheckpoint:
    """An open `.ckpt` file: `content` is its unpickled object, with `TensorRef`s for tensors.

    Use as a context manager; tensors can be read with `tensor()` while it is open.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise SDMCError(f"{self.path}: file not found")
        if not zipfile.is_zipfile(self.path):
            raise SDMCError(f"{self.path}: not a checkpoint in torch's zip format (legacy pre-1.6 pickles are not "
                            "supported; they cannot be read without running them)")
        self._archive = zipfile.ZipFile(self.path)
        self._storages: dict[str, torch.Tensor] = {}
        try:
            self._prefix = self._record_prefix()
            self.content = self._unpickle()
        except BaseException:
            self._archive.close()
            raise

    def __enter__(self) -> "CompVisCheckpoint":
        return self

    def __exit__(self, *_: object) -> None:
        self._archive.close()

    def tensor(self, ref: TensorRef) -> torch.Tensor:
        """Read the tensor `ref` stands for (its storage record is read once and shared)."""
        storage = self._storages.get(ref.storage.key)
        if storage is None:
            storage = self._storages[ref.storage.key] = self._read_storage(ref.storage)
        try:
            return storage.as_strided(ref.size, ref.stride, ref.offset)
        except RuntimeError as error:
            raise SDMCError(f"{self.path}: corrupt checkpoint (a tensor lies outside its storage: {error})") from None

    def state_dict(self) -> dict[str, torch.Tensor]:
        """`content["state_dict"]` if there is one, else the top-level mapping, as real tensors."""
        content = self.content
        if isinstance(content, dict) and isinstance(content.get("state_dict"), dict):
            content = content["state_dict"]
        if not isinstance(content, dict):
            raise SDMCError(f"{self.path}: holds a {type(content).__name__}, not a mapping of names to tensors")
        not_tensors = [name for name, value in content.items() if not isinstance(value, TensorRef)]
        if not_tensors:
            raise SDMCError(f"{self.path}: expected only tensors in its state_dict; not tensors: {not_tensors[:5]}")
        return {name: self.tensor(ref) for name, ref in content.items()}

    def _record_prefix(self) -> str:
        pickles = [name for name in self._archive.namelist() if name.count("/") == 1 and name.endswith("/data.pkl")]
        if len(pickles) != 1:
            raise SDMCError(f"{self.path}: a zip file but not a torch checkpoint (no single <prefix>/data.pkl)")
        prefix = pickles[0].removesuffix("/data.pkl")
        byte_order = f"{prefix}/byteorder"
        # Without the record (files of torch < 2.1) torch assumes little-endian as well.
        if byte_order in self._archive.namelist() and self._archive.read(byte_order).strip() != b"little":
            raise SDMCError(f"{self.path}: a big-endian checkpoint; only little-endian ones are supported")
        return prefix

    def _unpickle(self) -> object:
        try:
            with self._archive.open(f"{self._prefix}/data.pkl") as stream:
                return _RestrictedUnpickler(stream, self.path).load()
        except SDMCError:
            raise
        except Exception as error:  # a damaged or hostile pickle fails in many ways; none is our bug
            raise SDMCError(f"{self.path}: corrupt checkpoint ({type(error).__name__}: {error})") from None

    def _read_storage(self, storage: _StorageRef) -> torch.Tensor:
        record = f"{self._prefix}/data/{storage.key}"
        size = storage.numel * storage.dtype.itemsize
        try:
            info = self._archive.getinfo(record)
            if info.file_size != size:
                raise ValueError(f"{record} holds {info.file_size} bytes, {size} expected")
            buffer = bytearray(size)
            with self._archive.open(info) as stream:
                if stream.readinto(buffer) != size:
                    raise ValueError(f"{record} is truncated")
        except (KeyError, ValueError, zipfile.BadZipFile, OSError) as error:
            raise SDMCError(f"{self.path}: corrupt checkpoint ({error})") from None
        return torch.frombuffer(buffer, dtype=storage.dtype) if size else torch.empty(0, dtype=storage.dtype)


def read_compvis_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The weights of a CompVis / Lightning checkpoint, read without running any of its code."""
    with CompVisCheckpoint(path) as checkpoint:
        return checkpoint.state_dict()
