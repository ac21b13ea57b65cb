"""BERT encoder and the heads users fine-tune, as Flax NNX modules.

Attribute names mirror Hugging Face (``encoder.layer[i].attention.self.query``) so
the HF mapping table (``jaxkernel.hf.bert``) is a handful of rules.

Example::

    config = BertConfig(vocab_size=30522, hidden_size=384, num_hidden_layers=6,
                        num_attention_heads=12, intermediate_size=1536, num_labels=7)
    model = BertForTokenClassification(config, rngs=nnx.Rngs(0))
    logits = model(input_ids, attention_mask)          # (B, T, 7)
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from jaxkernel.models.attention import attention, padding_mask
from jaxkernel.models.dropout import dropout
from jaxkernel.models.layers import ACTIVATIONS, Embed, LayerNorm, Linear, constrain, logical_param, run_layer


@dataclasses.dataclass(frozen=True)
class BertConfig:
    """Architecture and head hyper-parameters; field names follow HF's BertConfig."""

    vocab_size: int = 30522
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    initializer_range: float = 0.02
    layer_norm_eps: float = 1e-12
    pad_token_id: int = 0
    classifier_dropout: float | None = None
    num_labels: int = 2
    labels: tuple[str, ...] | None = None  # label names, index = class id
    dtype: str | None = None  # compute dtype, e.g. "bfloat16"; params stay float32
    # Heads removed by structured pruning (jaxkernel.compress.prune), HF's ``pruned_heads`` as
    # ((layer, (head, ...)), ...) in original head numbers: that layer's attention is smaller.
    pruned_heads: tuple[tuple[int, tuple[int, ...]], ...] = ()

    def __post_init__(self):
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size {self.hidden_size} is not divisible by num_attention_heads "
                f"{self.num_attention_heads}: pick sizes where hidden_size = heads * head_dim"
            )
        if self.hidden_act not in ACTIVATIONS:
            raise ValueError(f"hidden_act {self.hidden_act!r} is not supported; use one of {sorted(ACTIVATIONS)}")
        if self.labels is not None and len(self.labels) != self.num_labels:
            raise ValueError(f"{len(self.labels)} label names given for num_labels={self.num_labels}")
        for layer, heads in self.pruned_heads:
            if not 0 <= layer < self.num_hidden_layers or not set(heads) <= set(range(self.num_attention_heads)):
                raise ValueError(
                    f"pruned_heads names layer {layer} heads {list(heads)}; layers are 0..{self.num_hidden_layers - 1} "
                    f"and heads 0..{self.num_attention_heads - 1}"
                )
            if len(set(heads)) >= self.num_attention_heads:
                raise ValueError(f"pruned_heads removes every head of layer {layer}: keep at least one")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    def heads_in_layer(self, layer: int) -> int:
        """Attention heads layer ``layer`` keeps after ``pruned_heads``."""
        removed = dict(self.pruned_heads).get(layer, ())
        return self.num_attention_heads - len(set(removed))

    @property
    def compute_dtype(self):
        return None if self.dtype is None else jnp.dtype(self.dtype)


class EncoderOutput(NamedTuple):
    last_hidden_state: jax.Array  # (B, T, D)
    pooler_output: jax.Array | None  # (B, D)


def _linear(config: BertConfig, n_in: int, n_out: int, axes, rngs: nnx.Rngs) -> Linear:
    return Linear(n_in, n_out, axes=axes, stddev=config.initializer_range, dtype=config.compute_dtype, rngs=rngs)


class BertEmbeddings(nnx.Module):
    def __init__(self, config: BertConfig, *, rngs: nnx.Rngs):
        init = dict(stddev=config.initializer_range, dtype=config.compute_dtype, rngs=rngs)
        self.word_embeddings = Embed(config.vocab_size, config.hidden_size, **init)
        self.position_embeddings = Embed(config.max_position_embeddings, config.hidden_size, axes=(None, "embed"), **init)
        self.token_type_embeddings = Embed(config.type_vocab_size, config.hidden_size, axes=(None, "embed"), **init)
        self.LayerNorm = LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = dropout(config.hidden_dropout_prob, rngs)

    def __call__(self, input_ids, token_type_ids, position_ids):
        x = self.word_embeddings(input_ids) + self.token_type_embeddings(token_type_ids)
        x = x + self.position_embeddings(position_ids)
        return self.dropout(self.LayerNorm(x))


