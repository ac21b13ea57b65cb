"""Device meshes from a small config, and multi-host start-up.

A mesh always has the axes ``("data", "fsdp", "tensor")`` (named in
``jaxkernel.sharding.rules``); a preset decides which of them parameters use.
``-1`` in the shape means "all remaining devices". ``jax.make_mesh`` orders the
devices along the physical topology on TPU, so neighbouring mesh positions are
neighbouring chips.

On more than one host, call :func:`initialize_distributed` first, in every
process, before anything else touches JAX: it is automatic on TPU VMs, and on
GPU/CPU clusters it takes the coordinator from the config or from
``JAX_COORDINATOR_ADDRESS``, ``JAX_NUM_PROCESSES`` and ``JAX_PROCESS_ID``.

Example::

    initialize_distributed(DistributedConfig())          # no-op on one host
    mesh = make_mesh(MeshConfig(shape=(1, -1, 2)))       # fsdp = devices / 2, tensor 2
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
from typing import Literal, Optional, Union

import jax
from jax.sharding import AxisType, Mesh

from jaxkernel.sharding.rules import MESH_AXES, PRESET_MESH_SHAPES

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class MeshConfig:
    """Device mesh and the logical-axis -> mesh-axis rules that shard parameters and batches.

    The one mesh config: the run config's ``mesh`` section and the Python API
    (``make_mesh(MeshConfig((1, -1, 2)))``). ``axes`` may list a subset, e.g.
    ``MeshConfig((4, 2), ("fsdp", "tensor"))``; the axes left out get size 1.
    """

    # Mesh shape over mesh.axes, one -1 allowed (= the remaining devices); None = the preset's
    # default shape (dp (-1, 1, 1), fsdp (1, -1, 1), tp (1, 1, -1), fsdp_tp (1, -1, 2)).
    shape: Optional[tuple[int, ...]] = None
    axes: Optional[tuple[str, ...]] = None  # names from data, fsdp, tensor, one per shape entry; None = all three
    # dp: replicate parameters; fsdp: shard them over the data axis; tp: tensor parallel; fsdp_tp: both.
    preset: Literal["dp", "fsdp", "tp", "fsdp_tp"] = "dp"
    # Logical axis -> mesh axis (or list of axes, or null = replicated), overriding the preset,
    # e.g. {embed: fsdp, mlp: tensor}.
    rules: dict[str, Union[str, tuple[str, ...], None]] = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        if self.preset not in PRESET_MESH_SHAPES:
            raise ValueError(f"mesh.preset={self.preset!r} is not one of {sorted(PRESET_MESH_SHAPES)}")
        if self.shape is not None:
            object.__setattr__(self, "shape", tuple(int(s) for s in self.shape))
        if self.axes is not None:
            object.__setattr__(self, "axes", tuple(self.axes))
        shape, axes = self.mesh_shape, self.mesh_axes
        if len(shape) != len(axes):
            raise ValueError(f"mesh.shape={list(shape)} has {len(shape)} entries for the {len(axes)} mesh.axes {list(axes)}")
        unknown = [a for a in axes if a not in MESH_AXES]
        if unknown or len(set(axes)) != len(axes):
            raise ValueError(f"mesh.axes={list(axes)} must be distinct names from {list(MESH_AXES)}")
        if shape.count(-1) > 1:
            raise ValueError(f"mesh.shape={list(shape)} has more than one -1; at most one axis can take 'the rest'")
        bad = [s for s in shape if s != -1 and s < 1]
        if bad:
            raise ValueError(f"mesh.shape={list(shape)} has size {bad[0]}; sizes are positive, or -1 for the rest")

    @property
    def mesh_shape(self) -> tuple[int, ...]:
        """``shape``, or the preset's default shape."""
        return self.shape if self.shape is not None else PRESET_MESH_SHAPES[self.preset]

    @property
    def mesh_axes(self) -> tuple[str, ...]:
        return self.axes if self.axes is not None else MESH_AXES

    @classmethod
    def for_preset(cls, preset: str) -> "MeshConfig":
        """The default mesh of a preset (``dp`` -> (-1, 1, 1), ``fsdp`` -> (1, -1, 1)...)."""
        if preset not in PRESET_MESH_SHAPES:
            raise ValueError(f"no default mesh for preset {preset!r}; choose one of {sorted(PRESET_MESH_SHAPES)}")
        return cls(preset=preset)

    def resolve(self, num_devices: int) -> tuple[int, ...]:
        """The concrete shape for ``num_devices`` devices (replaces -1), or a clear error."""
        shape = self.mesh_shape
        known = math.prod(s for s in shape if s != -1)
        if -1 in shape:
            if num_devices % known:
                raise ValueError(
                    f"mesh shape {shape} cannot use {num_devices} devices: the fixed axes need a multiple "
                    f"of {known}; change mesh.shape"
                )
            return tuple(num_devices // known if s == -1 else s for s in shape)
        if known != num_devices:
            raise ValueError(
                f"mesh shape {shape} needs {known} devices, found {num_devices}: "
                "set mesh.shape so the sizes multiply to the device count, or use -1 for one axis"
            )
        return shape

    def axis_sizes(self, num_devices: int) -> dict[str, int]:
        """Size of every mesh axis; axes left out of ``axes`` have size 1."""
        axes = self.mesh_axes
        sizes = dict(zip(axes, self.resolve(num_devices)))
        return {axis: sizes.get(axis, 1) for axis in axes + tuple(a for a in MESH_AXES if a not in axes)}


def parse_mesh_shape(text: str) -> tuple[int, ...]:
    """``"2,2,2"`` or ``"2x2x2"`` -> (2, 2, 2)."""
    try:
        return tuple(int(p) for p in text.replace("x", ",").split(",") if p.strip())
    except ValueError:
        raise ValueError(f"mesh shape {text!r} is not a list of integers like '1,-1,2'") from None


def make_mesh(config: MeshConfig = MeshConfig(preset="fsdp"), devices=None) -> Mesh:
    """A ``jax.sharding.Mesh`` over all (or the given) devices.

    Axis types are ``Auto``: jit's partitioner propagates shardings from the
    parameters and inputs we annotate (pjit semantics).
    """
    devices = jax.devices() if devices is None else list(devices)
    sizes = config.axis_sizes(len(devices))  # every axis of MESH_AXES, absent ones of size 1
    shape, axes = tuple(sizes.values()), tuple(sizes)
    return jax.make_mesh(shape, axes, axis_types=(AxisType.Auto,) * len(shape), devices=devices)


@dataclasses.dataclass(frozen=True)
class DistributedConfig:
    """Multi-host settings; None means "from the environment" (or auto-detect on TPU)."""

    coordinator_address: str | None = None  # "10.0.0.1:1234"
    num_processes: int | None = None
    process_id: int | None = None
    local_device_ids: tuple[int, ...] | None = None


def _env_int(name: str) -> int | None:
    value = os.environ.get(name)
    if value is None or value == "":
        return None
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name}={value!r} is not an integer") from None


