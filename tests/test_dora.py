"""DoRA (``peft.method=lora``, ``use_dora=true``): PEFT's math and files, both ways, exact merge."""

import json

import numpy as np
import peft
import pytest
import torch
from flax import nnx
from safetensors.numpy import load_file

import jaxkernel
from jaxkernel.hf.peft_format import ADAPTER_CONFIG, ADAPTER_WEIGHTS
from jaxkernel.models.bert import BERT_TASKS
from jaxkernel.peft import DoraLinear, LoraConfig, LoraParam, apply_lora, lora_layers, merge_lora, unmerge_lora
from peft_helpers import PEFT_TASK, ours_from_hf, ours_output, randomise_trainable, torch_output
from test_peft_format import CASE_IDS, CASES, IDS, MASK, compare, hf_model, randomise_peft_heads
from tiny_models import BERT_CONFIGS

TARGETS = {"bert": ["query", "value", "output.dense"], "gpt2": ["c_attn", "c_fc"]}


def peft_logits(peft_model, task):
    with torch.no_grad():
        return torch_output(peft_model(input_ids=torch.tensor(IDS), attention_mask=torch.tensor(MASK)), task)


@pytest.mark.parametrize("family,task", CASES, ids=CASE_IDS)
def test_dora_export_loads_in_peft_with_the_same_logits(tmp_path, family, task):
    hf = hf_model(family, task)
    ours = ours_from_hf(hf, tmp_path / "base", task)
    before = ours_output(ours, task, IDS, MASK)
    apply_lora(ours, LoraConfig(r=4, alpha=8, target_modules=TARGETS[family], use_dora=True))
    assert all(isinstance(layer, DoraLinear) for layer in lora_layers(ours).values())
    np.testing.assert_allclose(ours_output(ours, task, IDS, MASK), before, atol=1e-5)  # fresh: unchanged
    randomise_trainable(ours, seed=1)  # A, B *and* the magnitudes random
    assert np.abs(ours_output(ours, task, IDS, MASK) - before).max() > 1e-2
    jaxkernel.save_adapter(ours, tmp_path / "adapter")
    config = json.loads((tmp_path / "adapter" / ADAPTER_CONFIG).read_text())
    assert config["use_dora"] is True and config["peft_type"] == "LORA"
    loaded = peft.PeftModel.from_pretrained(hf, tmp_path / "adapter").eval()
    compare(ours_output(ours, task, IDS, MASK), peft_logits(loaded, task), family, task)

    # Same keys, shapes and values as PEFT writes back.
    loaded.save_pretrained(tmp_path / "resaved")
    ours_file = load_file(str(tmp_path / "adapter" / ADAPTER_WEIGHTS))
    theirs_file = load_file(str(tmp_path / "resaved" / ADAPTER_WEIGHTS))
    assert {k: v.shape for k, v in ours_file.items()} == {k: v.shape for k, v in theirs_file.items()}
    for key in theirs_file:
        np.testing.assert_array_equal(ours_file[key], theirs_file[key], err_msg=key)
    assert any(k.endswith(".lora_magnitude_vector") for k in ours_file)


@pytest.mark.parametrize("family,task", CASES, ids=CASE_IDS)
def test_dora_trained_in_peft_imports_with_the_same_logits(tmp_path, family, task):
    hf = hf_model(family, task)
    ours = ours_from_hf(hf, tmp_path / "base", task)
    config = peft.LoraConfig(r=4, lora_alpha=6, target_modules=TARGETS[family], task_type=PEFT_TASK[task],
                             init_lora_weights=False, use_dora=True, fan_in_fan_out=family == "gpt2")
    torch.manual_seed(2)
    trained = peft.get_peft_model(hf, config).eval()
    gen = torch.Generator().manual_seed(5)
    with torch.no_grad():  # move the magnitudes off ||W|| too
        for name, param in trained.named_parameters():
            if "lora_magnitude_vector" in name:
                param.mul_(1 + 0.3 * torch.randn(param.shape, generator=gen))
    randomise_peft_heads(trained, seed=3)
    trained.save_pretrained(tmp_path / "adapter")
    jaxkernel.load_adapter(ours, tmp_path / "adapter")
    assert ours.peft_config.use_dora and len(lora_layers(ours)) == {"bert": 8, "gpt2": 4}[family]
    compare(ours_output(ours, task, IDS, MASK), peft_logits(trained, task), family, task)


