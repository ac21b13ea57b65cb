"""RoBERTa and XLM-RoBERTa: BERT's encoder with RoBERTa's positions and heads.

The layers are BERT's (``jaxkernel.models.bert``); what differs is how positions are
numbered — from ``pad_token_id + 1``, counting non-pad tokens only, as
``transformers``' ``create_position_ids_from_input_ids`` does — and two heads:
sequence classification (``classifier.dense`` -> tanh -> ``classifier.out_proj`` on
the ``<s>`` token) and masked LM (``lm_head``, decoder tied to the word embeddings).
XLM-R is the same module: ``RobertaConfig.model_type`` tells the registry which
HF ``model_type`` / architecture names a model has.

Example::

    config = RobertaConfig(vocab_size=50265, max_position_embeddings=514, type_vocab_size=1,
                           layer_norm_eps=1e-5, num_labels=7)
    model = RobertaForTokenClassification(config, rngs=nnx.Rngs(0))
    logits = model(input_ids, attention_mask)          # (B, T, 7); pad with pad_token_id (1)
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from jaxkernel.models.bert import (
    BertConfig,
    BertForQuestionAnswering,
    BertForTokenClassification,
    BertModel,
    BertTaskModel,
    _classifier_dropout,
    _linear,
)
from jaxkernel.models.dropout import dropout
from jaxkernel.models.layers import ACTIVATIONS, Embed, LayerNorm, logical_param

ROBERTA_MODEL_TYPES = ("roberta", "xlm-roberta")


@dataclasses.dataclass(frozen=True)
class RobertaConfig(BertConfig):
    """BertConfig with HF RobertaConfig's defaults and the HF ``model_type`` it came from."""

    vocab_size: int = 50265
    pad_token_id: int = 1
    model_type: str = "roberta"  # or "xlm-roberta": same modules, other HF names

    def __post_init__(self):
        super().__post_init__()
        if self.model_type not in ROBERTA_MODEL_TYPES:
            raise ValueError(f"RobertaConfig.model_type {self.model_type!r} must be one of {ROBERTA_MODEL_TYPES}")
        if self.max_position_embeddings <= self.pad_token_id + 1:
            raise ValueError(
                f"max_position_embeddings={self.max_position_embeddings} leaves no position: RoBERTa numbers "
                f"tokens from pad_token_id + 1 = {self.pad_token_id + 1} (roberta-base has 514)"
            )


class RobertaModel(BertModel):
    """The bare encoder (HF ``RobertaModel`` / ``XLMRobertaModel``), pooler included like HF's."""

    def default_position_ids(self, input_ids: jax.Array, num_prefix: int) -> jax.Array:
        """``pad + 1 + P, pad + 2 + P, ...`` over non-pad tokens; pad tokens get ``pad``.

        Counted from ``input_ids`` (not the attention mask), as HF does: pad with
        ``pad_token_id`` for identical outputs.
        """
        pad = self.config.pad_token_id
        real = (input_ids != pad).astype(jnp.int32)
        return (jnp.cumsum(real, axis=1) + num_prefix) * real + pad

    def num_positions(self) -> int:
        return self.config.max_position_embeddings - self.config.pad_token_id - 1


class _RobertaTask:
    """Puts a BERT task head on RoBERTa's encoder, at HF's ``roberta`` prefix."""

    base_prefix = "roberta"
    base_class = RobertaModel


class RobertaForTokenClassification(_RobertaTask, BertForTokenClassification):
    """Per-token logits (B, T, num_labels), e.g. NER tags."""


class RobertaForQuestionAnswering(_RobertaTask, BertForQuestionAnswering):
    """Extractive QA: returns (start_logits, end_logits), each (B, T)."""


class RobertaClassificationHead(nnx.Module):
    """``<s>`` hidden state -> dropout -> dense -> tanh -> dropout -> out_proj."""

    def __init__(self, config: RobertaConfig, *, rngs: nnx.Rngs):
        self.dense = _linear(config, config.hidden_size, config.hidden_size, ("embed", None), rngs)
        self.dropout = dropout(_classifier_dropout(config), rngs)
        self.out_proj = _linear(config, config.hidden_size, config.num_labels, ("embed", None), rngs)

    def __call__(self, hidden: jax.Array) -> jax.Array:
        x = self.dropout(hidden[:, 0])  # (B, D)
        return self.out_proj(self.dropout(jnp.tanh(self.dense(x))))


class RobertaForSequenceClassification(_RobertaTask, BertTaskModel):
    """Logits (B, num_labels) from the ``<s>`` token through a two-layer head (no pooler)."""

    task = "sequence-classification"
    head_modules = ("classifier",)

    def __init__(self, config: RobertaConfig, *, rngs: nnx.Rngs):
        self._init_base(config, rngs)
        self.classifier = RobertaClassificationHead(config, rngs=rngs)

    def __call__(self, input_ids, attention_mask=None, token_type_ids=None, position_ids=None, prefix_kv=None):
        out = self.encode(input_ids, attention_mask, token_type_ids, position_ids, prefix_kv)
        return self.classifier(out.last_hidden_state)


class RobertaLMHead(nnx.Module):
    """dense -> GELU (always exact, as HF) -> layer_norm -> decoder tied to the word embeddings + bias."""

    def __init__(self, config: RobertaConfig, *, rngs: nnx.Rngs):
        self.dense = _linear(config, config.hidden_size, config.hidden_size, ("embed", None), rngs)
        self.layer_norm = LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.bias = logical_param(jnp.zeros((config.vocab_size,)), ("vocab",))

    def __call__(self, x: jax.Array, word_embeddings: Embed) -> jax.Array:
        x = self.layer_norm(ACTIVATIONS["gelu"](self.dense(x)))
        return word_embeddings.attend(x) + self.bias[...]


class RobertaForMaskedLM(_RobertaTask, BertTaskModel):
    """Masked-LM logits (B, T, V)."""

    task = "masked-lm"
    head_modules = ("lm_head",)

    def __init__(self, config: RobertaConfig, *, rngs: nnx.Rngs):
        self._init_base(config, rngs)
        self.lm_head = RobertaLMHead(config, rngs=rngs)

    def __call__(self, input_ids, attention_mask=None, token_type_ids=None, position_ids=None, prefix_kv=None):
        out = self.encode(input_ids, attention_mask, token_type_ids, position_ids, prefix_kv)
        return self.lm_head(out.last_hidden_state, self.base().embeddings.word_embeddings)


ROBERTA_TASKS: dict[str, type[nnx.Module]] = {
    cls.task: cls
    for cls in (
        RobertaModel,
        RobertaForSequenceClassification,
        RobertaForTokenClassification,
        RobertaForQuestionAnswering,
        RobertaForMaskedLM,
    )
}
