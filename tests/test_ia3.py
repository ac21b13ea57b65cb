"""IA3 (``peft.method=ia3``): PEFT's targets, math and files, both ways, exact merge."""

import json

import jax
import numpy as np
import peft
import pytest
import torch
from flax import nnx
from safetensors.numpy import load_file

import jaxkernel
from jaxkernel.hf.peft_format import ADAPTER_CONFIG, ADAPTER_WEIGHTS
from jaxkernel.models.bert import BERT_TASKS
from jaxkernel.peft import Ia3Config, Ia3Param, apply_ia3, ia3_layers, merge_ia3, unmerge_ia3
from peft_helpers import PEFT_TASK, ours_from_hf, ours_output, torch_output
from test_peft_format import AUTO, CASE_IDS, CASES, IDS, MASK, compare, hf_model, randomise_peft_heads
from tiny_models import BERT_CONFIGS


def randomise_ia3(model, seed):
    """IA3 vectors around 1 (their init) and random heads: every trainable value moves."""
    key = jax.random.key(seed)
    for i, (_, var) in enumerate(nnx.iter_graph(model)):
        if isinstance(var, jaxkernel.TrainableParam):
            noise = 0.3 * jax.random.normal(jax.random.fold_in(key, i), var.shape, var.dtype)
            var[...] = (1 + noise) if isinstance(var, Ia3Param) else var[...] + noise


def peft_logits(peft_model, task):
    with torch.no_grad():
        return torch_output(peft_model(input_ids=torch.tensor(IDS), attention_mask=torch.tensor(MASK)), task)


def peft_ia3_layers(peft_model):
    from peft.tuners.ia3 import IA3Layer

    prefix = "base_model.model."
    return {n[len(prefix):]: m.is_feedforward for n, m in peft_model.named_modules() if isinstance(m, IA3Layer)}


@pytest.mark.parametrize("family,task", CASES, ids=CASE_IDS)
def test_ia3_defaults_and_export_match_peft(tmp_path, family, task):
    hf = hf_model(family, task)
    ours = ours_from_hf(hf, tmp_path / "base", task)
    before = ours_output(ours, task, IDS, MASK)
    apply_ia3(ours, Ia3Config())  # the family defaults, as PEFT picks them from model_type
    np.testing.assert_array_equal(ours_output(ours, task, IDS, MASK), before)  # ones: unchanged
    reference = peft.get_peft_model(hf_model(family, task), peft.IA3Config(task_type=PEFT_TASK[task]))
    assert {p: l.is_feedforward for p, l in ia3_layers(ours).items()} == peft_ia3_layers(reference)
    randomise_ia3(ours, seed=1)
    assert np.abs(ours_output(ours, task, IDS, MASK) - before).max() > 1e-2
    jaxkernel.save_adapter(ours, tmp_path / "adapter")
    config = json.loads((tmp_path / "adapter" / ADAPTER_CONFIG).read_text())
    assert config["peft_type"] == "IA3" and config["fan_in_fan_out"] is (family == "gpt2")
    loaded = peft.PeftModel.from_pretrained(hf, tmp_path / "adapter").eval()
    compare(ours_output(ours, task, IDS, MASK), peft_logits(loaded, task), family, task)

    loaded.save_pretrained(tmp_path / "resaved")
    ours_file = load_file(str(tmp_path / "adapter" / ADAPTER_WEIGHTS))
    theirs_file = load_file(str(tmp_path / "resaved" / ADAPTER_WEIGHTS))
    assert {k: v.shape for k, v in ours_file.items()} == {k: v.shape for k, v in theirs_file.items()}
    for key in theirs_file:
        np.testing.assert_array_equal(ours_file[key], theirs_file[key], err_msg=key)


