"""AdaLoRA (``peft.method=adalora``): PEFT's math, files (rank pattern included) and rank allocator."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import peft
import pytest
import torch
from flax import nnx
from safetensors.numpy import load_file

import jaxkernel
from jaxkernel.hf.peft_format import ADAPTER_CONFIG, ADAPTER_WEIGHTS
from jaxkernel.models.bert import BERT_TASKS
from jaxkernel.peft import (
    AdaLoraConfig, AdaLoraLinear, AdaLoraParam, adalora_layers, apply_adalora, count_parameters, lora_layers,
    merge_lora, unmerge_lora,
)
from jaxkernel.peft.adalora_budget import (
    AdaLoraState, allocator_state, attach_rank_pattern, orthogonal_regularization, orthogonality_penalty,
    rank_allocation,
)
from peft_helpers import PEFT_TASK, ours_from_hf, ours_output, randomise_trainable, torch_output
from test_peft_format import CASE_IDS, CASES, IDS, MASK, hf_model, randomise_peft_heads
from tiny_models import BERT_CONFIGS

TARGETS = {"bert": ["query", "value", "output.dense"], "gpt2": ["c_attn", "c_fc"]}
ATOL = 1e-5


def compare(ours_logits, theirs_logits, family, task):
    if family == "gpt2" and task == "causal-lm":  # HF's GPT-2 puts pads elsewhere: real tokens only
        keep = MASK.astype(bool)
        ours_logits, theirs_logits = ours_logits[keep], theirs_logits[keep]
    diff = float(np.abs(ours_logits - theirs_logits).max())
    print(f"max|diff| = {diff:.2e}")
    assert diff <= ATOL, diff
    return diff


def peft_logits(peft_model, task):
    with torch.no_grad():
        return torch_output(peft_model(input_ids=torch.tensor(IDS), attention_mask=torch.tensor(MASK)), task)


def drop_triplets(model, seed):
    """A rank pattern on every layer (one layer loses all triplets), E zeroed where dropped, as
    PEFT's allocator leaves a model: returns the patterns by path."""
    rng = np.random.RandomState(seed)
    patterns = {}
    for i, (path, layer) in enumerate(adalora_layers(model).items()):
        kept = rng.rand(layer.r) < 0.6
        kept = np.zeros(layer.r, bool) if i == 1 else kept
        layer.lora_E[...] = layer.lora_E[...] * jnp.asarray(kept, layer.lora_E.dtype)
        layer.rank_pattern = tuple(bool(k) for k in kept)
        patterns[path] = layer.rank_pattern
    return patterns


@pytest.mark.parametrize("family,task", CASES, ids=CASE_IDS)
def test_adalora_export_loads_in_peft_with_the_same_logits(tmp_path, family, task):
    hf = hf_model(family, task)
    ours = ours_from_hf(hf, tmp_path / "base", task)
    before = ours_output(ours, task, IDS, MASK)
    apply_adalora(ours, AdaLoraConfig(init_r=4, target_r=2, total_step=20, alpha=6.0, target_modules=TARGETS[family]))
    assert all(isinstance(layer, AdaLoraLinear) for layer in lora_layers(ours).values())
    np.testing.assert_allclose(ours_output(ours, task, IDS, MASK), before, atol=1e-6)  # E = 0: unchanged
    randomise_trainable(ours, seed=1)  # A, E, B and the head random, non-zero
    assert np.abs(ours_output(ours, task, IDS, MASK) - before).max() > 1e-2
    patterns = drop_triplets(ours, seed=2)
    jaxkernel.save_adapter(ours, tmp_path / "adapter")
    config = json.loads((tmp_path / "adapter" / ADAPTER_CONFIG).read_text())
    assert config["peft_type"] == "ADALORA" and config["init_r"] == 4 and config["total_step"] == 20
    assert len(config["rank_pattern"]) == len(patterns)
    assert sorted(map(tuple, config["rank_pattern"].values())) == sorted(patterns.values())
    loaded = peft.PeftModel.from_pretrained(hf, tmp_path / "adapter").eval()
    compare(ours_output(ours, task, IDS, MASK), peft_logits(loaded, task), family, task)

    # PEFT writes back the same keys, shapes (the kept triplets only) and values.
    loaded.save_pretrained(tmp_path / "resaved")
    ours_file = load_file(str(tmp_path / "adapter" / ADAPTER_WEIGHTS))
    theirs_file = load_file(str(tmp_path / "resaved" / ADAPTER_WEIGHTS))
    assert {k: v.shape for k, v in ours_file.items()} == {k: v.shape for k, v in theirs_file.items()}
    for key in theirs_file:
        np.testing.assert_array_equal(ours_file[key], theirs_file[key], err_msg=key)
    assert any(v.shape[0] == 0 for k, v in ours_file.items() if k.endswith("lora_E"))  # a layer kept nothing


