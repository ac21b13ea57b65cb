"""Several named adapters on one base (``AdapterSet``): any mix of methods, switching, deleting,
PEFT's add_weighted_adapter and multi-adapter directories, against peft / AdapterHub outputs."""

import copy

import numpy as np
import peft
import pytest
import torch
import transformers
from flax import nnx

import jaxkernel
from jaxkernel.hf.peft_format import load_adapters, save_adapters
from jaxkernel.peft import AdapterSet, Ia3Config, LoraConfig, PrefixConfig, apply_lora, lora_layers
from peft_helpers import ours_from_hf, ours_output, randomise_trainable, torch_output
from test_bottleneck import fixture_base, fixture_dir, hidden  # noqa: F401 (fixture)
from test_peft_format import IDS, MASK, hf_model

ATOL = 1e-5


def randomise_lora_like(peft_model, seed, scale=0.3):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_" in name or "ia3_l" in name:
                param.copy_(scale * torch.randn(param.shape, generator=gen) + (1.0 if "ia3_l" in name else 0.0))


def test_mixed_adapters_switch_run_and_delete_on_one_base(tmp_path, fixture_dir):  # noqa: F811
    ids, mask = np.load(fixture_dir / "input_ids.npy"), np.load(fixture_dir / "attention_mask.npy")
    hf = transformers.BertModel.from_pretrained(fixture_dir / "base").eval()
    configs = {
        "lora": peft.LoraConfig(r=4, lora_alpha=8, target_modules=["query", "value"]),
        "dora": peft.LoraConfig(r=2, lora_alpha=4, target_modules=["key", "output.dense"], use_dora=True),
        "ia3": peft.IA3Config(target_modules=["key", "value", "output.dense"], feedforward_modules=["output.dense"]),
        "adalora": peft.AdaLoraConfig(init_r=3, target_r=2, total_step=10, target_modules=["query", "intermediate.dense"]),
    }
    expected = {}
    for seed, (name, config) in enumerate(configs.items()):
        reference = peft.get_peft_model(copy.deepcopy(hf), config).eval()
        randomise_lora_like(reference, seed)
        reference.save_pretrained(tmp_path / name)
        with torch.no_grad():
            expected[name] = reference(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask)).last_hidden_state.numpy()
    for name in ("houlsby", "pfeiffer"):  # AdapterHub's own outputs
        expected[name] = np.load(fixture_dir / f"{name}_last_hidden_state.npy")

    base = fixture_base(fixture_dir)
    pristine = nnx.graphdef(base)
    bare = hidden(base, fixture_dir)
    embedding = base.embeddings.word_embeddings.embedding
    adapters = AdapterSet(base)
    for name in configs:
        adapters.load(name, tmp_path / name)
    adapters.load("houlsby", fixture_dir / "houlsby_adapter_safetensors")
    adapters.load("pfeiffer", fixture_dir / "pfeiffer_adapter")
    adapters.add("prefix", PrefixConfig(num_virtual_tokens=3), seed=1)
    assert adapters.active == "lora" and adapters.names == [*configs, "houlsby", "pfeiffer", "prefix"]
    adapters.set_active("prefix")
    randomise_trainable(base, seed=9)
    expected["prefix"] = hidden(base, fixture_dir)
    assert np.abs(expected["prefix"] - bare).max() > 1e-2

    for name in [*adapters.names, *reversed(adapters.names)]:  # every switch, both ways
        adapters.set_active(name)
        out = hidden(base, fixture_dir)
        diff = float(np.abs(out - expected[name]).max())
        print(f"{name}: max|diff| = {diff:.2e} (moves the outputs by {np.abs(expected[name] - bare).max():.2f})")
        assert diff <= ATOL, (name, diff)
        assert type(base.peft_config).__name__ == {
            "lora": "LoraConfig", "dora": "LoraConfig", "ia3": "Ia3Config", "adalora": "AdaLoraConfig",
            "houlsby": "BottleneckConfig", "pfeiffer": "BottleneckConfig", "prefix": "PrefixConfig"}[name]
        assert base.embeddings.word_embeddings.embedding is embedding  # the base is shared, never copied
    adapters.set_active(None)
    np.testing.assert_array_equal(hidden(base, fixture_dir), bare)
    assert nnx.graphdef(base) == pristine and not hasattr(base, "peft_config")

    adapters.set_active("ia3")
    adapters.delete("dora")
    assert adapters.names == ["lora", "ia3", "adalora", "houlsby", "pfeiffer", "prefix"] and adapters.active == "ia3"
    adapters.delete("ia3")  # the active one: the first remaining takes over, as in PEFT
    assert adapters.active == "lora" and "ia3" not in adapters.names
    np.testing.assert_allclose(hidden(base, fixture_dir), expected["lora"], atol=ATOL)
    with pytest.raises(KeyError, match="no adapter named 'ia3'"):
        adapters.set_active("ia3")
    with pytest.raises(ValueError, match="exists already"):
        adapters.add("lora", LoraConfig(r=2, target_modules=["query"]))
    with pytest.raises(ValueError, match="no module"):  # a failed surgery leaves the set and the model as they were
        adapters.add("typo", LoraConfig(r=2, target_modules=["qurey"]))
    assert adapters.active == "lora" and "typo" not in adapters.names
    np.testing.assert_allclose(hidden(base, fixture_dir), expected["lora"], atol=ATOL)
    with pytest.raises(ValueError, match="starts from the bare base model"):
        AdapterSet(apply_lora(fixture_base(fixture_dir), LoraConfig(target_modules=["query"])))


def peft_logits(peft_model):
    with torch.no_grad():
        return torch_output(peft_model(input_ids=torch.tensor(IDS), attention_mask=torch.tensor(MASK)), "causal-lm")


