"""RoBERTa / XLM-RoBERTa <-> Hugging Face: table, config converters, two registrations.

The checkpoints use BERT's names under ``roberta.`` plus ``lm_head.layer_norm``
(lower case) and ``classifier.dense`` / ``classifier.out_proj``, so the table is
BERT's with one rule more. ``roberta`` and ``xlm-roberta`` share the modules and
the table; they differ in HF ``model_type`` and architecture names only.
"""

from __future__ import annotations

import dataclasses

from jaxkernel.hf.bert import BERT_CONFIG_KEYS, BERT_TABLE, bert_config_from_hf, bert_config_to_hf, bert_dims
from jaxkernel.hf.mapping import Rule
from jaxkernel.models.registry import ModelDims, ModelFamily, register
from jaxkernel.models.roberta import ROBERTA_TASKS, RobertaConfig

ROBERTA_TABLE = [Rule("{p}.layer_norm.weight", "{p}.layer_norm.scale"), *BERT_TABLE]

# Buffers and the decoder tied to the word embeddings (its bias is lm_head.bias).
ROBERTA_IGNORE = (r"embeddings\.(position_ids|token_type_ids)$", r"lm_head\.decoder\.(weight|bias)$")

# PEFT's defaults for roberta / xlm-roberta (TRANSFORMERS_MODELS_TO_*_TARGET_MODULES_MAPPING).
_LORA_TARGETS = ("query", "value")
_IA3 = {"ia3_targets": ("key", "value", "output.dense"), "ia3_feedforward": ("output.dense",)}

_CHECKPOINT = dict(max_position_embeddings=514, type_vocab_size=1, layer_norm_eps=1e-5)
_BASE = dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072, **_CHECKPOINT)
_LARGE = dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096, **_CHECKPOINT)
ROBERTA_SIZES = {
    "roberta-base": {**_BASE, "vocab_size": 50265},
    "roberta-large": {**_LARGE, "vocab_size": 50265},
    "distilroberta-base": {**_BASE, "num_hidden_layers": 6, "vocab_size": 50265},
}
XLM_ROBERTA_SIZES = {
    "xlm-roberta-base": {**_BASE, "vocab_size": 250002},
    "xlm-roberta-large": {**_LARGE, "vocab_size": 250002},
}


def _config_from_hf(model_type: str):
    def convert(hf: dict, overrides: dict) -> RobertaConfig:
        # BERT's key classification (BERT_CONFIG_KEYS) holds: an untied MLM decoder is refused there too.
        return bert_config_from_hf(hf, {**overrides, "model_type": model_type}, config_class=RobertaConfig)

    return convert


def roberta_dims(c: RobertaConfig) -> ModelDims:
    # Positions start at pad_token_id + 1: 514 embeddings number 512 tokens.
    return dataclasses.replace(bert_dims(c), positions=c.max_position_embeddings - c.pad_token_id - 1)


def _family(model_type: str, arch_prefix: str, sizes: dict) -> ModelFamily:
    return ModelFamily(
        model_type=model_type,
        config_class=RobertaConfig,
        tasks={task: (cls, arch_prefix + cls.__name__.removeprefix("Roberta")) for task, cls in ROBERTA_TASKS.items()},
        base_prefix="roberta",
        layers_path="encoder.layer",
        dims=roberta_dims,
        table=ROBERTA_TABLE,
        ignore=ROBERTA_IGNORE,
        config_from_hf=_config_from_hf(model_type),
        config_to_hf=bert_config_to_hf,
        known_sizes=sizes,
        lora_targets=_LORA_TARGETS,
        extra={**_IA3, "config_keys": BERT_CONFIG_KEYS, "other_heads": {}},
    )


ROBERTA_FAMILY = register(_family("roberta", "Roberta", ROBERTA_SIZES))
XLM_ROBERTA_FAMILY = register(_family("xlm-roberta", "XLMRoberta", XLM_ROBERTA_SIZES))