def randomise_peft_adalora(peft_model, seed):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_" in name:
                param.copy_(0.3 * torch.randn(param.shape, generator=gen))


@pytest.mark.parametrize("family,task", CASES, ids=CASE_IDS)
def test_adalora_trained_in_peft_imports_with_the_same_logits(tmp_path, family, task):
    hf = hf_model(family, task)
    ours = ours_from_hf(hf, tmp_path / "base", task)
    config = peft.AdaLoraConfig(init_r=5, target_r=2, total_step=30, lora_alpha=7, target_modules=TARGETS[family],
                                task_type=PEFT_TASK[task], fan_in_fan_out=family == "gpt2")
    trained = peft.get_peft_model(hf, config).eval()
    randomise_peft_adalora(trained, seed=3)
    randomise_peft_heads(trained, seed=4)
    # A rank pattern as the allocator leaves it: dropped triplets zeroed, the pattern in the config.
    rng, pattern = np.random.RandomState(5), {}
    with torch.no_grad():
        for name, param in trained.base_model.model.named_parameters():
            if "lora_E.default" in name:
                kept = rng.rand(5) < 0.5
                param.mul_(torch.tensor(kept, dtype=param.dtype)[:, None])
                pattern[name] = kept.tolist()
    trained.peft_config["default"].rank_pattern = pattern
    expected = peft_logits(trained, task)
    trained.save_pretrained(tmp_path / "adapter")
    jaxkernel.load_adapter(ours, tmp_path / "adapter")
    layers = adalora_layers(ours)
    assert len(layers) == {"bert": 8, "gpt2": 4}[family]
    assert sorted(layer.r for layer in layers.values()) == sorted(sum(p) for p in pattern.values())
    assert all(layer.ranknum == 5 for layer in layers.values())  # PEFT keeps ranknum = init_r after resizing
    compare(ours_output(ours, task, IDS, MASK), expected, family, task)
    # And back: our export of the loaded adapter is what PEFT wrote.
    jaxkernel.save_adapter(ours, tmp_path / "again")
    theirs, again = (load_file(str(tmp_path / d / ADAPTER_WEIGHTS)) for d in ("adapter", "again"))
    assert theirs.keys() == again.keys()
    for key in theirs:
        np.testing.assert_array_equal(again[key], theirs[key], err_msg=key)


def tiny_bert(task="sequence-classification"):
    config = jaxkernel.BertConfig(**BERT_CONFIGS["h36-heads3"], num_labels=3)
    return BERT_TASKS[task](config, rngs=nnx.Rngs(0))


def test_adalora_layer_init_types_merge_and_bad_configs():
    model = apply_adalora(tiny_bert(), AdaLoraConfig(init_r=3, total_step=10, target_r=2, modules_to_save=()))
    layer = model.bert.encoder.layer[0].attention.self.query  # BERT default targets: query, value
    assert isinstance(layer, AdaLoraLinear) and set(adalora_layers(model)) == {
        f"bert.encoder.layer.{i}.attention.self.{m}" for i in (0, 1) for m in ("query", "value")}
    assert isinstance(layer.lora_E, AdaLoraParam) and layer.lora_E.shape == (3,)
    assert float(jnp.abs(layer.lora_E[...]).max()) == 0.0  # PEFT: E = 0, A, B ~ N(0, 0.02)
    assert 0.01 < float(jnp.std(layer.lora_A[...])) < 0.03
    assert layer.lora_A.get_metadata()["out_sharding"] == ("embed", "lora_rank")
    assert count_parameters(model)[0] == 4 * (36 * 3 + 3 + 3 * 36)
    randomise_trainable(model, seed=7)
    unmerged = np.asarray(model(IDS, MASK))
    merge_lora(model)
    np.testing.assert_allclose(np.asarray(model(IDS, MASK)), unmerged, atol=1e-5, rtol=1e-5)
    unmerge_lora(model)
    for bad, match in [(dict(target_r=13), "exceeds init_r"), (dict(tinit=8, tfinal=2, total_step=10), "no budgeting"),
                       (dict(beta1=1.0), "beta1"), (dict(orth_reg_weight=-1.0), "orth_reg_weight")]:
        with pytest.raises(ValueError, match=match):
            AdaLoraConfig(**bad)
    with pytest.raises(ValueError, match="total_step is unset"):
        jaxkernel.save_adapter(apply_adalora(tiny_bert(), AdaLoraConfig()), "/nonexistent/never-written")


