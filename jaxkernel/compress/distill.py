"""Knowledge distillation: a student learns from a frozen teacher inside the same jitted step.

``DistillationModel(student, teacher)`` holds both. The teacher's weights are re-typed
``TeacherParam`` (an ``nnx.Variable``, not an ``nnx.Param``): the train state carries them in
``frozen``, so they are never trained, never checkpointed (rebuilt from the config) and never
exported. In train mode the wrapper returns ``DistillOutputs`` (student and teacher outputs and,
when asked, every layer's hidden state); in eval mode only the student's outputs, so evaluation,
prediction and metrics are the student's.

Loss (Hinton et al. 2015; hidden-state MSE as in TinyBERT)::

    alpha * T^2 * KL(softmax(teacher / T) || softmax(student / T)) + (1 - alpha) * task loss
      + hidden_weight * mean over mapped layers of MSE(student hidden, teacher hidden)

over the positions the task loss counts. Token classification, sequence classification and
causal LM.

Example::

    teacher = jaxkernel.from_pretrained(teacher_dir, task="token-classification")
    student = keep_layers(jaxkernel.from_pretrained(teacher_dir), [0, 2, 4])
    model = DistillationModel(student, teacher, hidden_map=(1, 3, 5))
    loss_fn = distillation_loss(model.task, temperature=2.0, alpha=0.5, hidden_weight=1.0)
    model_def, state = init_train_state(model, tx)
    step = make_train_step(model_def, tx, loss_fn=loss_fn)
    ...
    save_pretrained(unwrap_student(model_from_state(model_def, state)), "out/student")
"""

from __future__ import annotations

import dataclasses
import inspect
from typing import Any, NamedTuple, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from jaxkernel.models.layers import capture_layer_outputs
from jaxkernel.models.registry import family_of
from jaxkernel.train.losses import IGNORE_INDEX, loss_for_task

DISTILL_TASKS = ("token-classification", "sequence-classification", "causal-lm")


class TeacherParam(nnx.Variable):
    """A frozen teacher weight: not an ``nnx.Param``, so no optimizer, checkpoint or export sees it."""


class DistillOutputs(NamedTuple):
    student: Any
    teacher: Any
    student_hidden: tuple  # (B, T, D) per mapped layer, or () without a hidden-state loss
    teacher_hidden: tuple


def _path(path) -> str:
    return ".".join(str(p) for p in path)


def _owner(root, path):
    node = root
    for key in path[:-1]:
        node = node[key] if isinstance(key, int) else getattr(node, key)
    return node


def freeze_teacher(teacher: nnx.Module) -> nnx.Module:
    """Re-type the teacher's parameters as ``TeacherParam`` and switch its dropout off, in place."""
    for path, var in list(nnx.iter_graph(teacher)):
        if isinstance(var, nnx.Param):
            meta = {k: v for k, v in var.get_metadata().items() if k in ("out_sharding", "eager_sharding")}
            setattr(_owner(teacher, path), path[-1], TeacherParam(var[...], **meta))
        elif isinstance(var, nnx.Dropout):
            var.rate = 0.0  # the teacher always runs as in eval, also inside the train step
    return teacher


def _layer_prefix(model: nnx.Module) -> str:
    first = family_of(model).layers(model)[0]
    for path, node in nnx.iter_graph(model):
        if node is first:
            return _path(path[:-1]) + "."
    raise ValueError("layer stack not found")


def keep_layers(model: nnx.Module, layers: Sequence[int]) -> nnx.Module:
    """A new model with only transformer layers ``layers`` (in that order), everything else copied.

    The layer count field is found through the registry's dims (``num_hidden_layers``, ``n_layer``...).
    """
    from jaxkernel.compress.prune import _config_field

    family = family_of(model)
    config = model.config
    total = family.dims(config).layers
    layers = list(layers)
    if not layers or any(not 0 <= i < total for i in layers) or layers != sorted(set(layers)):
        raise ValueError(f"student_layers={layers}: give increasing layer numbers in 0..{total - 1}")
    changes = {_config_field(config, "layers", len(layers)): len(layers)}
    if getattr(config, "pruned_heads", ()):
        old = dict(config.pruned_heads)
        changes["pruned_heads"] = tuple((j, old[i]) for j, i in enumerate(layers) if i in old)
    student = family.build(model.task, dataclasses.replace(config, **changes))
    source = {_path(p): v for p, v in nnx.iter_graph(model) if isinstance(v, nnx.Param)}
    prefix = _layer_prefix(model)
    for path, var in nnx.iter_graph(student):
        if not isinstance(var, nnx.Param):
            continue
        name = _path(path)
        if name.startswith(prefix):
            j, rest = name[len(prefix):].split(".", 1)
            name = f"{prefix}{layers[int(j)]}.{rest}"
        var[...] = source[name][...]
    return student