def initialize_distributed(config: DistributedConfig = DistributedConfig()) -> bool:
    """Start JAX's multi-controller runtime when there is more than one process.

    Must run before any other JAX call. On a TPU VM with no coordinator set,
    ``jax.distributed.initialize()`` discovers the pod itself. On CPU, gloo
    collectives are switched on so cross-process all-reduces work.

    Returns:
      True if the runtime was started, False for a single process (nothing to do).
    """
    address = config.coordinator_address or os.environ.get("JAX_COORDINATOR_ADDRESS")
    num = config.num_processes if config.num_processes is not None else _env_int("JAX_NUM_PROCESSES")
    pid = config.process_id if config.process_id is not None else _env_int("JAX_PROCESS_ID")
    on_tpu_vm = os.environ.get("TPU_WORKER_HOSTNAMES") is not None or os.environ.get("TPU_ACCELERATOR_TYPE") is not None
    if address is None and num is None and not on_tpu_vm:
        return False
    if num == 1:
        return False
    if address is not None and (num is None or pid is None):
        raise ValueError(
            f"coordinator {address} given without num_processes/process_id ({num}/{pid}): set both "
            "(or JAX_NUM_PROCESSES and JAX_PROCESS_ID) in every process"
        )
    if pid is not None and num is not None and not 0 <= pid < num:
        raise ValueError(f"process_id {pid} is outside 0..{num - 1} for num_processes={num}")
    if "cpu" in (os.environ.get("JAX_PLATFORMS") or "").split(","):
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
        coordinator_address=address,
        num_processes=num,
        process_id=pid,
        local_device_ids=list(config.local_device_ids) if config.local_device_ids is not None else None,
    )
    log.info("process %d of %d: %d local / %d global devices",
             jax.process_index(), jax.process_count(), jax.local_device_count(), jax.device_count())
    return True
