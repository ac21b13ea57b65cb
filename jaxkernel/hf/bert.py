"""BERT <-> Hugging Face: the mapping table and config converters.

Our attribute names equal HF's, so the table only renames Flax leaves
(``kernel``/``scale``/``embedding``) and transposes torch ``nn.Linear`` weights.
"""

from __future__ import annotations

import dataclasses

from jaxkernel.hf.family import ConfigKeys, labels_from_hf, labels_to_hf
from jaxkernel.hf.mapping import TRANSPOSE, Rule
from jaxkernel.models.bert import (
    BertConfig,
    BertForMaskedLM,
    BertForQuestionAnswering,
    BertForSequenceClassification,
    BertForTokenClassification,
    BertModel,
)
from jaxkernel.models.layers import ACTIVATIONS
from jaxkernel.models.registry import ModelDims, ModelFamily, register

BERT_TABLE = [
    Rule("{p}.LayerNorm.weight", "{p}.LayerNorm.scale"),
    Rule("{p}_embeddings.weight", "{p}_embeddings.embedding"),
    Rule("{p}.weight", "{p}.kernel", TRANSPOSE),
    Rule("{p}.bias", "{p}.bias"),
    Rule("cls.predictions.bias", "cls.predictions.bias"),
]

# Buffers and tied copies found in HF BERT checkpoints.
BERT_IGNORE = (r"embeddings\.position_ids$", r"cls\.predictions\.decoder\.(weight|bias)$")

# Weights of HF heads jaxkernel has no task for (regex -> which head); heads of our own tasks
# are recognised from the task models themselves.
BERT_OTHER_HEADS = {r"^cls\.seq_relationship\.": "BertForPreTraining's next-sentence head"}


def _arch_fields(config_class: type) -> list[str]:
    return [f.name for f in dataclasses.fields(config_class) if f.name not in ("num_labels", "labels", "dtype", "model_type")]


_ORIGINAL_RELEASE = "a field of Google's original BERT release that no HF BERT code reads"

# Every config.json key (the PretrainedConfig ones are classified in hf/family.py).
BERT_CONFIG_KEYS = ConfigKeys(
    handled=(*_arch_fields(BertConfig), "pruned_heads"),
    ignored={
        "directionality": _ORIGINAL_RELEASE,
        "pooler_fc_size": _ORIGINAL_RELEASE,
        "pooler_num_attention_heads": _ORIGINAL_RELEASE,
        "pooler_num_fc_layers": _ORIGINAL_RELEASE,
        "pooler_size_per_head": _ORIGINAL_RELEASE,
        "pooler_type": _ORIGINAL_RELEASE,
    },
    refused={
        "position_embedding_type": "absolute",
        "is_decoder": False,
        # the MLM decoder is read as the word embeddings: an untied one would be silently replaced
        "tie_word_embeddings": True,
    },
)


def bert_config_from_hf(hf: dict, overrides: dict, *, config_class: type = BertConfig) -> BertConfig:
    """``config_class`` (BertConfig or a subclass, e.g. RobertaConfig) from a config.json dict;
    keys the file lacks take the class defaults. ``overrides["strict"]``: unknown keys are errors."""
    source = overrides.pop("source", "config.json")
    BERT_CONFIG_KEYS.check(hf, source=source, strict=overrides.pop("strict", False))
    if hf.get("hidden_act") not in ACTIVATIONS:
        raise ValueError(f"{source}: hidden_act={hf.get('hidden_act')!r} is not supported; use one of {sorted(ACTIVATIONS)}")
    num_labels, labels = labels_from_hf(hf, overrides.pop("num_labels", None), overrides.pop("labels", None))
    values = {name: hf[name] for name in _arch_fields(config_class) if name in hf and hf[name] is not None}
    if "pruned_heads" in values:
        values["pruned_heads"] = _pruned_heads_from_hf(values["pruned_heads"], source)
    values.update(overrides)
    return config_class(**values, num_labels=num_labels, labels=labels)


def bert_config_to_hf(config: BertConfig) -> dict:
    hf = {name: getattr(config, name) for name in _arch_fields(type(config))}
    model_type = getattr(config, "model_type", "bert")
    hf.update(model_type=model_type, position_embedding_type="absolute", num_labels=config.num_labels)
    hf.update(labels_to_hf(config.num_labels, config.labels))
    hf.pop("pruned_heads", None)
    if config.pruned_heads:  # HF's format: {"layer": [heads]} (transformers < 5 builds the smaller layers from it)
        hf["pruned_heads"] = {str(layer): sorted(heads) for layer, heads in config.pruned_heads}
    return hf


def _pruned_heads_from_hf(value, source: str) -> tuple:
    """config.json ``pruned_heads`` ({"0": [1, 3]}) -> BertConfig's ((0, (1, 3)),)."""
    if not isinstance(value, dict):
        raise ValueError(f"{source}: pruned_heads must map layer -> list of heads, got {value!r}")
    return tuple(sorted((int(layer), tuple(sorted(int(h) for h in heads))) for layer, heads in value.items() if heads))


def bert_dims(c: BertConfig) -> ModelDims:
    return ModelDims(
        width=c.hidden_size, heads=c.num_attention_heads, kv_heads=c.num_attention_heads, head_dim=c.head_dim,
        layers=c.num_hidden_layers, positions=c.max_position_embeddings, vocab=c.vocab_size,
        intermediate=c.intermediate_size,
    )


_BASE = dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072)
_LARGE = dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096)
_MINILM = dict(hidden_size=384, num_hidden_layers=6, num_attention_heads=12, intermediate_size=1536)
BERT_SIZES = {
    "bert-base": _BASE, "bert-base-uncased": _BASE, "bert-base-cased": {**_BASE, "vocab_size": 28996},
    "bert-large": _LARGE, "bert-large-uncased": _LARGE,
    "minilm-l6": _MINILM, "all-MiniLM-L6-v2": _MINILM,
}

BERT_FAMILY = register(
    ModelFamily(
        model_type="bert",
        config_class=BertConfig,
        tasks={
            "feature-extraction": (BertModel, "BertModel"),
            "sequence-classification": (BertForSequenceClassification, "BertForSequenceClassification"),
            "token-classification": (BertForTokenClassification, "BertForTokenClassification"),
            "question-answering": (BertForQuestionAnswering, "BertForQuestionAnswering"),
            "masked-lm": (BertForMaskedLM, "BertForMaskedLM"),
        },
        base_prefix="bert",
        layers_path="encoder.layer",
        dims=bert_dims,
        lora_targets=("query", "value"),
        table=BERT_TABLE,
        ignore=BERT_IGNORE,
        config_from_hf=bert_config_from_hf,
        config_to_hf=bert_config_to_hf,
        known_sizes=BERT_SIZES,
        extra={
            "ia3_targets": ("key", "value", "output.dense"), "ia3_feedforward": ("output.dense",),
            "config_keys": BERT_CONFIG_KEYS, "other_heads": BERT_OTHER_HEADS,
        },
    )
)