def _accepts(model: nnx.Module) -> tuple[str, ...]:
    from jaxkernel.train.step import _model_inputs

    return _model_inputs(model)


class DistillationModel(nnx.Module):
    """Student + frozen teacher; see the module docstring. ``task``/``config`` are the student's."""

    def __init__(self, student: nnx.Module, teacher: nnx.Module, *, hidden_map: Sequence[int] | None = None):
        if student.task != teacher.task or student.task not in DISTILL_TASKS:
            raise ValueError(
                f"student task {student.task!r} and teacher task {teacher.task!r} must be the same, one of {DISTILL_TASKS}"
            )
        s_labels, t_labels = getattr(student.config, "labels", None), getattr(teacher.config, "labels", None)
        if s_labels and t_labels and tuple(s_labels) != tuple(t_labels):
            raise ValueError(f"teacher labels {list(t_labels)} differ from the student's {list(s_labels)}: "
                             "distil a teacher fine-tuned on the same label set")
        s_n, t_n = getattr(student.config, "num_labels", None), getattr(teacher.config, "num_labels", None)
        if student.task != "causal-lm" and s_n != t_n:
            raise ValueError(f"the teacher has {t_n} labels and the student {s_n}: they must predict the same classes")
        self.student = student
        self.teacher = freeze_teacher(teacher)
        self.config = student.config
        self.task = student.task
        self.head_modules = tuple(f"student.{h}" for h in getattr(student, "head_modules", ()))
        self.hidden_map = None if hidden_map is None else tuple(int(i) for i in hidden_map)
        if self.hidden_map is not None:
            s_dims, t_dims = family_of(student).dims(student.config), family_of(teacher).dims(teacher.config)
            if len(self.hidden_map) != s_dims.layers or any(not 0 <= i < t_dims.layers for i in self.hidden_map):
                raise ValueError(f"hidden_map {list(self.hidden_map)} must name one teacher layer (0..{t_dims.layers - 1}) "
                                 f"per student layer ({s_dims.layers})")
            if s_dims.width != t_dims.width:
                raise ValueError(f"hidden-state loss needs equal widths: student {s_dims.width}, teacher {t_dims.width}")
        self.training = False  # set by nnx.view(deterministic=...): the train step's graph returns DistillOutputs

    def set_view(self, deterministic: bool | None = None, **_):
        if deterministic is not None:
            self.training = not deterministic

    def __call__(self, **inputs):
        from jaxkernel.train.step import forward

        if not self.training:
            return forward(self.student, inputs, _accepts(self.student))
        with capture_layer_outputs() as s_hidden:
            student = forward(self.student, inputs, _accepts(self.student))
        with capture_layer_outputs() as t_hidden:
            teacher = forward(self.teacher, inputs, _accepts(self.teacher))
        teacher = jax.tree.map(jax.lax.stop_gradient, teacher)
        if self.hidden_map is None:
            return DistillOutputs(student, teacher, (), ())
        mapped = tuple(jax.lax.stop_gradient(t_hidden[i]) for i in self.hidden_map)
        return DistillOutputs(student, teacher, tuple(s_hidden), mapped)


def unwrap_student(model: nnx.Module) -> nnx.Module:
    """The student of a ``DistillationModel`` (any other model unchanged): what gets exported."""
    return model.student if isinstance(model, DistillationModel) else model


def _soft_kl(student, teacher, temperature: float):
    """KL(p_teacher || p_student) of T-softened distributions over the last axis, per position."""
    s = jax.nn.log_softmax(student.astype(jnp.float32) / temperature, axis=-1)
    t = jax.nn.log_softmax(teacher.astype(jnp.float32) / temperature, axis=-1)
    return jnp.sum(jnp.exp(t) * (t - s), axis=-1)


