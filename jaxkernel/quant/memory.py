"""Parameter memory accounting: bytes by dtype and by module.

Counts every variable of the model's state except RNG state (``nnx.Param`` and
its subclasses such as LoRA parameters, ``Int8Weight``, ``QuantScale``). Works
on concrete or abstract (``nnx.eval_shape``) models: only shapes and dtypes are read.

Example::

    report = param_bytes(model)
    print(report.table(depth=3))            # rows grouped by the first 3 path parts
    report.by_dtype                         # {"float32": 45_000_000, "int8": 10_600_000}
    report.bytes_under(quantized_paths(model))
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from typing import Iterable

import numpy as np
from flax import nnx


@dataclasses.dataclass(frozen=True)
class MemoryReport:
    """``by_variable``: dotted path -> (dtype name, shape, bytes); the rest is derived."""

    by_variable: dict[str, tuple[str, tuple[int, ...], int]]

    @property
    def total(self) -> int:
        return sum(b for _, _, b in self.by_variable.values())

    @property
    def by_dtype(self) -> dict[str, int]:
        out: dict[str, int] = defaultdict(int)
        for dtype, _, nbytes in self.by_variable.values():
            out[dtype] += nbytes
        return dict(sorted(out.items()))

    @property
    def by_module(self) -> dict[str, int]:
        """Module path (the variable's path minus its name) -> bytes it owns directly."""
        out: dict[str, int] = defaultdict(int)
        for path, (_, _, nbytes) in self.by_variable.items():
            out[path.rpartition(".")[0]] += nbytes
        return dict(out)

    def bytes_under(self, module_paths: Iterable[str]) -> int:
        """Bytes of the variables inside any of ``module_paths`` (each a dotted prefix)."""
        prefixes = tuple(p + "." for p in module_paths)
        return sum(b for path, (_, _, b) in self.by_variable.items() if path.startswith(prefixes))

    def table(self, depth: int = 2) -> str:
        """A text table: one row per module prefix of ``depth`` parts, per-dtype columns."""
        dtypes = list(self.by_dtype)
        rows: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
        for path, (dtype, _, nbytes) in self.by_variable.items():
            parts = path.split(".")[:-1]
            rows[".".join(parts[:depth]) or "(root)"][dtype] += nbytes
        width = max([len("module")] + [len(k) for k in rows])
        header = f"{'module':<{width}}" + "".join(f"{d:>14}" for d in dtypes) + f"{'total':>14}"
        lines = [header, "-" * len(header)]
        for name in sorted(rows):
            cells = rows[name]
            lines.append(
                f"{name:<{width}}" + "".join(f"{format_bytes(cells.get(d, 0)):>14}" for d in dtypes)
                + f"{format_bytes(sum(cells.values())):>14}"
            )
        lines.append("-" * len(header))
        lines.append(
            f"{'total':<{width}}" + "".join(f"{format_bytes(self.by_dtype[d]):>14}" for d in dtypes)
            + f"{format_bytes(self.total):>14}"
        )
        return "\n".join(lines)


def format_bytes(n: int) -> str:
    for unit, factor in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= factor:
            return f"{n / factor:.2f} {unit}"
    return f"{n} B"


def param_bytes(model: nnx.Module) -> MemoryReport:
    """Bytes of every parameter-like variable of ``model`` (RNG state excluded)."""
    state = nnx.state(model, nnx.Not(nnx.RngState))
    by_variable = {}
    for path, var in nnx.to_flat_state(state):
        value = var.get_value() if hasattr(var, "get_value") else var.value
        if not hasattr(value, "shape") or not hasattr(value, "dtype"):
            continue
        dtype = np.dtype(value.dtype)
        shape = tuple(int(d) for d in value.shape)
        by_variable[".".join(str(p) for p in path)] = (dtype.name, shape, int(np.prod(shape)) * dtype.itemsize)
    return MemoryReport(by_variable)