class BertSelfAttention(nnx.Module):
    def __init__(self, config: BertConfig, *, num_heads: int | None = None, rngs: nnx.Rngs):
        self.num_heads = config.num_attention_heads if num_heads is None else num_heads  # fewer once pruned
        d, inner = config.hidden_size, self.num_heads * config.head_dim
        self.query = _linear(config, d, inner, ("embed", "heads"), rngs)
        self.key = _linear(config, d, inner, ("embed", "heads"), rngs)
        self.value = _linear(config, d, inner, ("embed", "heads"), rngs)
        self.dropout = dropout(config.attention_probs_dropout_prob, rngs)

    def __call__(self, x, mask, prefix_kv=None):
        def split_heads(t):  # (B, T, D) -> (B, T, N, H)
            return t.reshape(t.shape[:-1] + (self.num_heads, -1))

        q, k, v = (split_heads(proj(x)) for proj in (self.query, self.key, self.value))
        out = attention(q, k, v, mask, prefix_kv=prefix_kv, dropout=self.dropout)
        return out.reshape(out.shape[:-2] + (-1,))


def _add_norm(block: nnx.Module, h: jax.Array, residual: jax.Array) -> jax.Array:
    """``LayerNorm(h + residual)``, or the bottleneck adapter set on ``block.adapters`` (AdapterHub's
    hook point: it gets the sub-layer output, the residual and the LayerNorm; ``jaxkernel.peft.bottleneck``)."""
    if block.adapters is not None:
        return block.adapters(h, residual, block.LayerNorm)
    return block.LayerNorm(h + residual)


class BertSelfOutput(nnx.Module):
    def __init__(self, config: BertConfig, *, num_heads: int | None = None, rngs: nnx.Rngs):
        inner = (config.num_attention_heads if num_heads is None else num_heads) * config.head_dim
        self.dense = _linear(config, inner, config.hidden_size, ("heads", "embed"), rngs)
        self.LayerNorm = LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = dropout(config.hidden_dropout_prob, rngs)
        self.adapters = nnx.data(None)  # see _add_norm

    def __call__(self, h, residual):
        return _add_norm(self, self.dropout(self.dense(h)), residual)


class BertAttention(nnx.Module):
    def __init__(self, config: BertConfig, *, layer_index: int = 0, rngs: nnx.Rngs):
        heads = config.heads_in_layer(layer_index)
        self.self = BertSelfAttention(config, num_heads=heads, rngs=rngs)
        self.output = BertSelfOutput(config, num_heads=heads, rngs=rngs)

    def __call__(self, x, mask, prefix_kv=None):
        return self.output(self.self(x, mask, prefix_kv), x)


class BertIntermediate(nnx.Module):
    def __init__(self, config: BertConfig, *, rngs: nnx.Rngs):
        self.dense = _linear(config, config.hidden_size, config.intermediate_size, ("embed", "mlp"), rngs)
        self.act = ACTIVATIONS[config.hidden_act]

    def __call__(self, x):
        return self.act(self.dense(x))


class BertOutput(nnx.Module):
    def __init__(self, config: BertConfig, *, rngs: nnx.Rngs):
        self.dense = _linear(config, config.intermediate_size, config.hidden_size, ("mlp", "embed"), rngs)
        self.LayerNorm = LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = dropout(config.hidden_dropout_prob, rngs)
        self.adapters = nnx.data(None)  # see _add_norm

    def __call__(self, h, residual):
        return _add_norm(self, self.dropout(self.dense(h)), residual)


class BertLayer(nnx.Module):
    def __init__(self, config: BertConfig, *, layer_index: int = 0, rngs: nnx.Rngs):
        self.attention = BertAttention(config, layer_index=layer_index, rngs=rngs)
        self.intermediate = BertIntermediate(config, rngs=rngs)
        self.output = BertOutput(config, rngs=rngs)

    def __call__(self, x, mask, prefix_kv=None):
        h = self.attention(x, mask, prefix_kv)
        return self.output(self.intermediate(h), h)


class BertEncoder(nnx.Module):
    def __init__(self, config: BertConfig, *, rngs: nnx.Rngs):
        self.layer = nnx.List([BertLayer(config, layer_index=i, rngs=rngs) for i in range(config.num_hidden_layers)])
        self.remat = False  # set by the trainer (train.remat): recompute layer activations in backward

    def __call__(self, x, mask, prefix_kv=None):
        for i, layer in enumerate(self.layer):
            x = run_layer(layer, x, mask, None if prefix_kv is None else prefix_kv[i], remat=self.remat)
            # Layer boundary: batch-split residual stream (a no-op outside a sharded step).
            x = constrain(x, ("batch", "length", "embed"))
        return x