def _valid(task: str, outputs, batch):
    """(student logits, teacher logits, valid positions) over the items the task loss counts."""
    s, t = outputs.student, outputs.teacher
    if task == "causal-lm":
        labels = batch.get("labels", batch["input_ids"])[:, 1:]
        valid = labels != IGNORE_INDEX
        if "attention_mask" in batch:
            valid = valid & batch["attention_mask"][:, 1:].astype(bool)
        return s[:, :-1], t[:, :-1], valid
    return s, t, batch["labels"] != IGNORE_INDEX


def distillation_loss(
    task: str, *, temperature: float = 2.0, alpha: float = 0.5, hidden_weight: float = 0.0
):
    """``(outputs, batch) -> (loss, aux)`` for the train step; plain task loss on student-only outputs.

    aux adds ``kd_loss`` (the KL, before T^2), ``hard_loss`` and, with ``hidden_weight``, ``hidden_mse``.
    """
    if task not in DISTILL_TASKS:
        raise ValueError(f"distillation supports {DISTILL_TASKS}, not {task!r}")
    hard = loss_for_task(task)

    def loss_fn(outputs, batch):
        if not isinstance(outputs, DistillOutputs):
            return hard(outputs, batch)
        hard_loss, aux = hard(outputs.student, batch)
        s, t, valid = _valid(task, outputs, batch)
        denom = jnp.maximum(valid.sum(), 1).astype(jnp.float32)
        if s.shape[-1] == 1:  # regression head: match the teacher's value
            per_item = jnp.square(s[..., 0].astype(jnp.float32) - t[..., 0].astype(jnp.float32))
            kd = jnp.where(valid, per_item, 0.0).sum() / denom
            scale = 1.0
        else:
            kd = jnp.where(valid, _soft_kl(s, t, temperature), 0.0).sum() / denom
            scale = temperature**2
        loss = alpha * scale * kd + (1.0 - alpha) * hard_loss
        aux = {**aux, "kd_loss": kd, "hard_loss": hard_loss}
        if hidden_weight and outputs.student_hidden:
            mask = batch.get("attention_mask")
            mses = []
            for sh, th in zip(outputs.student_hidden, outputs.teacher_hidden):
                err = jnp.mean(jnp.square(sh.astype(jnp.float32) - th.astype(jnp.float32)), axis=-1)  # (B, T)
                if mask is None:
                    mses.append(err.mean())
                else:
                    m = mask.astype(jnp.float32)
                    mses.append((err * m).sum() / jnp.maximum(m.sum(), 1.0))
            aux["hidden_mse"] = sum(mses) / len(mses)
            loss = loss + hidden_weight * aux["hidden_mse"]
        return loss, aux

    return loss_fn


# -- run config ---------------------------------------------------------------------------------


def student_from_config(model: nnx.Module, config) -> nnx.Module:
    """The student: ``model`` (loaded from model.path), cut to ``distill.student_layers`` if set."""
    layers = config.distill.student_layers
    return model if layers is None else keep_layers(model, layers)


def attach_teacher(student: nnx.Module, config, labels=None) -> DistillationModel:
    """Wrap ``student`` with the frozen teacher that ``distill.teacher`` names."""
    from jaxkernel.config import resolve_path
    from jaxkernel.hf.pretrained import from_pretrained

    d = config.distill
    # The teacher keeps its own head and label names; DistillationModel checks they are the student's.
    teacher = from_pretrained(resolve_path(d.teacher), task=config.model.task, seed=config.train.seed)
    hidden_map = None
    if d.hidden_weight:
        hidden_map = d.hidden_map
        if hidden_map is None:  # evenly spaced, the last student layer on the teacher's last (whose output the head reads)
            n_s = family_of(student).dims(student.config).layers
            n_t = family_of(teacher).dims(teacher.config).layers
            hidden_map = tuple(round((j + 1) * n_t / n_s) - 1 for j in range(n_s))
    return DistillationModel(student, teacher, hidden_map=hidden_map)


def loss_from_config(config):
    d = config.distill
    return distillation_loss(config.model.task, temperature=d.temperature, alpha=d.alpha,
                             hidden_weight=d.hidden_weight)


__all__ = [
    "DistillOutputs", "DistillationModel", "TeacherParam", "attach_teacher", "distillation_loss", "freeze_teacher",
    "keep_layers", "loss_from_config", "student_from_config", "unwrap_student",
]