# ---------------------------------------------------------------- the training-time half


def grid(rng, shape):
    """Random multiples of 2^-10 in [-2, 2]: sums, differences and products stay exact in float32."""
    return rng.randint(-2048, 2049, size=shape).astype(np.float32) / 1024


def test_rank_allocator_matches_peft_step_by_step():
    """The same parameters and gradients, step after step, into PEFT's ``update_and_allocate`` and
    into ``rank_allocation``: the same EMAs, budget masks, rank pattern and masked singular values."""
    init_r, total, tinit, tfinal, delta = 4, 14, 2, 3, 2
    hf = hf_model("bert", "token-classification")
    peft_model = peft.get_peft_model(hf, peft.AdaLoraConfig(
        init_r=init_r, target_r=2, tinit=tinit, tfinal=tfinal, deltaT=delta, total_step=total, beta1=0.8, beta2=0.7,
        target_modules=TARGETS["bert"], task_type="TOKEN_CLS"))
    config = AdaLoraConfig(init_r=init_r, target_r=2, tinit=tinit, tfinal=tfinal, deltaT=delta, total_step=total,
                           beta1=0.8, beta2=0.7, target_modules=TARGETS["bert"])
    ours = apply_adalora(tiny_bert("token-classification"), config)
    params = nnx.state(ours, AdaLoraParam)
    flat, treedef = jax.tree_util.tree_flatten_with_path(params)
    names = [".".join(str(k.key) for k in p if isinstance(k, jax.tree_util.DictKey)) for p, _ in flat]
    torch_params = dict(peft_model.base_model.model.named_parameters())
    to_torch = {"lora_A": lambda x: x.T, "lora_B": lambda x: x.T, "lora_E": lambda x: x[:, None]}

    target = {}
    inner = optax.GradientTransformation(
        lambda p: optax.EmptyState(),
        lambda g, s, p: (jax.tree.map(lambda new, old: new - old, target["next"], p), s))
    tx = rank_allocation(inner, config, total)
    rng = np.random.RandomState(0)
    params = jax.tree_util.tree_unflatten(treedef, [jnp.asarray(grid(rng, leaf.shape)) for _, leaf in flat])
    state = tx.init(params)
    patterns_seen = 0
    for step in range(total + 2):
        values = [grid(rng, leaf.shape) for _, leaf in flat]
        grads = [grid(rng, leaf.shape) for _, leaf in flat]
        target["next"] = jax.tree_util.tree_unflatten(treedef, [jnp.asarray(v) for v in values])
        with torch.no_grad():
            for name, value, grad in zip(names, values, grads):
                part = name.rsplit(".", 1)[1]
                param = torch_params[f"{name}.default"]
                param.copy_(torch.from_numpy(np.ascontiguousarray(to_torch[part](value))))
                param.grad = torch.from_numpy(np.ascontiguousarray(to_torch[part](grad)))
        peft_model.base_model.update_and_allocate(step)
        updates, state = tx.update(jax.tree_util.tree_unflatten(treedef, [jnp.asarray(g) for g in grads]), state,
                                   params)
        params = optax.apply_updates(params, updates)
        ours_leaves = dict(zip(names, jax.tree.leaves(params)))
        for name in names:
            part = name.rsplit(".", 1)[1]
            theirs = torch_params[f"{name}.default"].detach().numpy()
            np.testing.assert_array_equal(to_torch[part](np.asarray(ours_leaves[name])), theirs,
                                          err_msg=f"step {step} {name}")
        allocator = peft_model.base_model.rankallocator
        layer_names = sorted({n.rsplit(".", 1)[0] for n in names})
        for layer, ipt, unc in zip(layer_names, state.exp_avg_ipt, state.exp_avg_unc):
            for part, i, u in zip(("lora_A", "lora_E", "lora_B"), ipt, unc):
                key = f"{layer}.{part}.default"
                if key not in allocator.exp_avg_ipt:  # PEFT's reset_ipt after the final allocation
                    assert not np.asarray(i).any() and not np.asarray(u).any()
                    continue
                np.testing.assert_allclose(to_torch[part](np.asarray(i)), allocator.exp_avg_ipt[key].numpy(),
                                           rtol=1e-6, atol=1e-12)
                np.testing.assert_allclose(to_torch[part](np.asarray(u)), allocator.exp_avg_unc[key].numpy(),
                                           rtol=1e-6, atol=1e-12)
        rank_pattern = peft_model.peft_config["default"].rank_pattern
        if rank_pattern:
            patterns_seen += 1
            ours_pattern = {f"{layer}.lora_E.default": np.asarray(m).tolist() for layer, m in
                            zip(layer_names, state.masks)}
            assert ours_pattern == rank_pattern, f"step {step}"
    final = peft_model.peft_config["default"].rank_pattern
    assert sum(map(sum, final.values())) == 2 * len(final)  # the target budget: target_r per layer on average
    assert any(sum(p) != 2 for p in final.values())  # ... spread unevenly by importance
    assert patterns_seen >= 5 and int(state.count) == total + 2


