"""Helpers the HF config converters of every family share (labels, refused values).

The families themselves are registered in ``jaxkernel.models.registry``.
"""

from __future__ import annotations

from typing import Any

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
