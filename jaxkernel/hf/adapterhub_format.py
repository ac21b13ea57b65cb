"""AdapterHub bottleneck-adapter directories, both ways: what ``adapters`` ``save_adapter`` writes.

A directory holds ``adapter_config.json`` and ``adapter.safetensors`` (the library's
``use_safetensors=True`` form; jaxkernel writes only this one, no torch needed) or
``pytorch_adapter.bin`` (read with torch, ``weights_only=True``). A task model's trained head
(``modules_to_save``) goes beside it as the library saves a static head: ``head_config.json`` +
``model_head.safetensors``. Names come from the model's mapping table; the adapter's own
keys add the adapter name and the library's ``nn.Sequential`` index:

=============================================  ================================================
jaxkernel                                      AdapterHub key
=============================================  ================================================
``<m>.adapters.adapter_down.kernel`` (D, d)    ``<hf m>.adapters.<name>.adapter_down.0.weight`` (d, D)
``<m>.adapters.adapter_down.bias``             ``<hf m>.adapters.<name>.adapter_down.0.bias``
``<m>.adapters.adapter_up.kernel`` (d, D)      ``<hf m>.adapters.<name>.adapter_up.weight`` (D, d)
=============================================  ================================================

``<m>`` is ``...layer.<i>.attention.output`` (Houlsby's ``mh_adapter``) or ``...layer.<i>.output``.
Keys keep the model's base prefix (``bert.`` in task models), as the library does; reading
accepts either.

Example::

    save_adapterhub(model, "adapter/")     # adapters: model.load_adapter("adapter/", use_safetensors=True)
    model = load_adapterhub(jaxkernel.from_pretrained(base_dir), "adapter/")
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
from flax import nnx
from safetensors.numpy import save_file

from jaxkernel.hf import io
from jaxkernel.hf.mapping import MappingError, hf_key_for, param_paths
from jaxkernel.hf.pretrained import _normalise_prefix
from jaxkernel.models.registry import family_of
from jaxkernel.peft.bottleneck import BottleneckConfig, adapter_layers, apply_bottleneck
from jaxkernel.peft.trainable import SavedModuleParam

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter.safetensors"
TORCH_WEIGHTS_NAME = "pytorch_adapter.bin"
HEAD_CONFIG_NAME = "head_config.json"
HEAD_WEIGHTS_NAME = "model_head.safetensors"
TORCH_HEAD_WEIGHTS_NAME = "pytorch_model_head.bin"
FORMAT_VERSION = "adapters.1.3.0"  # the library version whose files this module matches

# Every field adapters 1.3.0 writes for a bottleneck config. The ones jaxkernel implements come
# from BottleneckConfig; the rest hold the library's defaults, and reading refuses other values.
_UNSUPPORTED_DEFAULTS = {
    "cross_adapter": False, "factorized_phm_W": True, "factorized_phm_rule": False,
    "hypercomplex_nonlinearity": "glorot-uniform", "inv_adapter": None, "inv_adapter_reduction_factor": None,
    "is_parallel": False, "learn_phm": True, "ln_after": False, "ln_before": False, "phm_bias": True,
    "phm_c_init": "normal", "phm_dim": 4, "phm_init_range": 0.0001, "phm_layer": False, "phm_rank": 1,
    "shared_W_phm": False, "shared_phm_rule": True, "stochastic_depth": 0.0, "use_gating": False,
    "init_weights_seed": None,
}
_IMPLEMENTED = (
    "mh_adapter", "output_adapter", "reduction_factor", "non_linearity", "original_ln_before", "original_ln_after",
    "residual_before_ln", "adapter_residual_before_ln", "scaling", "dropout", "leave_out", "init_weights",
)
# Our leaf -> the library's module inside ``adapters.<name>`` (adapter_down is Sequential(Linear, act)).
_LEAVES = {"adapter_down": "adapter_down.0", "adapter_up": "adapter_up"}


def is_adapterhub_dir(directory: str | os.PathLike) -> bool:
    """Whether ``directory`` looks like an AdapterHub adapter (not a PEFT one)."""
    directory = Path(directory)
    if (directory / WEIGHTS_NAME).is_file() or (directory / TORCH_WEIGHTS_NAME).is_file():
        return True
    try:
        config = json.loads((directory / CONFIG_NAME).read_text())
    except (OSError, json.JSONDecodeError):
        return False
    return isinstance(config.get("config"), dict) and "peft_type" not in config


def _hub_key(model: nnx.Module, path: str, name: str) -> tuple[str, object]:
    """AdapterHub key and table rule for our adapter parameter ``path``."""
    key, rule = hf_key_for(path, family_of(model).table)
    module, sep, rest = key.rpartition(".adapters.")
    leaf, _, param = rest.partition(".")
    if not sep or leaf not in _LEAVES:
        raise MappingError(f"the mapping table names adapter parameter {path} {key!r}; expected '...adapters.<leaf>.<param>'")
    return f"{module}.adapters.{name}.{_LEAVES[leaf]}.{param}", rule


def _hub_config(config: BottleneckConfig) -> dict:
    values = {field: getattr(config, field) for field in _IMPLEMENTED}
    values["leave_out"] = list(config.leave_out)
    values["reduction_factor"] = (dict(config.reduction_factor) if isinstance(config.reduction_factor, dict)
                                  else config.reduction_factor)
    return dict(sorted({**_UNSUPPORTED_DEFAULTS, **values}.items()))


def _full_config(model: nnx.Module, config, name, model_name: str | None) -> dict:
    """The library's ``build_full_config``: the method config plus the model's identity."""
    family = family_of(model)
    return {
        "config": config, "hidden_size": model.config.hidden_size, "model_class": family.tasks[model.task][1],
        "model_name": model_name, "model_type": family.model_type, "name": name, "version": FORMAT_VERSION,
    }


def save_adapterhub(model: nnx.Module, directory: str | os.PathLike, *, model_name: str | None = None) -> Path:
    """Write the model's bottleneck adapter (and trained head, if any) as an AdapterHub directory.

    Args:
      model: a model with ``apply_bottleneck`` (or ``load_adapterhub``) applied.
      directory: output directory (created).
      model_name: the base model's name or path, recorded as ``model_name``.

    Returns:
      The directory.
    """
    config = getattr(model, "peft_config", None)
    if not isinstance(config, BottleneckConfig):
        raise ValueError(f"{type(model).__name__} carries no bottleneck adapter: apply_bottleneck first")
    tensors = {}
    for path, var in param_paths(model).items():
        if ".adapters." in f".{path}." and not isinstance(var, SavedModuleParam):
            key, rule = _hub_key(model, path, config.name)
            tensors[key] = np.ascontiguousarray(rule.transform.to_hf(np.asarray(var[...], np.float32)))
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(directory / WEIGHTS_NAME))  # the library writes no metadata
    full = _full_config(model, _hub_config(config), config.name, model_name)
    (directory / CONFIG_NAME).write_text(json.dumps(full, indent=2, sort_keys=True))
    head = _head_tensors(model)
    if head:
        save_file(head, str(directory / HEAD_WEIGHTS_NAME))
        head_config = _full_config(model, None, None, model_name)
        head_config["label2id"] = _label2id(model.config)
        (directory / HEAD_CONFIG_NAME).write_text(json.dumps(head_config, indent=2, sort_keys=True))
    return directory


def _label2id(config) -> dict[str, int]:
    names = config.labels or tuple(f"LABEL_{i}" for i in range(getattr(config, "num_labels", 0)))
    return {name: i for i, name in enumerate(names)}


def _head_tensors(model: nnx.Module) -> dict[str, np.ndarray]:
    """A static head's weights: every ``modules_to_save`` parameter, under its HF key."""
    table = family_of(model).table
    out = {}
    for path, var in param_paths(model).items():
        if isinstance(var, SavedModuleParam):
            key, rule = hf_key_for(path, table)
            out[key] = np.ascontiguousarray(rule.transform.to_hf(np.asarray(var[...], np.float32)))
    return out