class BertPooler(nnx.Module):
    def __init__(self, config: BertConfig, *, rngs: nnx.Rngs):
        self.dense = _linear(config, config.hidden_size, config.hidden_size, ("embed", None), rngs)

    def __call__(self, hidden):
        return jnp.tanh(self.dense(hidden[:, 0]))


class BertModel(nnx.Module):
    """The bare encoder (HF ``BertModel``): returns hidden states and pooled output."""

    task = "feature-extraction"

    def __init__(self, config: BertConfig, *, add_pooling_layer: bool = True, rngs: nnx.Rngs):
        self.config = config
        self.embeddings = BertEmbeddings(config, rngs=rngs)
        self.encoder = BertEncoder(config, rngs=rngs)
        self.pooler = BertPooler(config, rngs=rngs) if add_pooling_layer else None
        # Set by jaxkernel.peft.apply_prefix_tuning; then builds prefix_kv when none is passed.
        self.prefix_encoder = nnx.data(None)

    def __call__(self, input_ids, attention_mask=None, token_type_ids=None, position_ids=None, prefix_kv=None):
        """Encode a batch.

        Args:
          input_ids: (B, T) token ids.
          attention_mask: (B, T), 1 for real tokens, 0 for padding. Default all ones.
          token_type_ids: (B, T) segment ids. Default zeros.
          position_ids: (B, T). Default ``default_position_ids``: P..P+T-1, P = prefix
            length (0 without prefix), as HF does for prefix keys/values passed as a cache.
          prefix_kv: optional per-layer list of (keys, values), each (B, P, N, H).
            Default: from ``self.prefix_encoder`` when prefix tuning is applied.

        Returns:
          EncoderOutput(last_hidden_state (B, T, D), pooler_output (B, D) or None).
        """
        batch, length = input_ids.shape
        if prefix_kv is None and self.prefix_encoder is not None:
            prefix_kv = self.prefix_encoder(batch)
        num_prefix = 0 if prefix_kv is None else prefix_kv[0][0].shape[1]
        if attention_mask is None:
            attention_mask = jnp.ones((batch, length), jnp.int32)
        if token_type_ids is None:
            token_type_ids = jnp.zeros((batch, length), jnp.int32)
        if position_ids is None:
            if num_prefix and num_prefix + length > self.num_positions():
                usable = self.num_positions()
                raise ValueError(
                    f"{length} tokens after a prefix of {num_prefix} exceed max_position_embeddings="
                    f"{self.config.max_position_embeddings}"
                    + (f" ({usable} usable)" if usable != self.config.max_position_embeddings else "")
                    + ": truncate the input or shorten the prefix"
                )
            position_ids = self.default_position_ids(input_ids, num_prefix)
        x = self.embeddings(input_ids, token_type_ids, position_ids)
        hidden = self.encoder(x, padding_mask(attention_mask), prefix_kv)
        pooled = self.pooler(hidden) if self.pooler is not None else None
        return EncoderOutput(hidden, pooled)

    def default_position_ids(self, input_ids: jax.Array, num_prefix: int) -> jax.Array:
        """Positions when none are given: P..P+T-1 (P = prefix length), as HF BERT numbers them.

        Encoders with another scheme (RoBERTa) override this and ``num_positions``.
        """
        return jnp.broadcast_to(jnp.arange(input_ids.shape[1]) + num_prefix, input_ids.shape)

    def num_positions(self) -> int:
        """How many (prefix + real) tokens ``default_position_ids`` can number."""
        return self.config.max_position_embeddings


class BertTaskModel(nnx.Module):
    """Base of the task heads: the bare encoder is held at ``base_prefix`` (HF's ``base_model_prefix``).

    Encoders that share BERT's heads (RoBERTa) subclass a head and set ``base_prefix``
    (``"roberta"``) and ``base_class`` (their bare model).
    """

    base_prefix = "bert"
    base_class = BertModel

    def _init_base(self, config: BertConfig, rngs: nnx.Rngs, *, add_pooling_layer: bool = False) -> None:
        self.config = config
        setattr(self, self.base_prefix, self.base_class(config, add_pooling_layer=add_pooling_layer, rngs=rngs))

    def base(self) -> BertModel:
        return getattr(self, self.base_prefix)

    def encode(self, input_ids, attention_mask, token_type_ids, position_ids, prefix_kv) -> EncoderOutput:
        return self.base()(input_ids, attention_mask, token_type_ids, position_ids, prefix_kv)


def _classifier_dropout(config: BertConfig) -> float:
    return config.hidden_dropout_prob if config.classifier_dropout is None else config.classifier_dropout


