"""Abstract models of well-known checkpoint sizes, for shapes and planning.

``nnx.eval_shape`` builds a model of ``ShapeDtypeStruct`` leaves: no memory is
allocated, so bert-large, gpt2-xl or Llama-3-8B can be inspected (and planned
for) anywhere. The sizes themselves are declared by each family in the registry.

Example::

    model = abstract_model("gpt2-xl")
    count_params(model)      # 1_557_611_200
"""

from __future__ import annotations

import math

from flax import nnx

from jaxkernel.models.registry import config_for_size, family_of_config


def abstract_model(config, task: str = "feature-extraction") -> nnx.Module:
    """The model with ``jax.ShapeDtypeStruct`` parameters (nothing allocated).

    ``config`` is a family config or the name of a known size (``"gpt2-xl"``).
    """
    family, config = config_for_size(config) if isinstance(config, str) else (family_of_config(config), config)
    family.check_task(task)
    return nnx.eval_shape(lambda: family.build(task, config))


def count_params(model: nnx.Module) -> int:
    """Number of scalar parameters (works on abstract and concrete models)."""
    return sum(math.prod(v.shape) for v in nnx.state(model, nnx.Param).flat_state().leaves
               if hasattr(v, "shape"))