def read_adapterhub(directory: str | os.PathLike) -> tuple[dict, dict[str, np.ndarray], str]:
    """(adapter_config dict, tensors, weights file) of an AdapterHub directory (safetensors first)."""
    directory = Path(directory)
    config_file = directory / CONFIG_NAME
    if not config_file.is_file():
        raise FileNotFoundError(f"{config_file} not found: an AdapterHub adapter directory needs {CONFIG_NAME}")
    try:
        hub = json.loads(config_file.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{config_file} is not valid JSON: {err}") from err
    if (directory / WEIGHTS_NAME).is_file():
        weights = directory / WEIGHTS_NAME
        return hub, io._load_safetensors(weights), str(weights)
    if (directory / TORCH_WEIGHTS_NAME).is_file():
        weights = directory / TORCH_WEIGHTS_NAME
        return hub, io._load_torch_bin(weights), str(weights)
    found = sorted(p.name for p in directory.iterdir())
    raise FileNotFoundError(f"{directory} holds neither {WEIGHTS_NAME} nor {TORCH_WEIGHTS_NAME} (found {found})")


def _config_from_hub(hub: dict, model: nnx.Module, source: str) -> BottleneckConfig:
    values = hub.get("config")
    if not isinstance(values, dict):
        raise ValueError(f"{source}: 'config' must hold the adapter's configuration dict")
    if values.get("architecture") not in (None, "bottleneck"):
        raise ValueError(f"{source}: architecture={values['architecture']!r} is not supported; jaxkernel reads "
                         "bottleneck adapters (AdapterHub's seq_bn / double_seq_bn family)")
    for key, default in _UNSUPPORTED_DEFAULTS.items():
        value = values.get(key, default)
        if value != default and not (value in (None, False) and default in (None, False)):
            raise ValueError(f"{source}: {key}={value!r} is not supported by jaxkernel bottleneck adapters "
                             f"(only {default!r})")
    hidden = hub.get("hidden_size")
    if hidden is not None and hidden != model.config.hidden_size:
        raise ValueError(f"{source}: hidden_size={hidden} but the model has {model.config.hidden_size}: "
                         "this adapter was trained for a different base model")
    kwargs = {key: values[key] for key in _IMPLEMENTED if key in values}
    if isinstance(kwargs.get("scaling"), int):
        kwargs["scaling"] = float(kwargs["scaling"])
    kwargs["dropout"] = kwargs.get("dropout") or 0.0
    return BottleneckConfig(**kwargs, name=hub.get("name") or "adapter", modules_to_save=())


def load_adapterhub(model: nnx.Module, directory: str | os.PathLike, *, seed: int = 0) -> nnx.Module:
    """Apply an AdapterHub bottleneck adapter directory to ``model``, in place.

    Args:
      model: the jaxkernel BERT the adapter was trained on (any head).
      directory: written by ``adapters`` ``save_adapter`` (either weights file) or ``save_adapterhub``.
      seed: seeds the adapter dropout (weights all come from the file).

    Returns:
      ``model`` with the adapter applied and filled (and the head, if the directory has one).

    Raises:
      ValueError / MappingError: options jaxkernel does not implement, or tensors that do not fit
        the model. After an error the model may carry a partly filled adapter: reload the base.
    """
    hub, tensors, source = read_adapterhub(directory)
    config = _config_from_hub(hub, model, source)
    head_tensors = _read_head(Path(directory), model)
    if head_tensors:  # a trained static head comes back as modules_to_save, as it was saved
        config = BottleneckConfig(**{**{f: getattr(config, f) for f in config.__dataclass_fields__},
                                     "modules_to_save": None})
    apply_bottleneck(model, config, seed=seed)
    tensors = _normalise_prefix(model, family_of(model), tensors)
    for path, var in param_paths(model).items():
        if ".adapters." not in f".{path}." or isinstance(var, SavedModuleParam):
            continue
        key, rule = _hub_key(model, path, config.name)
        if key not in tensors:
            raise MappingError(f"{source} lacks {key!r} (for {path}): was the adapter trained with other "
                               "locations (mh_adapter / output_adapter / leave_out) or another name?")
        value = rule.transform.to_ours(np.asarray(tensors.pop(key)))
        if tuple(value.shape) != tuple(var.shape):
            raise MappingError(f"adapter tensor {key!r} in {source} has shape {tuple(value.shape)} after "
                               f"{rule.transform.name}; {path} expects {tuple(var.shape)}: was the adapter "
                               "trained on a different base model?")
        var[...] = np.asarray(value, var.dtype)
    if tensors:
        raise MappingError(f"{source}: {len(tensors)} tensor(s) fit no adapter of {type(model).__name__}: "
                           f"{', '.join(sorted(tensors)[:8])}")
    _fill_head(model, head_tensors, Path(directory) / HEAD_WEIGHTS_NAME)
    return model


def _read_head(directory: Path, model: nnx.Module) -> dict[str, np.ndarray]:
    if not (directory / HEAD_CONFIG_NAME).is_file() or not getattr(model, "head_modules", ()):
        return {}
    head_config = json.loads((directory / HEAD_CONFIG_NAME).read_text())
    expected = family_of(model).tasks[model.task][1]
    if head_config.get("model_class") not in (None, expected):
        raise ValueError(f"{directory / HEAD_CONFIG_NAME}: the head belongs to {head_config['model_class']}, "
                         f"the model is a {expected}: load the base model with the adapter's task")
    if (directory / HEAD_WEIGHTS_NAME).is_file():
        return io._load_safetensors(directory / HEAD_WEIGHTS_NAME)
    if (directory / TORCH_HEAD_WEIGHTS_NAME).is_file():
        return io._load_torch_bin(directory / TORCH_HEAD_WEIGHTS_NAME)
    return {}


def _fill_head(model: nnx.Module, tensors: dict[str, np.ndarray], source: Path) -> None:
    table = family_of(model).table
    for path, var in param_paths(model).items():
        if not isinstance(var, SavedModuleParam) or not tensors:
            continue
        key, rule = hf_key_for(path, table)
        if key not in tensors:
            raise MappingError(f"{source} lacks {key!r} for the head parameter {path}")
        value = rule.transform.to_ours(np.asarray(tensors.pop(key)))
        if tuple(value.shape) != tuple(var.shape):
            raise MappingError(f"head tensor {key!r} in {source} has shape {tuple(value.shape)} after "
                               f"{rule.transform.name}; {path} expects {tuple(var.shape)}: does num_labels match?")
        var[...] = np.asarray(value, var.dtype)
