"""Reading and writing Hugging Face model directories.

safetensors first: ``model.safetensors`` or a sharded set with
``model.safetensors.index.json``. ``pytorch_model.bin`` is read only through
torch with ``weights_only=True``; anything else is refused with a clear message.
Hub ids are downloaded with ``huggingface_hub`` when the path is not a directory.

:func:`open_weights` reads nothing up front: it maps each key to a tensor whose
``read(index)`` reads just that slice from the file (``safe_open(...).get_slice``), which
is how sharded loads read only what each host's devices hold.

Example::

    directory = resolve_model_dir("sentence-transformers/all-MiniLM-L6-v2")
    config = read_config(directory)
    tensors, name = read_weights(directory)        # every tensor, in memory
    lazy, name = open_weights(directory)           # lazy["bert.pooler.dense.weight"].read((slice(0, 8), slice(None)))
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file, save_file

CONFIG_NAME = "config.json"
SAFE_WEIGHTS = "model.safetensors"
SAFE_INDEX = "model.safetensors.index.json"
TORCH_WEIGHTS = "pytorch_model.bin"
TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt",
    "vocab.json", "merges.txt", "added_tokens.json",
)
_HUB_PATTERNS = [CONFIG_NAME, "*.safetensors", SAFE_INDEX, "generation_config.json", *TOKENIZER_FILES]


def resolve_model_dir(path_or_id: str | os.PathLike, revision: str | None = None) -> Path:
    """A local directory as is, otherwise a hub id downloaded to the HF cache."""
    path = Path(path_or_id).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise FileNotFoundError(f"{path} is a file; pass the model *directory* that holds {CONFIG_NAME}")
    looks_like_id = str(path_or_id).count("/") <= 1 and not str(path_or_id).startswith((".", "/", "~"))
    if not looks_like_id:
        raise FileNotFoundError(
            f"model directory {path} does not exist: give a local Hugging Face model directory (with {CONFIG_NAME}) "
            "or a hub id such as bert-base-cased"
        )
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(str(path_or_id), revision=revision, allow_patterns=_HUB_PATTERNS))
    except Exception as err:  # network, auth or unknown id: say which and how to fix
        raise FileNotFoundError(
            f"{path_or_id!r} is not a local directory and could not be fetched from the Hugging Face hub "
            f"({type(err).__name__}: {err}). Pass a local model directory, or check the id and your network."
        ) from err


def read_config(directory: Path) -> dict:
    file = Path(directory) / CONFIG_NAME
    if not file.is_file():
        raise FileNotFoundError(f"{file} not found: a Hugging Face model directory needs {CONFIG_NAME}")
    try:
        return json.loads(file.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{file} is not valid JSON ({err}): fix it, or copy the model's {CONFIG_NAME} again") from err


def read_weights(directory: Path) -> tuple[dict[str, np.ndarray], str]:
    """All tensors of a model directory as numpy arrays, and the file name(s) read."""
    directory = Path(directory)
    if (directory / SAFE_WEIGHTS).is_file():
        return _load_safetensors(directory / SAFE_WEIGHTS), SAFE_WEIGHTS
    if (directory / SAFE_INDEX).is_file():
        index = json.loads((directory / SAFE_INDEX).read_text())
        tensors: dict[str, np.ndarray] = {}
        for shard in sorted(set(index["weight_map"].values())):
            if not (directory / shard).is_file():
                raise FileNotFoundError(f"{SAFE_INDEX} names shard {shard}, which is missing from {directory}: "
                                        "copy or download the missing shard, or re-save the model")
            tensors.update(_load_safetensors(directory / shard))
        return tensors, SAFE_INDEX
    if (directory / TORCH_WEIGHTS).is_file():
        return _load_torch_bin(directory / TORCH_WEIGHTS), TORCH_WEIGHTS
    found = sorted(p.name for p in directory.iterdir()) if directory.is_dir() else []
    raise FileNotFoundError(
        f"no weights in {directory}: expected {SAFE_WEIGHTS}, {SAFE_INDEX} or {TORCH_WEIGHTS}; found {found}"
    )


class SafetensorsTensor:
    """One tensor of a safetensors file, read on demand, whole or by slice.

    ``shape`` and ``dtype`` (numpy; bfloat16 reads as float32) come from the header;
    ``read(index)`` returns the elements at ``index`` (a tuple of slices, ``...`` for all)
    and adds the bytes it read to its reader's ``bytes_read``.
    """

    def __init__(self, reader: "WeightReader", file: Path, key: str, shape, dtype: str):
        self.reader, self.file, self.key, self.shape = reader, file, key, tuple(shape)
        self.file_dtype = dtype
        self.dtype = np.dtype(np.float32) if dtype == "BF16" else np.dtype(_SAFE_DTYPES.get(dtype, "float32"))

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * (2 if self.file_dtype == "BF16" else self.dtype.itemsize)

    def read(self, index=Ellipsis) -> np.ndarray:
        if index is Ellipsis or not self.shape:
            return self._read(Ellipsis)
        index = tuple(index) + (slice(None),) * (len(self.shape) - len(tuple(index)))
        # numpy semantics: a slice past the end stops at the end (safetensors' get_slice raises).
        index = tuple(_clamp(i, n) for i, n in zip(index, self.shape))
        rows = index[0]
        row_bytes = self.nbytes // max(1, self.shape[0])
        if not isinstance(rows, slice) or len(self.shape) < 2 or index[1:] == (slice(None),) * (len(self.shape) - 1):
            return self._read(index)  # whole rows: contiguous, touches only the pages it returns
        start, stop, step = rows.indices(self.shape[0])
        if step != 1 or (stop - start) * row_bytes <= _BLOCK_BYTES:
            return self._read(index)
        # A slice across columns touches every page of its rows: read it in row blocks, dropping
        # the file mapping after each, so resident memory grows by the slice, not the tensor.
        per = max(1, _BLOCK_BYTES // max(1, row_bytes))
        parts = []
        for first in range(start, stop, per):
            parts.append(self._read((slice(first, min(stop, first + per)),) + index[1:]))
            self.reader.close()
        return np.concatenate(parts)

    def _read(self, index) -> np.ndarray:
        handle = self.reader.handle(self.file, torch=self.file_dtype == "BF16", tensor=self.key)
        value = handle.get_tensor(self.key) if index is Ellipsis else handle.get_slice(self.key)[index]
        if self.file_dtype == "BF16":  # numpy has no bfloat16: through torch, as float32
            self.reader.bytes_read += value.numel() * 2
            return value.float().numpy()
        self.reader.bytes_read += value.nbytes
        return value


def _clamp(index, size: int):
    """A slice clamped to ``size`` (``slice(None)`` when it covers everything); other indices as given."""
    if not isinstance(index, slice):
        return index
    bounds = index.indices(size)
    return slice(None) if bounds == (0, size, 1) else slice(*bounds)


_BLOCK_BYTES = 16 << 20  # row blocks of column slices
_SAFE_DTYPES = {"F64": "float64", "F32": "float32", "F16": "float16", "I64": "int64", "I32": "int32",
                "I16": "int16", "I8": "int8", "U8": "uint8", "BOOL": "bool"}


class WeightReader(dict):
    """HF key -> :class:`SafetensorsTensor` of a model directory; nothing is read until asked.

    ``bytes_read`` counts the tensor bytes read so far (tests and benchmarks use it).
    """

    def __init__(self):
        super().__init__()
        self.bytes_read = 0
        self._handles: dict = {}

    def handle(self, file: Path, torch: bool = False, tensor: str | None = None):
        """An open ``safe_open`` handle; kept only while the same ``tensor`` is being read.

        safetensors maps the file into memory, and every page a read touches counts in this
        process's resident memory for as long as the mapping lives: one handle per tensor
        (dropped when the next tensor is read) keeps a load's footprint at one tensor's pages.
        """
        from safetensors import safe_open

        key = (file, torch, tensor)
        if key not in self._handles:
            self._handles.clear()  # unmaps the previous tensor's pages
            try:
                self._handles[key] = safe_open(str(file), framework="pt" if torch else "numpy")
            except Exception as err:
                raise ValueError(
                    f"{file} is not a readable safetensors file ({err}): it is damaged or incomplete (an "
                    "interrupted download or copy?); download or copy it again, or re-save the model"
                ) from err
        return self._handles[key]

    def close(self) -> None:
        self._handles.clear()

    def add_file(self, file: Path, keys=None) -> None:
        handle = self.handle(file)
        for key in handle.keys() if keys is None else keys:
            piece = handle.get_slice(key)
            self[key] = SafetensorsTensor(self, file, key, piece.get_shape(), piece.get_dtype())
        self.close()


def open_weights(directory: Path) -> tuple[dict, str]:
    """Like :func:`read_weights`, but lazy for safetensors: a :class:`WeightReader` and the file name(s).

    ``pytorch_model.bin`` cannot be read by slice: it is read whole (a plain dict).
    """
    directory = Path(directory)
    if (directory / SAFE_WEIGHTS).is_file():
        reader = WeightReader()
        reader.add_file(directory / SAFE_WEIGHTS)
        return reader, SAFE_WEIGHTS
    if (directory / SAFE_INDEX).is_file():
        index = json.loads((directory / SAFE_INDEX).read_text())
        reader = WeightReader()
        by_shard: dict[str, list[str]] = {}
        for key, shard in index["weight_map"].items():
            by_shard.setdefault(shard, []).append(key)
        for shard in sorted(by_shard):
            if not (directory / shard).is_file():
                raise FileNotFoundError(f"{SAFE_INDEX} names shard {shard}, which is missing from {directory}: "
                                        "copy or download the missing shard, or re-save the model")
            reader.add_file(directory / shard)  # every key of the shard, as read_weights does
        return reader, SAFE_INDEX
    return read_weights(directory)


def _load_safetensors(file: Path) -> dict[str, np.ndarray]:
    try:
        return load_file(str(file))
    except Exception as err:
        if "bfloat16" in str(err) or "bf16" in str(err).lower():
            return _load_safetensors_via_torch(file)
        raise ValueError(
            f"{file} is not a readable safetensors file ({err}): it is damaged or incomplete (an interrupted "
            "download or copy?); download or copy it again, or re-save the model"
        ) from err


def _load_safetensors_via_torch(file: Path) -> dict[str, np.ndarray]:
    from safetensors.torch import load_file as load_torch

    return {k: v.float().numpy() for k, v in load_torch(str(file)).items()}


def _load_torch_bin(file: Path) -> dict[str, np.ndarray]:
    try:
        import torch
    except ImportError as err:
        raise ImportError(
            f"{file} is a PyTorch pickle; reading it needs torch (pip install torch), "
            "or convert the checkpoint to model.safetensors"
        ) from err
    try:
        state = torch.load(str(file), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:  # never retried with weights_only=False: that runs the file's code
        detail = str(err).split("WeightsUnpickler error: ")[-1].split(". ")[0]
        raise ValueError(
            f"{file} holds pickled Python objects that are not plain tensors ({detail}); jaxkernel reads PyTorch "
            "pickles only with torch.load(weights_only=True). Convert the checkpoint to model.safetensors where "
            "you trust its source (transformers: save_pretrained(dir, safe_serialization=True))"
        ) from None
    if not isinstance(state, dict) or not all(hasattr(v, "is_floating_point") for v in state.values()):
        raise ValueError(f"{file} is not a state dict of tensors; convert the checkpoint to model.safetensors")
    return {k: v.float().numpy() if v.is_floating_point() else v.numpy() for k, v in state.items()}


def parse_size(size: int | str) -> int:
    """``"5GB"`` / ``"200MB"`` / bytes -> bytes."""
    if isinstance(size, int):
        return size
    units = {"KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "B": 1}
    text = size.strip().upper()
    for unit, factor in sorted(units.items(), key=lambda kv: -len(kv[0])):
        if text.endswith(unit):
            return int(float(text[: -len(unit)]) * factor)
    return int(text)


def write_weights(tensors: dict[str, np.ndarray], directory: Path, max_shard_size: int | str = "5GB") -> list[str]:
    """Write ``model.safetensors``, or shards plus an index past ``max_shard_size``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    limit = parse_size(max_shard_size)
    shards: list[dict[str, np.ndarray]] = [{}]
    size = 0
    for key in sorted(tensors):
        nbytes = tensors[key].nbytes
        if shards[-1] and size + nbytes > limit:
            shards.append({})
            size = 0
        shards[-1][key] = tensors[key]
        size += nbytes
    metadata = {"format": "pt"}
    if len(shards) == 1:
        save_file(shards[0], str(directory / SAFE_WEIGHTS), metadata=metadata)
        return [SAFE_WEIGHTS]
    names = [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    weight_map = {}
    for name, shard in zip(names, shards):
        save_file(shard, str(directory / name), metadata=metadata)
        weight_map.update({key: name for key in shard})
    index = {"metadata": {"total_size": sum(t.nbytes for t in tensors.values())}, "weight_map": weight_map}
    (directory / SAFE_INDEX).write_text(json.dumps(index, indent=2, sort_keys=True))
    return names + [SAFE_INDEX]


def write_config(config: dict, directory: Path) -> None:
    Path(directory).mkdir(parents=True, exist_ok=True)
    (Path(directory) / CONFIG_NAME).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def copy_tokenizer_files(source: Path, directory: Path) -> list[str]:
    """Copy the tokenizer files that exist in ``source`` to ``directory``."""
    copied = []
    for name in TOKENIZER_FILES:
        if (Path(source) / name).is_file():
            shutil.copyfile(Path(source) / name, Path(directory) / name)
            copied.append(name)
    return copied