class BertForSequenceClassification(BertTaskModel):
    """[CLS] pooled output -> dropout -> linear: logits (B, num_labels)."""

    task = "sequence-classification"
    head_modules = ("classifier",)

    def __init__(self, config: BertConfig, *, rngs: nnx.Rngs):
        self._init_base(config, rngs, add_pooling_layer=True)
        self.dropout = dropout(_classifier_dropout(config), rngs)
        self.classifier = _linear(config, config.hidden_size, config.num_labels, ("embed", None), rngs)

    def __call__(self, input_ids, attention_mask=None, token_type_ids=None, position_ids=None, prefix_kv=None):
        out = self.encode(input_ids, attention_mask, token_type_ids, position_ids, prefix_kv)
        return self.classifier(self.dropout(out.pooler_output))


class BertForTokenClassification(BertTaskModel):
    """Per-token logits (B, T, num_labels), e.g. NER tags."""

    task = "token-classification"
    head_modules = ("classifier",)

    def __init__(self, config: BertConfig, *, rngs: nnx.Rngs):
        self._init_base(config, rngs)
        self.dropout = dropout(_classifier_dropout(config), rngs)
        self.classifier = _linear(config, config.hidden_size, config.num_labels, ("embed", None), rngs)

    def __call__(self, input_ids, attention_mask=None, token_type_ids=None, position_ids=None, prefix_kv=None):
        out = self.encode(input_ids, attention_mask, token_type_ids, position_ids, prefix_kv)
        return self.classifier(self.dropout(out.last_hidden_state))


class BertForQuestionAnswering(BertTaskModel):
    """Extractive QA: returns (start_logits, end_logits), each (B, T)."""

    task = "question-answering"
    head_modules = ("qa_outputs",)

    def __init__(self, config: BertConfig, *, rngs: nnx.Rngs):
        if config.num_labels != 2:
            raise ValueError(f"question answering predicts start and end: num_labels must be 2, got {config.num_labels}")
        self._init_base(config, rngs)
        self.qa_outputs = _linear(config, config.hidden_size, 2, ("embed", None), rngs)

    def __call__(self, input_ids, attention_mask=None, token_type_ids=None, position_ids=None, prefix_kv=None):
        out = self.encode(input_ids, attention_mask, token_type_ids, position_ids, prefix_kv)
        logits = self.qa_outputs(out.last_hidden_state)
        return logits[..., 0], logits[..., 1]


class BertPredictionHeadTransform(nnx.Module):
    def __init__(self, config: BertConfig, *, rngs: nnx.Rngs):
        self.dense = _linear(config, config.hidden_size, config.hidden_size, ("embed", None), rngs)
        self.act = ACTIVATIONS[config.hidden_act]
        self.LayerNorm = LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def __call__(self, x):
        return self.LayerNorm(self.act(self.dense(x)))


class BertLMPredictionHead(nnx.Module):
    """Transform, then the decoder tied to the word embeddings, plus its own bias."""

    def __init__(self, config: BertConfig, *, rngs: nnx.Rngs):
        self.transform = BertPredictionHeadTransform(config, rngs=rngs)
        self.bias = logical_param(jnp.zeros((config.vocab_size,)), ("vocab",))

    def __call__(self, x, word_embeddings: Embed):
        return word_embeddings.attend(self.transform(x)) + self.bias[...]


class BertOnlyMLMHead(nnx.Module):
    def __init__(self, config: BertConfig, *, rngs: nnx.Rngs):
        self.predictions = BertLMPredictionHead(config, rngs=rngs)


class BertForMaskedLM(BertTaskModel):
    """Masked-LM logits (B, T, V); decoder weights tied to ``word_embeddings``."""

    task = "masked-lm"
    head_modules = ("cls",)

    def __init__(self, config: BertConfig, *, rngs: nnx.Rngs):
        self._init_base(config, rngs)
        self.cls = BertOnlyMLMHead(config, rngs=rngs)

    def __call__(self, input_ids, attention_mask=None, token_type_ids=None, position_ids=None, prefix_kv=None):
        out = self.encode(input_ids, attention_mask, token_type_ids, position_ids, prefix_kv)
        return self.cls.predictions(out.last_hidden_state, self.base().embeddings.word_embeddings)


BERT_TASKS: dict[str, type[nnx.Module]] = {
    cls.task: cls
    for cls in (
        BertModel,
        BertForSequenceClassification,
        BertForTokenClassification,
        BertForQuestionAnswering,
        BertForMaskedLM,
    )
}
