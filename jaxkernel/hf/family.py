"""What jaxkernel needs to know about one model type to read and write it as HF.

Each supported ``model_type`` (``bert``, ``gpt2``) registers one ``ModelFamily``:
its config converters, the mapping table, and the task -> (module class, HF
architecture name) pairs. ``jaxkernel.hf.pretrained`` is the only user.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

from flax import nnx

from jaxkernel.hf.mapping import Rule

FAMILIES: dict[str, "ModelFamily"] = {}


@dataclasses.dataclass(frozen=True)
class ModelFamily:
    model_type: str
    config_class: type
    tasks: dict[str, tuple[type[nnx.Module], str]]  # task -> (module class, HF architecture)
    base_prefix: str  # attribute holding the bare model in task models ("bert", "transformer")
    table: list[Rule]
    ignore: tuple[str, ...]  # HF keys that are buffers or tied copies
    config_from_hf: Callable[[dict, dict[str, Any]], Any]  # (hf dict, overrides) -> config
    config_to_hf: Callable[[Any], dict]

    def task_for_architecture(self, architectures: list[str] | None) -> str:
        by_arch = {arch: task for task, (_, arch) in self.tasks.items()}
        for arch in architectures or []:
            if arch in by_arch:
                return by_arch[arch]
        return "feature-extraction"

    def check_task(self, task: str) -> None:
        if task not in self.tasks:
            raise ValueError(f"task {task!r} is not available for {self.model_type}; choose one of {sorted(self.tasks)}")


def register(family: ModelFamily) -> ModelFamily:
    FAMILIES[family.model_type] = family
    return family


def family_for(model_type: str | None, source: str) -> ModelFamily:
    import jaxkernel.hf.bert  # noqa: F401  (registers)
    import jaxkernel.hf.gpt2  # noqa: F401

    if model_type not in FAMILIES:
        raise ValueError(
            f"{source}: model_type {model_type!r} is not supported; jaxkernel supports {sorted(FAMILIES)}"
        )
    return FAMILIES[model_type]


def family_of(model: nnx.Module) -> ModelFamily:
    import jaxkernel.hf.bert  # noqa: F401
    import jaxkernel.hf.gpt2  # noqa: F401

    for family in FAMILIES.values():
        if isinstance(getattr(model, "config", None), family.config_class):
            return family
    raise TypeError(f"{type(model).__name__} is not a jaxkernel BERT or GPT-2 model")


def labels_from_hf(hf: dict, num_labels: int | None, labels: tuple[str, ...] | None) -> tuple[int, tuple[str, ...] | None]:
    """Resolve num_labels / label names from user overrides first, then config.json."""
    if labels is not None:
        labels = tuple(labels)
        if num_labels is not None and num_labels != len(labels):
            raise ValueError(f"num_labels={num_labels} but {len(labels)} label names were given")
        return len(labels), labels
    id2label = hf.get("id2label")
    if num_labels is None:
        if id2label:
            num_labels = len(id2label)
        else:
            num_labels = int(hf.get("num_labels", 2))
    if id2label and len(id2label) == num_labels:
        names = tuple(str(id2label[k]) for k in sorted(id2label, key=int))
        if names != tuple(f"LABEL_{i}" for i in range(num_labels)):
            return num_labels, names
    return num_labels, None


def labels_to_hf(num_labels: int, labels: tuple[str, ...] | None) -> dict:
    names = labels or tuple(f"LABEL_{i}" for i in range(num_labels))
    return {
        "id2label": {str(i): name for i, name in enumerate(names)},
        "label2id": {name: i for i, name in enumerate(names)},
    }


def reject_values(hf: dict, source: str, required: dict[str, Any]) -> None:
    """Raise for HF config keys whose value selects a feature we do not implement."""
    for key, allowed in required.items():
        if key in hf and hf[key] is not None and hf[key] != allowed:
            raise ValueError(
                f"{source}: {key}={hf[key]!r} is not supported by jaxkernel (only {allowed!r}); "
                "this checkpoint needs a feature jaxkernel does not implement"
            )
