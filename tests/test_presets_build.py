"""Every YAML preset in configs/ parses and builds its model (abstractly: nothing allocated)."""

import dataclasses
import os
from pathlib import Path

import jax
import pytest
from flax import nnx

from jaxkernel.config import load_config, resolve_path
from jaxkernel.models.registry import config_for_size, known_sizes
from jaxkernel.hf.pretrained import config_from_pretrained
from jaxkernel.peft import count_parameters
from jaxkernel.quant.transform import quantized_paths
from jaxkernel.train.build import adapt_model

PRESETS = sorted(str(p) for p in (Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))


@pytest.mark.parametrize("preset", PRESETS, ids=[os.path.basename(p) for p in PRESETS])
def test_preset_builds_abstractly(preset):
    config = load_config(preset)
    source = resolve_path(config.model.path)
    num_labels = len(config.model.labels) if config.model.labels else 7 if "token" in config.model.task else 2
    if os.path.isdir(source):
        family, model_config, _, _ = config_from_pretrained(source, num_labels=num_labels)
    else:  # a hub id (needs internet to download): check with the known architecture instead
        assert config.model.path in known_sizes(), f"{preset}: unknown hub model {config.model.path}"
        family, model_config = config_for_size(config.model.path, num_labels=num_labels)
    cls, _ = family.tasks[config.model.task]
    model = nnx.eval_shape(lambda: adapt_model(cls(model_config, rngs=nnx.Rngs(0)), config))
    leaves = jax.tree.leaves(nnx.state(model))
    assert leaves and all(isinstance(x, jax.ShapeDtypeStruct) for x in leaves if hasattr(x, "shape"))
    trainable, total = count_parameters(model)
    if config.peft.method == "none":
        assert trainable == total
    else:
        assert 0 < trainable < 0.05 * total
    assert bool(quantized_paths(model)) == (config.quant.method == "int8")