@pytest.mark.parametrize("family,task", CASES, ids=CASE_IDS)
def test_ia3_trained_in_peft_imports_with_the_same_logits(tmp_path, family, task):
    hf = hf_model(family, task)
    ours = ours_from_hf(hf, tmp_path / "base", task)
    if family == "bert":  # explicit lists; a feed-forward target scales its input
        config = peft.IA3Config(target_modules=["query", "value", "intermediate.dense", "output.dense"],
                                feedforward_modules=["intermediate.dense"], task_type=PEFT_TASK[task])
    else:  # regexes
        config = peft.IA3Config(target_modules=r".*\.(c_attn|c_fc|mlp\.c_proj)", feedforward_modules=r".*\.c_fc",
                                task_type=PEFT_TASK[task], fan_in_fan_out=True)
    trained = peft.get_peft_model(hf, config).eval()
    gen = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for name, param in trained.named_parameters():
            if "ia3_l" in name:
                param.add_(0.3 * torch.randn(param.shape, generator=gen))
    randomise_peft_heads(trained, seed=3)
    trained.save_pretrained(tmp_path / "adapter")
    jaxkernel.load_adapter(ours, tmp_path / "adapter")
    assert {p: l.is_feedforward for p, l in ia3_layers(ours).items()} == peft_ia3_layers(trained)
    compare(ours_output(ours, task, IDS, MASK), peft_logits(trained, task), family, task)


@pytest.mark.parametrize("family,task", CASES, ids=CASE_IDS)
def test_ia3_merge_gives_the_unmerged_outputs_and_exports_plain(tmp_path, family, task):
    hf = hf_model(family, task)
    ours = ours_from_hf(hf, tmp_path / "base", task)
    apply_ia3(ours, Ia3Config())
    randomise_ia3(ours, seed=4)
    kernels = {p: np.asarray(layer.base_layer.kernel[...]) for p, layer in ia3_layers(ours).items()}
    unmerged = ours_output(ours, task, IDS, MASK)
    merge_ia3(ours)
    np.testing.assert_allclose(ours_output(ours, task, IDS, MASK), unmerged, atol=1e-5, rtol=1e-5)
    unmerge_ia3(ours)
    for path, layer in ia3_layers(ours).items():
        np.testing.assert_allclose(np.asarray(layer.base_layer.kernel[...]), kernels[path], atol=1e-6, rtol=1e-6)
    jaxkernel.save_merged(ours, tmp_path / "merged")
    merged = AUTO[task].from_pretrained(tmp_path / "merged").eval()
    with torch.no_grad():
        plain = torch_output(merged(input_ids=torch.tensor(IDS), attention_mask=torch.tensor(MASK)), task)
    compare(unmerged, plain, family, task)


def test_ia3_trainable_set_int8_and_bad_configs(tmp_path):
    config = jaxkernel.BertConfig(**BERT_CONFIGS["h36-heads3"], num_labels=3)
    model = apply_ia3(BERT_TASKS["sequence-classification"](config, rngs=nnx.Rngs(0)), Ia3Config(modules_to_save=()))
    with pytest.raises(TypeError, match="ia3_l belongs to a PEFT adapter.*save_merged"):
        jaxkernel.save_pretrained(model, tmp_path / "plain")
    trainable, _ = jaxkernel.count_parameters(model)
    # key, value: out 36; attention.output.dense and output.dense are feed-forward: in 36 and 50.
    assert trainable == 2 * (36 + 36 + 36 + 50)
    layer = model.bert.encoder.layer[0].output.dense
    assert layer.is_feedforward and layer.ia3_l.get_metadata()["out_sharding"] == ("mlp",)

    from jaxkernel.quant.transform import quantize_model

    quantized = apply_ia3(quantize_model(BERT_TASKS["sequence-classification"](config, rngs=nnx.Rngs(0))),
                          Ia3Config(target_modules=["key", "value"], feedforward_modules=[]))
    randomise_ia3(quantized, seed=5)
    quantized(IDS, MASK)  # unmerged on int8 works
    with pytest.raises(TypeError, match="cannot merge IA3.*no float kernel"):
        merge_ia3(quantized)
    with pytest.raises(ValueError, match="feedforward_modules.*subset of target_modules"):
        Ia3Config(target_modules=["key"], feedforward_modules=["output.dense"])
    with pytest.raises(ValueError, match="IA3 target_modules.*matched no module"):
        apply_ia3(BERT_TASKS["sequence-classification"](config, rngs=nnx.Rngs(0)), Ia3Config(target_modules=["kee"]))
