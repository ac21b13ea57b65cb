"""LoRA surgery: targeting like PEFT, no-op when fresh, exact merge, training only what should train."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import peft
import pytest
from flax import nnx

import jaxkernel
from jaxkernel.models.bert import BERT_TASKS
from jaxkernel.models.gpt2 import GPT2_TASKS
from jaxkernel.peft import LoraConfig, LoraLinear, apply_lora, lora_layers, merge_lora, trainable_filter, unmerge_lora
from peft_helpers import (
    BERT_LORA_TARGETS, GPT2_LORA_TARGETS, lora_paths, ours_output, peft_lora_paths, randomise_trainable,
)
from tiny_models import BERT_CONFIGS, GPT2_CONFIGS, hf_bert, hf_gpt2, padded_batch

BERT_CFG = jaxkernel.BertConfig(**BERT_CONFIGS["h36-heads3"], num_labels=3)
GPT2_CFG = jaxkernel.Gpt2Config(**GPT2_CONFIGS["e36-heads3"], num_labels=3, pad_token_id=0)


def bert(task="token-classification", seed=0):
    config = dataclasses.replace(BERT_CFG, num_labels=2) if task == "question-answering" else BERT_CFG
    return BERT_TASKS[task](config, rngs=nnx.Rngs(seed))


def gpt2(task="causal-lm", seed=0):
    return GPT2_TASKS[task](GPT2_CFG, rngs=nnx.Rngs(seed))


IDS, MASK = padded_batch(97, lengths=(9, 6, 3))


@pytest.mark.parametrize(
    "family,task",
    [("bert", t) for t in BERT_TASKS] + [("gpt2", t) for t in GPT2_TASKS],
)
def test_fresh_lora_leaves_every_head_unchanged(family, task):
    model = bert(task) if family == "bert" else gpt2(task)
    targets = BERT_LORA_TARGETS if family == "bert" else GPT2_LORA_TARGETS
    before = ours_output(model, task, IDS, MASK)
    apply_lora(model, LoraConfig(r=4, alpha=8, target_modules=targets))
    per_layer = 6 if family == "bert" else 4
    assert len(lora_layers(model)) == per_layer * 2
    after = ours_output(model, task, IDS, MASK)
    np.testing.assert_allclose(after, before, atol=1e-5, rtol=0)
    # ...and is not a no-op once B moves: the adapter is really in the forward path.
    randomise_trainable(model, seed=1)
    assert np.abs(ours_output(model, task, IDS, MASK) - before).max() > 1e-3


@pytest.mark.parametrize(
    "targets",
    [
        ["query", "value"],
        ["attention.output.dense"],
        ["output.dense"],  # suffix: attention.output.dense and layer.N.output.dense
        ["dense"],
        r".*\.self\.(query|key)",
        r"bert\.encoder\.layer\.1\..*dense",
        ["bert.encoder.layer.0.attention.self.value", "classifier"],
    ],
)
def test_targets_select_the_same_modules_as_peft(targets):
    hf = hf_bert("h36-heads3", "token-classification", num_labels=3)
    wrapped = peft.get_peft_model(hf, peft.LoraConfig(r=2, target_modules=targets, modules_to_save=[]))
    model = bert()
    apply_lora(model, LoraConfig(r=2, target_modules=targets, modules_to_save=()))
    assert lora_paths(model) == peft_lora_paths(wrapped)
    assert lora_paths(model)


def test_gpt2_targets_match_peft():
    for targets in (["c_attn"], ["mlp.c_proj"], r".*h\.1\.(attn|mlp)\.c_.*"):
        hf = hf_gpt2("e36-heads3", "causal-lm")
        wrapped = peft.get_peft_model(hf, peft.LoraConfig(r=2, target_modules=targets, fan_in_fan_out=True))
        model = gpt2()
        apply_lora(model, LoraConfig(r=2, target_modules=targets))
        assert lora_paths(model) == peft_lora_paths(wrapped) != []


def test_zero_matches_lists_candidates():
    with pytest.raises(ValueError, match=r"\['querry'\].*matched no module.*Candidate names: .*query.*value"):
        apply_lora(bert(), LoraConfig(target_modules=["querry"]))
    # A plain string is a regex over the whole path, as in PEFT: "query" alone matches nothing.
    with pytest.raises(ValueError, match="regex that must match the whole path"):
        apply_lora(bert(), LoraConfig(target_modules="query"))


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(r=0), "rank r=0 must be a positive integer"),
        (dict(r=-2), "rank r=-2"),
        (dict(r=2.5), "rank r=2.5"),
        (dict(alpha=0), "alpha=0 must be positive"),
        (dict(dropout=1.0), r"dropout=1.0 must be in \[0, 1\)"),
        (dict(target_modules="(unclosed"), "not a valid regular expression"),
        (dict(target_modules=[]), "matched no module"),
        (dict(modules_to_save="classifier"), "list of module names"),
    ],
)
def test_bad_config_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        apply_lora(bert(), LoraConfig(**kwargs))


def test_non_linear_targets_overlaps_and_double_application_error():
    with pytest.raises(ValueError, match="is a BertSelfAttention, not a linear layer.*query"):
        apply_lora(bert(), LoraConfig(target_modules=["attention.self"]))
    with pytest.raises(ValueError, match="inside modules_to_save"):
        apply_lora(bert(), LoraConfig(target_modules=["classifier"], modules_to_save=["classifier"]))
    model = apply_lora(bert(), LoraConfig())
    with pytest.raises(ValueError, match="already has a LoraConfig adapter"):
        apply_lora(model, LoraConfig(target_modules=["key"]))


def test_scale_rslora_and_layout():
    model = apply_lora(bert(), LoraConfig(r=4, alpha=6, target_modules=["query"], use_rslora=True))
    layer = model.bert.encoder.layer[0].attention.self.query
    assert isinstance(layer, LoraLinear) and layer.scale == pytest.approx(6 / 2.0)
    assert layer.lora_A.shape == (36, 4) and layer.lora_B.shape == (4, 36)
    assert np.all(np.asarray(layer.lora_B[...]) == 0) and np.abs(np.asarray(layer.lora_A[...])).max() <= 1 / 6
    assert layer.lora_A.get_metadata()["out_sharding"] == ("embed", "lora_rank")
    assert layer.lora_B.get_metadata()["out_sharding"] == ("lora_rank", "heads")
    randomise_trainable(model, seed=3)
    x = jax.random.normal(jax.random.key(0), (2, 5, 36))
    expected = layer.base_layer(x) + 3.0 * (x @ layer.lora_A[...] @ layer.lora_B[...])
    np.testing.assert_allclose(layer(x), expected, atol=1e-5)
    assert LoraConfig(r=4, alpha=8).scale == 2.0


@pytest.mark.parametrize("family", ["bert", "gpt2"])
def test_merge_and_unmerge_are_exact(family):
    model = bert() if family == "bert" else gpt2()
    targets = BERT_LORA_TARGETS if family == "bert" else GPT2_LORA_TARGETS
    task = model.task
    apply_lora(model, LoraConfig(r=4, alpha=8, target_modules=targets))
    randomise_trainable(model, seed=2)
    kernels = {p: np.asarray(layer.base_layer.kernel[...]) for p, layer in lora_layers(model).items()}
    unmerged = ours_output(model, task, IDS, MASK)
    merge_lora(model)
    assert all(layer.merged for layer in lora_layers(model).values())
    assert any(np.abs(np.asarray(l.base_layer.kernel[...]) - kernels[p]).max() > 1e-3 for p, l in lora_layers(model).items())
    # Folding B @ A into W rounds once per weight: float32 agreement is relative (seen 1.2e-5 on a logit of 2.4).
    np.testing.assert_allclose(ours_output(model, task, IDS, MASK), unmerged, atol=1e-5, rtol=1e-5)
    merge_lora(model)  # idempotent
    np.testing.assert_allclose(ours_output(model, task, IDS, MASK), unmerged, atol=1e-5, rtol=1e-5)
    unmerge_lora(model)
    for path, layer in lora_layers(model).items():
        np.testing.assert_allclose(np.asarray(layer.base_layer.kernel[...]), kernels[path], atol=1e-6, rtol=0)
    np.testing.assert_allclose(ours_output(model, task, IDS, MASK), unmerged, atol=1e-5, rtol=1e-5)


def test_merge_and_unload_gives_a_plain_model():
    model = apply_lora(bert("sequence-classification"), LoraConfig(target_modules=BERT_LORA_TARGETS))
    randomise_trainable(model, seed=4)
    expected = ours_output(model, model.task, IDS, MASK)
    jaxkernel.merge_and_unload(model)
    assert not lora_layers(model) and not hasattr(model, "peft_config")
    assert trainable_filter(model) is nnx.Param
    np.testing.assert_allclose(ours_output(model, model.task, IDS, MASK), expected, atol=1e-5, rtol=0)


def test_modules_to_save_defaults_follow_peft_task_types():
    seq = apply_lora(bert("sequence-classification"), LoraConfig())
    assert isinstance(seq.classifier.kernel, jaxkernel.SavedModuleParam)
    qa = apply_lora(bert("question-answering"), LoraConfig())
    assert isinstance(qa.qa_outputs.bias, jaxkernel.SavedModuleParam)
    lm = apply_lora(gpt2("causal-lm"), LoraConfig(target_modules=["c_attn"]))
    assert not any(isinstance(v, jaxkernel.SavedModuleParam) for _, v in nnx.iter_graph(lm))
    none = apply_lora(bert("sequence-classification"), LoraConfig(modules_to_save=()))
    assert type(none.classifier.kernel) is nnx.Param
    mlm = apply_lora(bert("masked-lm"), LoraConfig(modules_to_save=["cls"]))
    assert isinstance(mlm.cls.predictions.transform.dense.kernel, jaxkernel.SavedModuleParam)
    assert type(mlm.bert.embeddings.word_embeddings.embedding) is nnx.Param  # tied decoder stays frozen


def test_trainable_filter_and_counts():
    model = bert("sequence-classification")
    assert trainable_filter(model) is nnx.Param
    trainable, total = jaxkernel.count_parameters(model)
    assert trainable == total > 0
    apply_lora(model, LoraConfig(r=2, target_modules=["query", "value"]))
    lora = 2 * 2 * (36 * 2 + 2 * 36)  # layers * (query, value) * (A + B)
    head = 36 * 3 + 3
    trainable, total2 = jaxkernel.count_parameters(model)
    assert (trainable, total2) == (lora + head, total + lora)
    line = jaxkernel.print_trainable_parameters(model)
    assert line == f"trainable params: {lora + head:,d} || all params: {total + lora:,d} || trainable%: {100 * (lora + head) / (total + lora):.4f}"


def _leaves(state):
    def array(x):
        return np.asarray(jax.random.key_data(x) if jnp.issubdtype(x.dtype, jax.dtypes.prng_key) else x)

    return {jax.tree_util.keystr(path): array(x) for path, x in jax.tree_util.tree_flatten_with_path(state)[0]}


def test_gradient_step_changes_only_trainable_and_optimizer_holds_only_them():
    model = apply_lora(bert("sequence-classification"), LoraConfig(r=4, alpha=8, target_modules=BERT_LORA_TARGETS))
    randomise_trainable(model, seed=5)  # non-zero B so that A gets gradients too
    trainable_count, total = jaxkernel.count_parameters(model)
    labels = jnp.array([0, 2, 1])
    graphdef, trainable, frozen = nnx.split(model, trainable_filter(model), ...)

    def loss_fn(trainable, frozen):
        logits = nnx.merge(graphdef, trainable, frozen)(IDS, MASK)
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

    tx = optax.adam(1e-2)
    opt_state = tx.init(trainable)
    state_size = sum(x.size for x in jax.tree.leaves(opt_state) if x.ndim > 0)
    assert state_size == 2 * trainable_count  # Adam: mu and nu, for trainable params only
    assert sum(x.size for x in jax.tree.leaves(trainable)) == trainable_count < total

    before_t, before_f = _leaves(trainable), _leaves(frozen)
    loss_before, grads = jax.value_and_grad(loss_fn)(trainable, frozen)
    updates, opt_state = tx.update(grads, opt_state, trainable)
    nnx.update(model, optax.apply_updates(trainable, updates))
    _, after_t, after_f = nnx.split(model, trainable_filter(model), ...)
    assert loss_fn(after_t, after_f) < loss_before
    after_t, after_f = _leaves(after_t), _leaves(after_f)
    assert after_f.keys() == before_f.keys() and after_t.keys() == before_t.keys()
    for path in before_f:
        np.testing.assert_array_equal(after_f[path], before_f[path], err_msg=path)
    for path in before_t:
        assert np.abs(after_t[path] - before_t[path]).max() > 0, path

    # nnx.Optimizer with the same filter holds state for exactly the trainable parameters.
    optimizer = nnx.Optimizer(model, optax.sgd(1e-2, momentum=0.9), wrt=trainable_filter(model))
    momentum = sum(x.size for x in jax.tree.leaves(nnx.state(optimizer, nnx.OptState)) if x.ndim > 0)
    assert momentum == trainable_count


def test_dropout_is_active_only_in_training():
    model = apply_lora(bert(), LoraConfig(dropout=0.5))
    randomise_trainable(model, seed=6)
    eval_out = ours_output(model, model.task, IDS, MASK)
    np.testing.assert_array_equal(ours_output(model, model.task, IDS, MASK), eval_out)
    model.train()
    assert np.abs(ours_output(model, model.task, IDS, MASK) - eval_out).max() > 1e-4
    model.eval()


def test_lora_wraps_an_int8_base_layer():
    from jaxkernel.quant.transform import quantize_model

    model = quantize_model(bert("sequence-classification"))
    before = ours_output(model, model.task, IDS, MASK)
    apply_lora(model, LoraConfig(r=2, target_modules=["query", "value"]))
    layer = model.bert.encoder.layer[0].attention.self.query
    assert type(layer.base_layer).__name__ == "Int8Linear"
    assert layer.lora_A.get_metadata()["out_sharding"][1] == "lora_rank"
    np.testing.assert_allclose(ours_output(model, model.task, IDS, MASK), before, atol=1e-5, rtol=0)
    randomise_trainable(model, seed=7)
    assert np.abs(ours_output(model, model.task, IDS, MASK) - before).max() > 1e-3
    with pytest.raises(TypeError, match="no float kernel"):
        merge_lora(model)
