"""One declarative table per model, run in both directions.

A table is a list of ``Rule(hf, ours, transform)``. Templates use ``{name}``
placeholders that match any run of characters (dots included), so
``Rule("{p}.weight", "{p}.kernel", TRANSPOSE)`` maps every torch ``nn.Linear``.
The first rule whose *our* template matches a parameter path wins.

``import_tensors`` fills a model from HF tensors and ``export_tensors`` produces
them; both check that every tensor is used exactly once, so a table that drops or
duplicates a weight fails loudly instead of giving wrong numbers. A checkpoint
tensor that no rule consumes is an error naming it, unless it is a known buffer /
tied copy (``ignore``) or the weights of another head (``other_heads`` says which).

Example::

    TABLE = [Rule("{p}.LayerNorm.weight", "{p}.LayerNorm.scale"),
             Rule("{p}.weight", "{p}.kernel", TRANSPOSE)]
    report = import_tensors(model, tensors, TABLE, source="model.safetensors")
"""

from __future__ import annotations

import dataclasses
import re
from typing import Callable, Iterable

import numpy as np
from flax import nnx


@dataclasses.dataclass(frozen=True)
class Transform:
    """An invertible array transform: ``to_ours`` on import, ``to_hf`` on export.

    ``hf_index`` maps an index (a tuple of slices) into *our* array to the index of the
    HF tensor that holds those elements, so a sliced load reads only what a device
    needs: ``to_ours(hf[hf_index(i)]) == to_ours(hf)[i]``. None: slices need the whole tensor.
    """

    name: str
    to_ours: Callable[[np.ndarray], np.ndarray]
    to_hf: Callable[[np.ndarray], np.ndarray]
    hf_index: Callable[[tuple], tuple] | None = None


IDENTITY = Transform("identity", lambda a: a, lambda a: a, lambda index: index)
# torch Linear (out, in) <-> (in, out); our rows are its columns, so a slice reverses too.
TRANSPOSE = Transform("transpose", lambda a: a.T, lambda a: a.T, lambda index: tuple(reversed(index)))


class TransformedTensor:
    """A checkpoint tensor seen through a :class:`Transform`, read whole or one slice at a time.

    ``tensor`` is a numpy array or a lazy source with ``shape``, ``dtype`` and
    ``read(index=...)`` (``jaxkernel.hf.io.open_weights``): then a slice reads only
    its bytes from disk (where the transform has an ``hf_index``).
    """

    def __init__(self, tensor, transform: Transform, dtype=None):
        if not hasattr(tensor, "read"):
            tensor = np.asarray(tensor)
        self.tensor, self.transform = tensor, transform
        self.dtype = np.dtype(dtype if dtype is not None else tensor.dtype)
        # the transform applied to a zero-byte stand-in of the right shape gives our shape
        self.shape = tuple(transform.to_ours(np.broadcast_to(np.zeros((), np.int8), tuple(tensor.shape))).shape)

    def _read_hf(self, index=Ellipsis) -> np.ndarray:
        if hasattr(self.tensor, "read"):
            return self.tensor.read(index)
        return np.asarray(self.tensor)[index]

    def read(self, index=Ellipsis) -> np.ndarray:
        """Our-layout elements at ``index`` (a tuple of slices; ``...`` = everything)."""
        if index is Ellipsis or not self.shape:
            value = self.transform.to_ours(self._read_hf())
        elif self.transform.hf_index is None:
            value = self.transform.to_ours(self._read_hf())[index]
        else:
            value = self.transform.to_ours(self._read_hf(tuple(self.transform.hf_index(tuple(index)))))
        return np.asarray(value, dtype=self.dtype)

    def __array__(self, dtype=None, copy=None):
        value = self.read()
        return value if dtype is None else value.astype(dtype)


def _template_regex(template: str) -> re.Pattern:
    parts = re.split(r"(\{\w+\})", template)
    regex = "".join(f"(?P<{p[1:-1]}>.*?)" if p.startswith("{") else re.escape(p) for p in parts)
    return re.compile(regex)


@dataclasses.dataclass(frozen=True)
class Rule:
    hf: str
    ours: str
    transform: Transform = IDENTITY

    def match_ours(self, path: str) -> str | None:
        """The HF key for our ``path``, or None if this rule does not apply."""
        m = _template_regex(self.ours).fullmatch(path)
        return self.hf.format(**m.groupdict()) if m else None

    def match_hf(self, key: str) -> str | None:
        m = _template_regex(self.hf).fullmatch(key)
        return self.ours.format(**m.groupdict()) if m else None