def test_orthogonal_regulariser_is_peft_loss_term():
    """PEFT adds orth_reg_weight * R to the loss; our transform adds the gradient of the same R."""
    hf = hf_model("bert", "token-classification")
    peft_model = peft.get_peft_model(hf, peft.AdaLoraConfig(
        init_r=3, target_r=2, total_step=10, orth_reg_weight=0.3, target_modules=TARGETS["bert"],
        task_type="TOKEN_CLS"))
    randomise_peft_adalora(peft_model, seed=1)
    labels = torch.zeros(IDS.shape, dtype=torch.long)
    kwargs = dict(input_ids=torch.tensor(IDS), attention_mask=torch.tensor(MASK), labels=labels)
    peft_model.train()
    for module in peft_model.modules():  # deterministic forward, training mode for the regulariser
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    regularised = peft_model(**kwargs).loss
    plain = peft_model.base_model.model(**kwargs).loss
    (regularised - plain).backward()
    ours = apply_adalora(tiny_bert("token-classification"), AdaLoraConfig(
        init_r=3, target_r=2, total_step=10, orth_reg_weight=0.3, target_modules=TARGETS["bert"]))
    named = dict(peft_model.base_model.model.named_parameters())
    for path, layer in adalora_layers(ours).items():
        layer.lora_A[...] = named[f"{path}.lora_A.default"].detach().numpy().T
        layer.lora_B[...] = named[f"{path}.lora_B.default"].detach().numpy().T
    factors = [(layer.lora_A[...], layer.lora_B[...]) for layer in adalora_layers(ours).values()]
    np.testing.assert_allclose(0.3 * float(orthogonality_penalty(factors)), float(regularised - plain), rtol=1e-5)
    params = nnx.state(ours, AdaLoraParam)
    zeros = jax.tree.map(jnp.zeros_like, params)
    added, _ = orthogonal_regularization(0.3).update(zeros, optax.EmptyState(), params)
    for path in adalora_layers(ours):
        for part in ("lora_A", "lora_B"):
            node = added
            for key in path.split("."):
                node = node[int(key) if key.isdigit() else key]
            np.testing.assert_allclose(np.asarray(node[part][...]).T, named[f"{path}.{part}.default"].grad.numpy(),
                                       rtol=1e-4, atol=1e-6, err_msg=f"{path}.{part}")


