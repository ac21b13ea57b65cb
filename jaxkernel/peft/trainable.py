"""Which variables train: chosen by variable *type*, never by name.

Parameter-efficient methods re-type what they add or unfreeze as subclasses of
``TrainableParam`` (itself an ``nnx.Param``):

- ``LoraParam``         LoRA ``lora_A`` / ``lora_B`` (``jaxkernel.peft.lora``)
- ``PrefixParam``       prefix-tuning encoder weights (``jaxkernel.peft.prefix``)
- ``SavedModuleParam``  every parameter of a ``modules_to_save`` module (e.g. the
                        classifier head), trained in full and saved with the adapter

``trainable_filter(model)`` is the one filter the optimizer, train step and
sharding code use: ``TrainableParam`` once an adapter is applied, plain
``nnx.Param`` (full fine-tuning) otherwise. The frozen base is
``nnx.All(nnx.Param, nnx.Not(TrainableParam))``.

Example::

    apply_lora(model, LoraConfig(r=8, alpha=16, target_modules=["query", "value"]))
    optimizer = nnx.Optimizer(model, optax.adamw(1e-3), wrt=trainable_filter(model))
    graphdef, trainable, frozen = nnx.split(model, trainable_filter(model), ...)
    print_trainable_parameters(model)
    # trainable params: 1,234 || all params: 22,713,216 || trainable%: 0.0054
"""

from __future__ import annotations

import dataclasses
from typing import Iterable

import numpy as np
from flax import nnx


def method_config(cls: type, config):
    """``config`` as a ``cls`` (LoraConfig, PrefixConfig...): itself, or built from the
    ``peft`` section of a run config by field name, so no method's fields are copied twice."""
    if isinstance(config, cls):
        return config
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{f.name: getattr(config, f.name) for f in dataclasses.fields(config) if f.name in names})


class TrainableParam(nnx.Param):
    """Base type of every variable a PEFT method trains; the base model stays ``nnx.Param``."""


class SavedModuleParam(TrainableParam):
    """A parameter of a ``modules_to_save`` module: trained fully, exported with the adapter."""


def has_trainable_params(model: nnx.Module) -> bool:
    return any(isinstance(node, TrainableParam) for _, node in nnx.iter_graph(model))


def trainable_filter(model: nnx.Module):
    """The nnx filter selecting exactly the variables that train.

    Returns ``TrainableParam`` when a PEFT method has been applied (LoRA/prefix
    parameters plus ``modules_to_save``), else ``nnx.Param`` (everything trains).
    Use it as ``nnx.Optimizer(..., wrt=trainable_filter(model))`` or
    ``nnx.split(model, trainable_filter(model), ...)``.
    """
    return TrainableParam if has_trainable_params(model) else nnx.Param


def count_parameters(model: nnx.Module) -> tuple[int, int]:
    """(trainable, total) element counts over ``nnx.Param`` variables (shared ones counted once)."""
    trainable_type = trainable_filter(model)
    trainable = total = 0
    for _, node in nnx.iter_graph(model):
        if isinstance(node, nnx.Param):
            size = int(np.prod(node.shape))
            total += size
            if isinstance(node, trainable_type):
                trainable += size
    return trainable, total


def print_trainable_parameters(model: nnx.Module) -> str:
    """Print and return PEFT's one-line summary of trainable vs all parameters."""
    trainable, total = count_parameters(model)
    line = f"trainable params: {trainable:,d} || all params: {total:,d} || trainable%: {100 * trainable / max(total, 1):.4f}"
    print(line)
    return line


def retype_params(module: nnx.Module, new_type: type[nnx.Param], *, only: type = nnx.Param, skip: type | None = None) -> int:
    """Re-type every ``only`` variable held by ``module`` (recursively) to ``new_type``, in place.

    Values and metadata (logical axes) are kept. Returns how many were re-typed.
    """
    count = 0
    for _, node in list(nnx.iter_graph(module)):
        if not isinstance(node, nnx.Module):
            continue
        for name, value in list(vars(node).items()):
            if isinstance(value, only) and type(value) is not new_type and not (skip and isinstance(value, skip)):
                setattr(node, name, new_type(value.get_value(), **value.get_metadata()))
                count += 1
    return count


def mark_modules_to_save(model: nnx.Module, paths: Iterable[str]) -> None:
    """Make every parameter under the modules at ``paths`` trainable (``SavedModuleParam``)."""
    from jaxkernel.peft.targets import get_module

    for path in paths:
        retype_params(get_module(model, path), SavedModuleParam, skip=TrainableParam)


def unmark_trainable(model: nnx.Module) -> None:
    """Turn ``SavedModuleParam`` back into plain ``nnx.Param`` (used when unloading adapters)."""
    retype_params(model, nnx.Param, only=SavedModuleParam)
