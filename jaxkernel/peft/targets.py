"""PEFT-compatible module targeting: the same config strings select the same layers.

Module paths are dotted attribute paths from the model root, identical to the
Hugging Face module names (``bert.encoder.layer.0.attention.self.query``,
``transformer.h.3.attn.c_attn``). The rules are PEFT's:

- a **string** is a regular expression that must match the *whole* path
  (``re.fullmatch``), e.g. ``r".*\\.(query|value)"``;
- a **list** of names matches a path equal to a name or ending in ``"." + name``,
  e.g. ``["query", "value"]`` or ``["attention.output.dense"]``.

Example::

    paths = match_modules(model, ["query", "value"], kind="LoRA target_modules")
"""

from __future__ import annotations

import difflib
import re
from typing import Iterable, Sequence

from flax import nnx

Targets = str | Sequence[str]


def module_paths(model: nnx.Module) -> dict[str, nnx.Module]:
    """Dotted path -> module for every sub-module (the root itself excluded), in graph order."""
    return {
        ".".join(str(part) for part in path): node
        for path, node in nnx.iter_graph(model)
        if isinstance(node, nnx.Module) and path
    }


def get_module(model: nnx.Module, path: str) -> nnx.Module:
    node = model
    for part in path.split("."):
        node = node[int(part)] if part.isdigit() else getattr(node, part)
    return node


def set_module(model: nnx.Module, path: str, value: nnx.Module) -> None:
    """Replace the sub-module at ``path`` (graph surgery)."""
    parent_path, _, name = path.rpartition(".")
    parent = get_module(model, parent_path) if parent_path else model
    if name.isdigit():
        parent[int(name)] = value
    else:
        setattr(parent, name, value)


def path_matches(path: str, targets: Targets) -> bool:
    """PEFT's rule: regex string -> fullmatch; list -> exact name or ``.name`` suffix."""
    if isinstance(targets, str):
        return re.fullmatch(targets, path) is not None
    return any(path == name or path.endswith("." + name) for name in targets)


def check_targets(targets: Targets, field: str) -> Targets:
    """Validate a target spec early: a compilable regex, or a non-empty list of names."""
    if isinstance(targets, str):
        try:
            re.compile(targets)
        except re.error as err:
            raise ValueError(f"{field}={targets!r} is not a valid regular expression: {err}") from err
        return targets
    targets = tuple(targets)
    if not all(isinstance(name, str) and name for name in targets):
        raise ValueError(f"{field} must be a regex string or a list of module names, got {targets!r}")
    return targets


def match_modules(
    model: nnx.Module,
    targets: Targets,
    *,
    kind: str,
    candidates: Iterable[str] | None = None,
) -> list[str]:
    """Paths of the sub-modules that ``targets`` selects; zero matches is an error.

    Args:
      model: the model to search.
      targets: regex string or list of names (PEFT rules, see module doc).
      kind: what is being matched, for the error message ("LoRA target_modules").
      candidates: paths the error message should offer (default: all modules).

    Raises:
      ValueError: nothing matched, or an entry of a name list matched nothing (a typo would
        otherwise silently leave that layer untrained); the message names the closest names.
    """
    paths = module_paths(model)
    found = [path for path in paths if path_matches(path, targets)]
    offer = list(candidates) if candidates is not None else list(paths)
    if not found:
        raise ValueError(no_match_message(model, targets, kind, offer))
    if not isinstance(targets, str):
        # A misspelt entry next to a correct one would otherwise train (and export) only the correct one.
        unmatched = [name for name in targets if not any(path_matches(path, (name,)) for path in paths)]
        if unmatched:
            raise ValueError(unmatched_names_message(targets, unmatched, kind, offer))
    return found


def unmatched_names_message(targets: Sequence[str], unmatched: list[str], kind: str, candidates: list[str]) -> str:
    """Names of a target list that select nothing, each with the closest module names."""
    names = sorted({path.rsplit(".", 1)[-1] for path in candidates if not path.rsplit(".", 1)[-1].isdigit()})
    details = []
    for name in unmatched:
        close = difflib.get_close_matches(name.rsplit(".", 1)[-1], names, n=3, cutoff=0.5)
        details.append(f"{name!r} (closest: {', '.join(close)})" if close else repr(name))
    return (
        f"{kind}={list(targets)!r}: {'entry' if len(unmatched) == 1 else 'entries'} {', '.join(details)} "
        f"matched no module; every entry must equal a module path or be its dotted suffix. Fix or remove "
        f"{'it' if len(unmatched) == 1 else 'them'}. Candidate names: {', '.join(names)}"
    )


def no_match_message(model: nnx.Module, targets: Targets, kind: str, candidates: list[str]) -> str:
    names = sorted({path.rsplit(".", 1)[-1] for path in candidates if not path.rsplit(".", 1)[-1].isdigit()})
    examples = candidates[:4]
    how = (
        "a string is a regex that must match the whole path"
        if isinstance(targets, str)
        else "a list entry must equal a path or be its dotted suffix"
    )
    shown = targets if isinstance(targets, str) else list(targets)
    return (
        f"{kind}={shown!r} matched no module of {type(model).__name__} ({how}). "
        f"Candidate names: {', '.join(names)}; full paths look like: {', '.join(examples)}"
    )
