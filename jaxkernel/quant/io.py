"""Save and load int8 models as safetensors (until the Orbax checkpoint work lands).

Format of a jaxkernel int8 directory (version 1)::

    OUT/
      config.json              the model's HF config (as save_pretrained writes it),
                               plus a "jaxkernel_quantization" block:
                                 {"format": "jaxkernel-int8", "version": 1,
                                  "dtype": compute dtype or null,
                                  "modules": {"<path>": {"kind": "linear", "mode": "weight_only",
                                                         "group_size": null}, ...}}
                               ("kind": "embed" for Int8Embed; no mode/group_size there)
      int8_model.safetensors   every model variable under its jaxkernel dotted path:
                                 <path>.kernel     int8    (in, out)     Int8Linear
                                 <path>.scale      float32 (G, out)      G = 1 or in / group_size
                                 <path>.embedding  int8    (V, D)        Int8Embed
                                 <path>.scale      float32 (V, 1)
                               and all float parameters (biases, LayerNorms, embeddings,
                               heads) as they are in the model, e.g. float32.
      tokenizer files          copied when given

``w = kernel * scale`` (scale repeated over each group of ``in / G`` rows). The
weights file is deliberately *not* named ``model.safetensors``: plain
``transformers`` refuses the directory instead of loading int8 codes as floats.
For PyTorch users export with ``save_pretrained(dequantize_model(model), out)``,
which writes ordinary float32 HF weights (``q * scale``).

Example::

    save_quantized(quantize_model(model), "out/int8", tokenizer_from=src)
    model = load_quantized("out/int8")
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from safetensors.numpy import load_file, save_file

from jaxkernel.hf import io as hf_io
from jaxkernel.hf.pretrained import hf_config_for
from jaxkernel.models.registry import family_for
from jaxkernel.models.layers import Embed, Linear
from jaxkernel.quant.int8 import Int8Embed, Int8Linear
from jaxkernel.quant.transform import _modules, _path_str, _replace

WEIGHTS_NAME = "int8_model.safetensors"
FORMAT = "jaxkernel-int8"
VERSION = 1


def _flat_state(model: nnx.Module) -> dict[str, nnx.Variable]:
    state = nnx.state(model, nnx.Not(nnx.RngState))
    return {".".join(str(p) for p in path): var for path, var in nnx.to_flat_state(state)}


def _module_records(model: nnx.Module) -> dict[str, dict]:
    records = {}
    for path, node in _modules(model, (Int8Linear, Int8Embed)):
        if isinstance(node, Int8Linear):
            records[_path_str(path)] = {"kind": "linear", "mode": node.mode, "group_size": node.group_size}
        else:
            records[_path_str(path)] = {"kind": "embed"}
    return records


def save_quantized(
    model: nnx.Module,
    directory: str | os.PathLike,
    *,
    tokenizer=None,
    tokenizer_from: str | os.PathLike | None = None,
) -> Path:
    """Write an int8 model (codes + scales + float parameters) in the format above.

    Raises:
      ValueError: ``model`` holds no int8 modules (use ``save_pretrained`` for float models).
    """
    records = _module_records(model)
    if not records:
        raise ValueError(
            f"{type(model).__name__} has no int8 modules; call quantize_model first, or use "
            "jaxkernel.save_pretrained for a float model"
        )
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {path: np.ascontiguousarray(np.asarray(var[...])) for path, var in _flat_state(model).items()}
    save_file(tensors, str(directory / WEIGHTS_NAME), metadata={"format": FORMAT, "version": str(VERSION)})
    config = hf_config_for(model)
    config["jaxkernel_quantization"] = {
        "format": FORMAT, "version": VERSION, "dtype": model.config.dtype, "modules": records,
    }
    hf_io.write_config(config, directory)
    if tokenizer is not None:
        tokenizer.save_pretrained(str(directory))
    elif tokenizer_from is not None:
        hf_io.copy_tokenizer_files(hf_io.resolve_model_dir(tokenizer_from), directory)
    return directory


def load_quantized(directory: str | os.PathLike) -> nnx.Module:
    """Rebuild an int8 model saved by ``save_quantized``, in eval mode.

    Raises:
      FileNotFoundError: not a jaxkernel int8 directory.
      ValueError: the weights do not fit the recorded architecture (names each tensor).
    """
    directory = Path(directory)
    hf = hf_io.read_config(directory)
    quant = hf.pop("jaxkernel_quantization", None)
    weights = directory / WEIGHTS_NAME
    if quant is None or not weights.is_file():
        raise FileNotFoundError(
            f"{directory} is not a jaxkernel int8 directory (needs {WEIGHTS_NAME} and a "
            "'jaxkernel_quantization' block in config.json); load float HF models with jaxkernel.from_pretrained"
        )
    if quant.get("format") != FORMAT or quant.get("version") != VERSION:
        raise ValueError(
            f"{directory}: int8 format {quant.get('format')!r} version {quant.get('version')!r} is not "
            f"supported; this jaxkernel reads {FORMAT!r} version {VERSION}"
        )
    source = str(directory / hf_io.CONFIG_NAME)
    family = family_for(hf.get("model_type"), source)
    overrides = {"source": source}
    if quant.get("dtype"):
        overrides["dtype"] = quant["dtype"]
    config = family.config_from_hf(hf, overrides)
    task = family.task_for_architecture(hf.get("architectures"))
    # Built abstractly: no float copy of the weights is ever materialised.
    model = nnx.eval_shape(lambda: _int8_skeleton(family.build(task, config), quant["modules"], source))
    _fill(model, load_file(str(weights)), str(weights))
    _concrete_rngs(model)
    return model


def _int8_skeleton(model: nnx.Module, records: dict[str, dict], source: str) -> nnx.Module:
    modules = {_path_str(path): (path, node) for path, node in _modules(model, (Linear, Embed))}
    for name, record in records.items():
        if name not in modules:
            raise ValueError(f"{source} records int8 module {name!r}, which the {type(model).__name__} lacks")
        path, node = modules[name]
        if record["kind"] == "linear":
            new = Int8Linear.from_linear(node, mode=record["mode"], group_size=record["group_size"])
        else:
            new = Int8Embed.from_embed(node)
        _replace(model, path, new)
    return model


def _concrete_rngs(model: nnx.Module) -> None:
    """Dropout RNG streams of an abstract build get fresh concrete state (seed 0, count 0)."""
    for _, var in nnx.to_flat_state(nnx.state(model, nnx.RngState)):
        if isinstance(var, nnx.RngKey):
            var.set_value(jax.random.key(0))
        else:
            var.set_value(jnp.zeros(var.shape, var.dtype))


def _fill(model: nnx.Module, tensors: dict[str, np.ndarray], source: str) -> None:
    """Copy every tensor into the variable of the same path; each used exactly once."""
    variables = _flat_state(model)
    missing = sorted(set(variables) - set(tensors))
    unused = sorted(set(tensors) - set(variables))
    if missing or unused:
        raise ValueError(
            f"{source} does not fit the model: missing {missing[:5]}{' ...' if len(missing) > 5 else ''}, "
            f"unexpected {unused[:5]}{' ...' if len(unused) > 5 else ''}"
        )
    for path, var in variables.items():
        value = tensors[path]
        if value.shape != tuple(var.shape) or value.dtype != np.dtype(var.dtype):
            raise ValueError(
                f"{source}: tensor {path!r} is {value.dtype}{list(value.shape)}, the model expects "
                f"{np.dtype(var.dtype)}{list(var.shape)}"
            )
        var.set_value(jnp.asarray(value))
