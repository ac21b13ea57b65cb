"""The one registry of model families: everything jaxkernel knows about BERT, GPT-2, Llama...

A family is registered once, by its HF table file (``jaxkernel/hf/<family>.py``),
next to its model file. Every other package — HF import/export, PEFT, int8,
sharding, the planner, generation, the trainer — asks this registry instead of
naming a family or sniffing a config class. Adding a family is its model file,
its table file and one line in ``FAMILY_MODULES``.

Example::

    family = family_of(model)                 # by the model's config
    family.dims(model.config).kv_heads        # sizes without knowing field names
    family.base_model(model)                  # the bare encoder/decoder inside a head
    family_for("llama", "config.json")        # by HF model_type
"""

from __future__ import annotations

import dataclasses
import importlib
import re
from typing import Any, Callable

from flax import nnx

# One registration line per table module; importing it calls ``register``.
FAMILY_MODULES = (
    "jaxkernel.hf.bert",
    "jaxkernel.hf.gpt2",
    "jaxkernel.hf.llama",
    "jaxkernel.hf.roberta",
)

FAMILIES: dict[str, "ModelFamily"] = {}


@dataclasses.dataclass(frozen=True)
class ModelDims:
    """Sizes of an architecture, under one set of names for every family."""

    width: int
    heads: int
    kv_heads: int
    head_dim: int
    layers: int
    positions: int  # longest sequence the position scheme allows
    vocab: int
    intermediate: int


@dataclasses.dataclass(frozen=True)
class ModelFamily:
    """What the rest of jaxkernel may know about one HF ``model_type``.

    Attributes:
      model_type: HF ``config.json`` ``model_type`` ("bert", "gpt2", "llama"...).
      config_class: our frozen config dataclass. Several model types may share
        one (Llama, Mistral, Qwen2): the config then carries ``model_type``.
      tasks: task -> (module class, HF architecture name).
      base_prefix: attribute holding the bare model inside task models.
      layers_path: dotted path of the layer list inside the bare model.
      dims: config -> ModelDims.
      lora_targets: PEFT's default LoRA ``target_modules`` for this model type.
      table / ignore: HF mapping rules and the HF keys that are buffers or tied copies.
      config_from_hf / config_to_hf: converters between config.json dicts and configs.
      known_sizes: name -> config kwargs of well-known checkpoints (abstract shapes, planner).
      causal: a decoder (causal LM, KV cache, left padding) rather than an encoder.
      extra: family-specific facts other packages may ask for by name
        (e.g. "ia3_targets"); keeps this class closed to edits when methods grow.
    """

    model_type: str
    config_class: type
    tasks: dict[str, tuple[type[nnx.Module], str]]
    base_prefix: str
    layers_path: str
    dims: Callable[[Any], ModelDims]
    lora_targets: tuple[str, ...]
    table: list
    ignore: tuple[str, ...]
    config_from_hf: Callable[[dict, dict[str, Any]], Any]
    config_to_hf: Callable[[Any], dict]
    known_sizes: dict[str, dict] = dataclasses.field(default_factory=dict)
    causal: bool = False
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def int8_targets(self) -> str:
        """Regex for the default int8 targets: every Linear inside the layer stack."""
        return rf"(.*\.)?{re.escape(self.layers_path)}\.\d+\..*"

    def task_for_architecture(self, architectures: list[str] | None) -> str:
        by_arch = {arch: task for task, (_, arch) in self.tasks.items()}
        for arch in architectures or []:
            if arch in by_arch:
                return by_arch[arch]
        return "causal-lm" if self.causal and "causal-lm" in self.tasks else "feature-extraction"

    def check_task(self, task: str) -> None:
        if task not in self.tasks:
            raise ValueError(f"task {task!r} is not available for {self.model_type}; choose one of {sorted(self.tasks)}")

    def build(self, task: str, config, *, seed: int = 0) -> nnx.Module:
        """A randomly initialised ``task`` model of this family."""
        self.check_task(task)
        return self.tasks[task][0](config, rngs=nnx.Rngs(seed))

    def config(self, **values):
        """A config of this family from HF-named fields (``model_type`` filled in when it has one)."""
        if "model_type" in {f.name for f in dataclasses.fields(self.config_class)}:
            values.setdefault("model_type", self.model_type)
        return self.config_class(**values)

    def base_model(self, model: nnx.Module) -> nnx.Module:
        """The bare encoder/decoder inside a task model (or the model itself)."""
        base = getattr(model, self.base_prefix, None)
        if base is not None and isinstance(base, nnx.Module):
            return base
        if type(model) is self.tasks["feature-extraction"][0]:
            return model
        raise TypeError(f"{type(model).__name__} holds no {self.model_type} base model at .{self.base_prefix}")

    def layers(self, model: nnx.Module) -> list[nnx.Module]:
        """The transformer layers, in order."""
        node = self.base_model(model)
        for name in self.layers_path.split("."):
            node = getattr(node, name)
        return list(node)


def register(family: ModelFamily) -> ModelFamily:
    if family.model_type in FAMILIES and FAMILIES[family.model_type] is not family:
        raise ValueError(f"model_type {family.model_type!r} is registered twice")
    FAMILIES[family.model_type] = family
    return family


def families() -> dict[str, ModelFamily]:
    """Every registered family by model_type (imports the table modules on first use)."""
    for module in FAMILY_MODULES:
        importlib.import_module(module)
    return FAMILIES


def family_for(model_type: str | None, source: str) -> ModelFamily:
    """The family of an HF ``model_type``; ``source`` names the file for the error."""
    known = families()
    if model_type not in known:
        raise ValueError(
            f"{source}: model_type {model_type!r} is not supported; jaxkernel supports {sorted(known)}"
        )
    return known[model_type]


def family_of_config(config) -> ModelFamily:
    matches = [f for f in families().values() if isinstance(config, f.config_class)]
    if len(matches) > 1:
        model_type = getattr(config, "model_type", None)
        matches = [f for f in matches if f.model_type == model_type]
    if len(matches) != 1:
        raise TypeError(
            f"{type(config).__name__} is not the config of a registered jaxkernel model family "
            f"({', '.join(sorted(families()))})"
        )
    return matches[0]


def family_of(model: nnx.Module) -> ModelFamily:
    """The family of a jaxkernel model (any head, abstract or concrete)."""
    config = getattr(model, "config", None)
    if config is None:
        raise TypeError(f"{type(model).__name__} is not a jaxkernel model (it has no .config)")
    return family_of_config(config)


def known_sizes() -> dict[str, tuple[ModelFamily, dict]]:
    """Every well-known checkpoint size: name -> (family, config kwargs)."""
    sizes = {}
    for family in families().values():
        for name, values in family.known_sizes.items():
            sizes[name] = (family, values)
    return sizes


def config_for_size(name: str, **overrides):
    """(family, config) of a known size by name (``"gpt2-xl"``, ``"llama-3-8b"``...)."""
    sizes = known_sizes()
    if name not in sizes:
        raise ValueError(f"unknown model size {name!r}; known: {sorted(sizes)}")
    family, values = sizes[name]
    return family, family.config(**{**values, **{k: v for k, v in overrides.items() if v is not None}})