@pytest.mark.slow
def test_adalora_resume_is_exact_and_exports_the_rank_pattern(tmp_path, shared_data):
    """Interrupted after its step-4 checkpoint and resumed, a run ends bit-identical to an
    uninterrupted one, allocator state included; its export carries the final rank pattern."""
    from jaxkernel.train.loop import Trainer
    from train_fixtures import lm_config, tiny_gpt2_dir

    model_dir = tiny_gpt2_dir(tmp_path, shared_data)
    adalora = ["peft.method=adalora", "peft.init_r=4", "peft.target_r=2", "peft.tinit=1", "peft.tfinal=2",
               "peft.deltaT=1", "checkpoint.async_save=false"]

    def config(name):
        return lm_config(model_dir, shared_data, str(tmp_path / name), *adalora, steps=8)

    straight = Trainer(config("straight"))
    straight.fit()

    class Interrupted(Exception):
        pass

    interrupted = Trainer(config("resumed"))
    original_save = interrupted._save

    def save_then_stop(step, metrics=None):
        original_save(step, metrics)
        if step == 4:
            interrupted.checkpointer.wait()
            raise Interrupted

    interrupted._save = save_then_stop
    with pytest.raises(Interrupted):
        interrupted.fit()
    resumed = Trainer(config("resumed"))
    assert int(resumed.state.step) == 4
    resumed.fit()
    for a, b in zip(jax.tree.leaves((straight.state.params, straight.state.opt_state)),
                    jax.tree.leaves((resumed.state.params, resumed.state.opt_state))):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    state = allocator_state(resumed.state.opt_state)
    assert isinstance(state, AdaLoraState) and int(state.count) == 8
    kept = [np.asarray(m) for m in state.masks]
    assert sum(int(m.sum()) for m in kept) == 2 * len(kept) < 4 * len(kept)  # shrunk to target_r on average
    model = resumed.model_for_inference()
    for layer, mask in zip(adalora_layers(model).values(), kept):
        assert layer.rank_pattern == tuple(bool(m) for m in mask)
        np.testing.assert_array_equal(np.asarray(layer.lora_E[...])[~mask], 0.0)  # tfinal: masked every step
    assert model.peft_config.total_step == 8
    out = resumed.export(tmp_path / "adapter", merged=False)
    saved = json.loads((out / ADAPTER_CONFIG).read_text())
    assert saved["peft_type"] == "ADALORA" and saved["total_step"] == 8
    assert sorted(sum(p) for p in saved["rank_pattern"].values()) == sorted(int(m.sum()) for m in kept)
    attach_rank_pattern(model, resumed.state.opt_state)  # idempotent


@pytest.mark.slow
def test_adalora_preset_trains_through_the_cli_and_exports_for_peft(tmp_path, shared_data, capsys):
    import transformers

    from jaxkernel.cli import main as cli_main
    from jaxkernel.config import RESOLVED_NAME, load_config
    from jaxkernel.train.loop import Trainer

    run = tmp_path / "run"
    argv = ["train", "configs/bert_ner_adalora.yaml", "train.steps=6", "train.batch_size=8", "data.max_length=32",
            "data.buckets=[32]", "data.max_train_examples=96", "data.max_eval_examples=16", "train.eval_every=6",
            f"train.run_dir={run}", "checkpoint.every=6", "logging.progress_bar=false", "logging.tensorboard=false",
            "eval.test_at_end=false", "peft.tinit=1", "peft.tfinal=1", "peft.total_step=null"]
    assert cli_main(argv) == 0, capsys.readouterr().err
    trainer = Trainer(load_config(run / RESOLVED_NAME), roles=("train", "eval"))
    assert int(trainer.state.step) == 6
    model = trainer.model_for_inference()
    layers = adalora_layers(model)
    assert len(layers) == 12 and all(layer.r == 12 for layer in layers.values())  # init_r on query/value
    assert sum(sum(layer.rank_pattern) for layer in layers.values()) == 4 * 12  # target_r = 4 on average
    assert cli_main(["export", str(run), str(tmp_path / "out"), "--adapter"]) == 0, capsys.readouterr().err
    saved = json.loads((tmp_path / "out" / ADAPTER_CONFIG).read_text())
    assert saved["peft_type"] == "ADALORA" and saved["total_step"] == 6 and saved["task_type"] == "TOKEN_CLS"
    batch = next(iter(trainer.evaluate_loader("eval")))
    base_dir = trainer.data.tokenizer.name_or_path
    hf = transformers.AutoModelForTokenClassification.from_pretrained(base_dir, num_labels=len(trainer.data.labels))
    loaded = peft.PeftModel.from_pretrained(hf, tmp_path / "out").eval()
    with torch.no_grad():
        theirs = loaded(input_ids=torch.tensor(batch["input_ids"]), attention_mask=torch.tensor(batch["attention_mask"]),
                        token_type_ids=torch.tensor(batch["token_type_ids"])).logits.numpy()
    ours = np.asarray(model(**{k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids")}))
    # The pattern's masked E entries are exactly zero after the tfinal phase, so dropping them changes nothing.
    np.testing.assert_allclose(ours, theirs, atol=1e-4)
