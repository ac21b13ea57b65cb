"""Distillation: the loss, a frozen teacher inside the jitted step, and the exported student."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch
import transformers
from flax import nnx

import jaxkernel
from jaxkernel.compress.distill import DistillOutputs, DistillationModel, distillation_loss, keep_layers, unwrap_student
from jaxkernel.train.step import init_train_state, make_train_step, model_from_state
from compress_fixtures import ner_config, tiny_bert_dir
from tiny_models import padded_batch


def test_loss_is_t2_scaled_kl_mixed_with_hard_labels():
    rng = np.random.RandomState(0)
    s, t = rng.randn(2, 3, 5).astype(np.float32), rng.randn(2, 3, 5).astype(np.float32)
    labels = np.array([[1, 2, -100], [0, -100, 4]])
    batch = {"labels": jnp.asarray(labels)}
    out = DistillOutputs(jnp.asarray(s), jnp.asarray(t), (), ())
    T, alpha = 3.0, 0.7
    loss, aux = distillation_loss("token-classification", temperature=T, alpha=alpha)(out, batch)

    def log_softmax(x):
        x = x - x.max(-1, keepdims=True)
        return x - np.log(np.exp(x).sum(-1, keepdims=True))

    ls, lt = log_softmax(s / T), log_softmax(t / T)
    kl = (np.exp(lt) * (lt - ls)).sum(-1)[labels != -100].mean()
    ce = -np.take_along_axis(log_softmax(s), np.maximum(labels, 0)[..., None], -1)[..., 0][labels != -100].mean()
    assert float(aux["kd_loss"]) == pytest.approx(kl, rel=1e-5)
    assert float(loss) == pytest.approx(alpha * T * T * kl + (1 - alpha) * ce, rel=1e-5)
    plain, _ = distillation_loss("token-classification", alpha=0.7)(jnp.asarray(s), batch)  # eval: task loss
    assert float(plain) == pytest.approx(ce, rel=1e-5)


def test_teacher_is_frozen_inside_the_jitted_step(tmp_path, minilm_dir):
    directory = tiny_bert_dir(tmp_path, minilm_dir, layers=4)
    teacher = jaxkernel.from_pretrained(directory)
    student = keep_layers(jaxkernel.from_pretrained(directory), [1, 3])
    assert student.config.num_hidden_layers == 2
    np.testing.assert_array_equal(np.asarray(student.bert.encoder.layer[1].output.dense.kernel[...]),
                                  np.asarray(teacher.bert.encoder.layer[3].output.dense.kernel[...]))
    teacher_before = np.asarray(teacher.bert.encoder.layer[0].attention.self.query.kernel[...])
    for _, module in nnx.iter_modules(student):  # a fixed objective, so three steps must lower it
        if isinstance(module, nnx.Dropout):
            module.rate = 0.0
    model = DistillationModel(student, teacher, hidden_map=(1, 3))
    tx = optax.adam(1e-2)
    model_def, state = init_train_state(model, tx)
    assert all("teacher" not in str(path) for path, _ in jax.tree_util.tree_flatten_with_path(state.params)[0])
    step = make_train_step(model_def, tx, loss_fn=distillation_loss("token-classification", hidden_weight=1.0))
    ids, mask = padded_batch(1000, lengths=(7, 5), seed=0)
    batch = {"input_ids": jnp.asarray(ids), "attention_mask": jnp.asarray(mask),
             "labels": jnp.asarray(np.where(mask == 1, 1, -100))}
    losses = []
    for _ in range(3):
        state, metrics = step(state, batch)
        losses.append(float(metrics["loss"]))
        assert {"kd_loss", "hard_loss", "hidden_mse"} <= set(metrics)
    assert losses[-1] < losses[0]
    trained = model_from_state(model_def, state)
    np.testing.assert_array_equal(np.asarray(trained.teacher.bert.encoder.layer[0].attention.self.query.kernel[...]),
                                  teacher_before)
    out = trained(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])  # eval: the student's logits
    np.testing.assert_allclose(np.asarray(out), np.asarray(unwrap_student(trained)(batch["input_ids"], batch["attention_mask"])))


def test_distill_run_exports_a_three_layer_student(tmp_path, shared_data, minilm_dir):
    from jaxkernel.train.loop import Trainer

    teacher = tiny_bert_dir(tmp_path, minilm_dir, layers=6, name="teacher")
    config = ner_config(teacher, shared_data, tmp_path / "run", f"distill.teacher={teacher}",
                        "distill.student_layers=[0,2,4]", "distill.hidden_weight=0.5", "distill.temperature=2",
                        steps=3)
    trainer = Trainer(config)
    results = trainer.fit()
    assert "f1" in results["eval"]
    out = trainer.export(tmp_path / "student")
    hf_config = json.loads((out / "config.json").read_text())
    assert hf_config["num_hidden_layers"] == 3
    ours = unwrap_student(trainer.model_for_inference())
    ids, mask = padded_batch(30522, lengths=(9, 4), seed=3)
    theirs = transformers.BertForTokenClassification.from_pretrained(out).eval()
    assert len(theirs.bert.encoder.layer) == 3
    with torch.no_grad():
        expected = theirs(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask)).logits.numpy()
    np.testing.assert_allclose(np.asarray(ours(jnp.asarray(ids), jnp.asarray(mask))), expected, atol=1e-5)


def test_student_layers_without_a_teacher_cut_the_model(tmp_path, shared_data, minilm_dir):
    """The no-distillation baseline: the same cut student, trained on hard labels alone."""
    from jaxkernel.compress.distill import DistillationModel
    from jaxkernel.train.build import build_model
    from compress_fixtures import WIKIANN_LABELS

    teacher_dir = tiny_bert_dir(tmp_path, minilm_dir, layers=6, name="teacher")
    config = ner_config(teacher_dir, shared_data, tmp_path / "run", "distill.student_layers=[0,2,4]")
    model = build_model(config, labels=tuple(WIKIANN_LABELS))
    assert not isinstance(model, DistillationModel)
    assert model.config.num_hidden_layers == 3 and len(model.bert.encoder.layer) == 3
    teacher = jaxkernel.from_pretrained(teacher_dir)
    for ours, theirs in zip(model.bert.encoder.layer, [teacher.bert.encoder.layer[i] for i in (0, 2, 4)]):
        np.testing.assert_array_equal(np.asarray(ours.output.dense.kernel[...]), np.asarray(theirs.output.dense.kernel[...]))


def test_distillation_on_a_mesh_shards_the_teacher_and_equals_one_device(tmp_path, minilm_dir):
    """The frozen teacher is placed with the student's rules (fsdp over 4 devices) and the steps equal one device's."""
    from jaxkernel.sharding.mesh import MeshConfig, make_mesh
    from jaxkernel.sharding.placement import shard_batch

    directory = tiny_bert_dir(tmp_path, minilm_dir, layers=4)
    ids, mask = padded_batch(1000, lengths=(7, 5, 6, 3), seed=0)
    batch = {"input_ids": ids, "attention_mask": mask, "labels": np.where(mask == 1, 1, -100).astype(np.int32)}
    loss_fn = distillation_loss("token-classification", hidden_weight=1.0)
    results = []
    for mesh in (None, make_mesh(MeshConfig(preset="fsdp", shape=(4,), axes=("fsdp",)), jax.devices()[:4])):
        model = DistillationModel(keep_layers(jaxkernel.from_pretrained(directory), [1, 3]),
                                  jaxkernel.from_pretrained(directory), hidden_map=(1, 3))
        tx = optax.adam(1e-2)
        model_def, state = init_train_state(model, tx, mesh=mesh, rules="fsdp" if mesh else None)
        step = make_train_step(model_def, tx, loss_fn=loss_fn)
        data = shard_batch(batch, mesh) if mesh is not None else jax.tree.map(jnp.asarray, batch)
        for _ in range(2):
            state, metrics = step(state, data)
        if mesh is not None:
            teacher = [x for path, x in jax.tree_util.tree_flatten_with_path(state.frozen)[0]
                       if "teacher" in jax.tree_util.keystr(path) and getattr(x, "ndim", 0) == 2]
            assert teacher and any(not x.sharding.is_fully_replicated for x in teacher), "teacher left replicated"
        results.append((float(metrics["loss"]), jax.tree.map(np.asarray, state.params)))
    (loss_one, params_one), (loss_mesh, params_mesh) = results
    assert loss_mesh == pytest.approx(loss_one, rel=1e-5)
    for a, b in zip(jax.tree.leaves(params_one), jax.tree.leaves(params_mesh)):
        # Adam moves every weight by ~lr (1e-2) whatever its gradient's size, so a weight whose gradient is
        # near zero turns the devices' different reduction order (~1e-7) into up to ~2e-5; a wrong teacher,
        # mask or gradient would move weights by ~lr.
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-4)


def test_default_hidden_map_puts_the_last_student_layer_on_the_teachers_last(tmp_path, shared_data, minilm_dir):
    from jaxkernel.train.build import build_model
    from compress_fixtures import WIKIANN_LABELS

    teacher_dir = tiny_bert_dir(tmp_path, minilm_dir, layers=6, name="teacher")
    config = ner_config(teacher_dir, shared_data, tmp_path / "run", f"distill.teacher={teacher_dir}",
                        "distill.student_layers=[0,2,4]", "distill.hidden_weight=1.0")
    model = build_model(config, labels=tuple(WIKIANN_LABELS))
    assert isinstance(model, DistillationModel) and tuple(model.hidden_map) == (1, 3, 5)
