"""int8 (weight-only and W8A8) RoBERTa / XLM-R with LoRA on top: default targets from the registry, runs close to float."""

import numpy as np
import pytest
from flax import nnx

from jaxkernel.hf.roberta import ROBERTA_FAMILY, XLM_ROBERTA_FAMILY
from jaxkernel.peft import LoraConfig, apply_lora, lora_layers, trainable_filter
from jaxkernel.peft.trainable import SavedModuleParam
from jaxkernel.quant.int8 import Int8Linear
from jaxkernel.quant.transform import quantize_model, quantized_paths
from roberta_tiny import ROBERTA_CONFIGS, first_config, roberta_batch


@pytest.mark.parametrize("family", [ROBERTA_FAMILY, XLM_ROBERTA_FAMILY], ids=lambda f: f.model_type)
@pytest.mark.parametrize("mode", ["weight_only", "w8a8"])
@pytest.mark.parametrize("task", ["sequence-classification", "masked-lm"])
def test_int8_with_lora_builds_and_runs(family, mode, task):
    name = first_config(family.model_type)
    config = family.config(**ROBERTA_CONFIGS[family.model_type][name], num_labels=3)
    model = family.build(task, config, seed=1)
    ids, mask = roberta_batch(family.model_type, name)
    reference = np.asarray(model(ids, mask))

    quantize_model(model, mode=mode)
    paths = quantized_paths(model)
    per_layer = ("attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense",
                 "intermediate.dense", "output.dense")
    assert sorted(paths) == sorted(f"roberta.encoder.layer.{i}.{m}" for i in range(config.num_hidden_layers)
                                   for m in per_layer)  # heads, embeddings and pooler stay float

    apply_lora(model, LoraConfig(r=2, alpha=4))  # registry default: query, value
    assert sorted(lora_layers(model)) == sorted(f"roberta.encoder.layer.{i}.attention.self.{m}"
                                                for i in range(config.num_hidden_layers) for m in ("query", "value"))
    assert isinstance(model.roberta.encoder.layer[0].attention.self.query.base_layer, Int8Linear)
    out = np.asarray(model(ids, mask))
    assert out.shape == reference.shape and np.isfinite(out).all()
    error = np.abs(out - reference).max() / np.abs(reference).max()
    print(f"{family.model_type} {task} {mode}: int8 relative max error {error:.2e}")
    assert error < 0.05
    saved = {".".join(map(str, p)) for p, v in nnx.iter_graph(model) if isinstance(v, SavedModuleParam)}
    if task == "sequence-classification":
        assert saved == {"classifier.dense.kernel", "classifier.dense.bias", "classifier.out_proj.kernel",
                         "classifier.out_proj.bias"}
    graphdef, trainable, frozen = nnx.split(model, trainable_filter(model), ...)
    assert nnx.merge(graphdef, trainable, frozen)(ids, mask).shape == reference.shape