@pytest.mark.parametrize("family,task", CASES, ids=CASE_IDS)
def test_dora_merge_gives_the_unmerged_outputs_and_exports_plain(tmp_path, family, task):
    hf = hf_model(family, task)
    ours = ours_from_hf(hf, tmp_path / "base", task)
    apply_lora(ours, LoraConfig(r=4, alpha=8, target_modules=TARGETS[family], use_dora=True))
    randomise_trainable(ours, seed=4)
    kernels = {p: np.asarray(layer.base_layer.kernel[...]) for p, layer in lora_layers(ours).items()}
    unmerged = ours_output(ours, task, IDS, MASK)
    merge_lora(ours)
    np.testing.assert_allclose(ours_output(ours, task, IDS, MASK), unmerged, atol=1e-5, rtol=1e-5)
    unmerge_lora(ours)
    for path, layer in lora_layers(ours).items():
        np.testing.assert_allclose(np.asarray(layer.base_layer.kernel[...]), kernels[path], atol=1e-6)
    # The merged transformers directory gives PEFT's / our logits in plain PyTorch.
    jaxkernel.save_merged(ours, tmp_path / "merged")
    from test_peft_format import AUTO

    merged = AUTO[task].from_pretrained(tmp_path / "merged").eval()
    with torch.no_grad():
        plain = torch_output(merged(input_ids=torch.tensor(IDS), attention_mask=torch.tensor(MASK)), task)
    compare(unmerged, plain, family, task)


def test_dora_magnitude_trains_and_int8_base_is_refused():
    config = jaxkernel.BertConfig(**BERT_CONFIGS["h36-heads3"], num_labels=3)
    model = BERT_TASKS["sequence-classification"](config, rngs=nnx.Rngs(0))
    apply_lora(model, LoraConfig(r=2, target_modules=["query"], use_dora=True, modules_to_save=()))
    layer = model.bert.encoder.layer[0].attention.self.query
    assert isinstance(layer.lora_magnitude_vector, LoraParam) and layer.lora_magnitude_vector.shape == (36,)
    assert layer.lora_magnitude_vector.get_metadata()["out_sharding"] == ("heads",)
    np.testing.assert_allclose(np.asarray(layer.lora_magnitude_vector[...]),
                               np.linalg.norm(np.asarray(layer.base_layer.kernel[...]), axis=0), rtol=1e-6)
    randomise_trainable(model, seed=6)
    trainable, _ = jaxkernel.count_parameters(model)
    assert trainable == 2 * (36 * 2 + 2 * 36 + 36)  # A, B and magnitude in both layers, nothing else

    def loss(m):
        return (m(IDS, MASK) ** 2).sum()

    grads = nnx.grad(loss, argnums=nnx.DiffState(0, LoraParam))(model)
    magnitude_grad = grads["bert"]["encoder"]["layer"][0]["attention"]["self"]["query"]["lora_magnitude_vector"]
    assert np.abs(np.asarray(magnitude_grad[...])).max() > 0

    from jaxkernel.quant.transform import quantize_model

    quantized = quantize_model(BERT_TASKS["sequence-classification"](config, rngs=nnx.Rngs(0)))
    with pytest.raises(ValueError, match="DoRA.*needs the float weights.*Int8Linear.*use_dora=false"):
        apply_lora(quantized, LoraConfig(target_modules=["query"], use_dora=True))
    assert not lora_layers(quantized)  # refused before any surgery