class MappingError(ValueError):
    """A checkpoint does not fit the model: names the tensor, file and expectation."""


@dataclasses.dataclass
class ImportReport:
    """What an import did: ``other_heads`` (HF key -> which head's weights it is, left unused)
    and ``initialized`` params (not in the checkpoint) are reported to the user."""

    loaded: list[str]
    other_heads: dict[str, str]
    initialized: list[str]


def param_paths(model: nnx.Module) -> dict[str, nnx.Variable]:
    """Dotted path -> Param variable for every parameter of ``model``."""
    return {
        ".".join(str(part) for part in path): var
        for path, var in nnx.iter_graph(model)
        if isinstance(var, nnx.Param)
    }


def hf_key_for(path: str, table: Iterable[Rule]) -> tuple[str, Rule]:
    for rule in table:
        key = rule.match_ours(path)
        if key is not None:
            return key, rule
    raise MappingError(f"no mapping rule covers parameter {path!r}; add a Rule to the model's table")


def import_tensors(
    model: nnx.Module,
    tensors: dict[str, np.ndarray],
    table: list[Rule],
    *,
    source: str,
    may_initialize: tuple[str, ...] = (),
    ignore: tuple[str, ...] = (),
    other_heads: Callable[[list[str]], dict[str, str]] | None = None,
) -> ImportReport:
    """Copy HF ``tensors`` into ``model`` in place, through ``table``.

    Args:
      model: the model to fill; its parameter shapes are the expectation.
      tensors: HF key -> array (already prefix-normalised to the model).
      table: the model's mapping rules.
      source: file name used in error messages.
      may_initialize: path prefixes (task heads) that may be missing from the
        checkpoint; they keep their fresh initialisation and are reported.
      ignore: regexes of HF keys that are known buffers or tied copies.
      other_heads: given the tensors nothing consumed (and not ignored), says which of them
        are another head's weights (key -> which head); those are left unused.

    Raises:
      MappingError: a parameter has no tensor, a tensor has the wrong shape, or a tensor
        is neither consumed, ignored nor another head's weights.
    """
    used: set[str] = set()
    loaded, initialized, missing = [], [], []
    for path, var in param_paths(model).items():
        key, rule = hf_key_for(path, table)
        if key not in tensors:
            if path.startswith(may_initialize) and may_initialize:
                initialized.append(path)
                continue
            missing.append(f"{key} (for {path})")
            continue
        if key in used:
            raise MappingError(f"tensor {key!r} in {source} would be used twice (second time for {path})")
        value = TransformedTensor(tensors[key], rule.transform, var.dtype)
        expected = tuple(var.shape)
        if value.shape != expected:
            raise MappingError(
                f"tensor {key!r} in {source} has shape {tuple(tensors[key].shape)}; "
                f"parameter {path} expects {expected} after {rule.transform.name}: "
                "does config.json match the weights?"
            )
        # A placement slot (jaxkernel.sharding.placement) keeps the lazy tensor and later reads
        # only its devices' slices; a concrete model takes the whole array now.
        var[...] = value if getattr(var.get_value(), "takes_lazy", False) else value.read()
        used.add(key)
        loaded.append(path)
    if missing:
        raise MappingError(
            f"{source} lacks {len(missing)} tensor(s) the model needs: {', '.join(missing[:8])}"
            + (" ..." if len(missing) > 8 else "")
        )
    ignored = re.compile("|".join(ignore)) if ignore else None
    unused = sorted(k for k in tensors if k not in used and not (ignored and ignored.search(k)))
    heads = other_heads(unused) if (other_heads and unused) else {}
    unknown = [k for k in unused if k not in heads]
    if unknown:
        raise MappingError(
            f"{source} holds {len(unknown)} tensor(s) that no rule of the model's table consumes: "
            f"{', '.join(unknown[:8])}" + (" ..." if len(unknown) > 8 else "")
            + "; they are neither known buffers nor another head's weights, so loading without them "
            "could compute something else than the checkpoint: is it another architecture or variant?"
        )
    return ImportReport(loaded=loaded, other_heads=heads, initialized=initialized)


def export_tensors(model: nnx.Module, table: list[Rule]) -> dict[str, np.ndarray]:
    """HF key -> contiguous numpy array for every parameter, each key exactly once."""
    out: dict[str, np.ndarray] = {}
    for path, var in param_paths(model).items():
        key, rule = hf_key_for(path, table)
        if key in out:
            raise MappingError(f"two parameters map to HF key {key!r} (second: {path}); the table is ambiguous")
        out[key] = np.ascontiguousarray(rule.transform.to_hf(np.asarray(var[...])))
    return out
