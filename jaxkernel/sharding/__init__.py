"""Sharding across device meshes and hosts: mesh, logical->mesh rules, placement, planner."""

from jaxkernel.sharding.mesh import DistributedConfig, MeshConfig, initialize_distributed, make_mesh  # noqa: F401
from jaxkernel.models.layers import constrain  # noqa: F401
from jaxkernel.sharding.rules import PRESETS, ShardingRules, get_rules  # noqa: F401