def real_tokens(x):
    return x[MASK.astype(bool)]  # HF's GPT-2 puts pads elsewhere


def test_add_weighted_adapter_and_multi_adapter_directories_match_peft(tmp_path):
    hf = hf_model("gpt2", "causal-lm")
    sources = {  # mixed targets, an rsLoRA scale, and ranks that only "cat" can combine
        "a": peft.LoraConfig(r=4, lora_alpha=8, target_modules=["c_attn"], fan_in_fan_out=True, task_type="CAUSAL_LM"),
        "b": peft.LoraConfig(r=4, lora_alpha=6, target_modules=["c_attn", "c_fc"], use_rslora=True, fan_in_fan_out=True,
                             task_type="CAUSAL_LM"),
        "c": peft.LoraConfig(r=2, lora_alpha=3, target_modules=["c_fc", "c_proj"], fan_in_fan_out=True,
                             task_type="CAUSAL_LM"),
    }
    for seed, (name, config) in enumerate(sources.items()):
        model = peft.get_peft_model(copy.deepcopy(hf), config)
        randomise_lora_like(model, seed)
        model.save_pretrained(tmp_path / name)
    reference = peft.PeftModel.from_pretrained(copy.deepcopy(hf), tmp_path / "a", adapter_name="a").eval()
    for name in ("b", "c"):
        reference.load_adapter(tmp_path / name, adapter_name=name)
    reference.add_weighted_adapter(["a", "b"], [0.7, -0.4], "lin", combination_type="linear")
    reference.add_weighted_adapter(["a", "b", "c"], [0.5, 0.3, -0.6], "cat", combination_type="cat")

    base = ours_from_hf(hf, tmp_path / "base", "causal-lm")
    adapters = AdapterSet(base)
    for name in sources:
        adapters.load(name, tmp_path / name)
    adapters.add_weighted_adapter(["a", "b"], [0.7, -0.4], "lin", combination_type="linear")
    adapters.add_weighted_adapter(["a", "b", "c"], [0.5, 0.3, -0.6], "cat", combination_type="cat")
    assert adapters.config("lin").r == 4 and adapters.config("cat").r == 10 and adapters.active == "a"
    for name in ("a", "b", "c", "lin", "cat"):
        reference.set_adapter(name)
        adapters.set_active(name)
        diff = float(np.abs(real_tokens(ours_output(base, "causal-lm", IDS, MASK)) - real_tokens(peft_logits(reference))).max())
        print(f"{name}: max|diff| = {diff:.2e}")
        assert diff <= ATOL, (name, diff)
    assert set(lora_layers(base)) == {f"transformer.h.{i}.{m}" for i in (0, 1) for m in ("attn.c_attn", "mlp.c_fc",
                                                                                            "attn.c_proj", "mlp.c_proj")}

    # PEFT's multi-adapter layout: "default" in the directory, the others in subdirectories.
    adapters.delete("c")
    adapters.load("default", tmp_path / "c")
    save_adapters(adapters, tmp_path / "all")
    assert (tmp_path / "all" / "adapter_config.json").is_file() and (tmp_path / "all" / "lin" / "adapter_config.json").is_file()
    torch_all = peft.PeftModel.from_pretrained(copy.deepcopy(hf), tmp_path / "all").eval()
    torch_all.load_adapter(tmp_path / "all" / "lin", adapter_name="lin")
    again = AdapterSet(ours_from_hf(hf, tmp_path / "base2", "causal-lm"))
    assert load_adapters(again, tmp_path / "all") == ["default", "a", "b", "cat", "lin"]
    for name in ("default", "lin"):
        torch_all.set_adapter(name)
        again.set_active(name)
        adapters.set_active(name)
        ours = real_tokens(ours_output(again.model, "causal-lm", IDS, MASK))
        np.testing.assert_allclose(ours, real_tokens(peft_logits(torch_all)), atol=ATOL, err_msg=name)
        np.testing.assert_array_equal(ours, real_tokens(ours_output(base, "causal-lm", IDS, MASK)))


def test_add_weighted_adapter_refuses_what_peft_refuses(tmp_path):
    adapters = AdapterSet(ours_from_hf(hf_model("bert", "token-classification"), tmp_path / "base", "token-classification"))
    adapters.add("x", LoraConfig(r=4, target_modules=["query"]))  # both train the classifier head
    adapters.add("y", LoraConfig(r=4, target_modules=["value"]))
    adapters.add("z", LoraConfig(r=2, target_modules=".*key", modules_to_save=()))
    adapters.add("d", LoraConfig(r=4, target_modules=["query"], use_dora=True, modules_to_save=()))
    adapters.add("i", Ia3Config(modules_to_save=()))
    with pytest.raises(ValueError, match="same module in full"):
        adapters.add_weighted_adapter(["x", "y"], [1.0, 1.0], "xy")
    with pytest.raises(ValueError, match="equal ranks"):
        adapters.add_weighted_adapter(["x", "z"], [1.0, 1.0], "xz")
    with pytest.raises(ValueError, match="all regex or all lists"):
        adapters.add_weighted_adapter(["x", "z"], [1.0, 1.0], "xz", combination_type="cat")
    for other in ("d", "i"):
        with pytest.raises(ValueError, match="plain LoRA adapters only"):
            adapters.add_weighted_adapter(["x", other], [1.0, 1.0], "bad")
    with pytest.raises(ValueError, match="'linear' and 'cat'"):
        adapters.add_weighted_adapter(["x"], [1.0], "svd", combination_type="svd")
    assert adapters.names == ["x", "y", "z", "d", "i"]
