"""GPT-2 <-> Hugging Face: the mapping table and config converters.

HF GPT-2 uses ``Conv1D`` whose weight is (in, out) like our kernels: no
transpose, except the classification ``score`` which is a torch ``nn.Linear``.
"""

from __future__ import annotations

import dataclasses

from jaxkernel.hf.family import ConfigKeys, labels_from_hf, labels_to_hf
from jaxkernel.hf.mapping import TRANSPOSE, Rule
from jaxkernel.models.gpt2 import Gpt2Config, Gpt2ForSequenceClassification, Gpt2LMHeadModel, Gpt2Model
from jaxkernel.models.layers import ACTIVATIONS
from jaxkernel.models.registry import ModelDims, ModelFamily, register

GPT2_TABLE = [
    Rule("{p}ln_{n}.weight", "{p}ln_{n}.scale"),
    Rule("{p}wte.weight", "{p}wte.embedding"),
    Rule("{p}wpe.weight", "{p}wpe.embedding"),
    Rule("{p}c_{n}.weight", "{p}c_{n}.kernel"),  # Conv1D: already (in, out)
    Rule("score.weight", "score.kernel", TRANSPOSE),
    Rule("{p}.bias", "{p}.bias"),
]

# Causal-mask buffers of old checkpoints; lm_head is tied to wte (checked on load).
GPT2_IGNORE = (r"attn\.(masked_)?bias$", r"^lm_head\.weight$")

# Weights of HF heads jaxkernel has no task for (regex -> which head).
GPT2_OTHER_HEADS = {r"^multiple_choice_head\.": "GPT2DoubleHeadsModel's multiple-choice head"}

_ARCH_FIELDS = [f.name for f in dataclasses.fields(Gpt2Config) if f.name not in ("num_labels", "labels", "dtype")]

_DOUBLE_HEADS = "configures GPT2DoubleHeadsModel's multiple-choice head (not implemented); no other GPT-2 head reads it"

# Every config.json key (the PretrainedConfig ones are classified in hf/family.py).
GPT2_CONFIG_KEYS = ConfigKeys(
    handled=_ARCH_FIELDS,
    ignored={
        "n_ctx": "old copy of n_positions (the causal-mask buffer size of early checkpoints); n_positions is read",
        "reorder_and_upcast_attn": "makes torch compute attention scores in float32; jaxkernel's scores and "
                                   "softmax always run in float32",
        "is_decoder": "GPT-2 is always a causal decoder; HF GPT-2 does not read it",
        **{key: _DOUBLE_HEADS for key in (
            "summary_type", "summary_use_proj", "summary_activation", "summary_proj_to_labels", "summary_first_dropout",
        )},
    },
    refused={
        "scale_attn_weights": True,
        "scale_attn_by_inverse_layer_idx": False,
        "tie_word_embeddings": True,
    },
)


def gpt2_config_from_hf(hf: dict, overrides: dict) -> Gpt2Config:
    """A Gpt2Config from a config.json dict; ``overrides["strict"]``: unknown keys are errors."""
    source = overrides.pop("source", "config.json")
    GPT2_CONFIG_KEYS.check(hf, source=source, strict=overrides.pop("strict", False))
    if hf.get("activation_function", "gelu_new") not in ACTIVATIONS:
        raise ValueError(
            f"{source}: activation_function={hf.get('activation_function')!r} is not supported; "
            f"use one of {sorted(ACTIVATIONS)}"
        )
    num_labels, labels = labels_from_hf(hf, overrides.pop("num_labels", None), overrides.pop("labels", None))
    values = {name: hf[name] for name in _ARCH_FIELDS if name in hf}
    values.update(overrides)
    return Gpt2Config(**values, num_labels=num_labels, labels=labels)


def gpt2_config_to_hf(config: Gpt2Config) -> dict:
    hf = {name: getattr(config, name) for name in _ARCH_FIELDS}
    hf.update(model_type="gpt2", tie_word_embeddings=True, scale_attn_weights=True, num_labels=config.num_labels)
    hf.update(labels_to_hf(config.num_labels, config.labels))
    return hf


def gpt2_dims(c: Gpt2Config) -> ModelDims:
    return ModelDims(
        width=c.n_embd, heads=c.n_head, kv_heads=c.n_head, head_dim=c.head_dim, layers=c.n_layer,
        positions=c.n_positions, vocab=c.vocab_size, intermediate=c.inner_size,
    )


GPT2_SIZES = {
    "gpt2": dict(n_embd=768, n_layer=12, n_head=12),
    "gpt2-medium": dict(n_embd=1024, n_layer=24, n_head=16),
    "gpt2-large": dict(n_embd=1280, n_layer=36, n_head=20),
    "gpt2-xl": dict(n_embd=1600, n_layer=48, n_head=25),
}

GPT2_FAMILY = register(
    ModelFamily(
        model_type="gpt2",
        config_class=Gpt2Config,
        tasks={
            "feature-extraction": (Gpt2Model, "GPT2Model"),
            "causal-lm": (Gpt2LMHeadModel, "GPT2LMHeadModel"),
            "sequence-classification": (Gpt2ForSequenceClassification, "GPT2ForSequenceClassification"),
        },
        base_prefix="transformer",
        layers_path="h",
        dims=gpt2_dims,
        lora_targets=("c_attn",),
        table=GPT2_TABLE,
        ignore=GPT2_IGNORE,
        config_from_hf=gpt2_config_from_hf,
        config_to_hf=gpt2_config_to_hf,
        known_sizes=GPT2_SIZES,
        causal=True,
        extra={
            "ia3_targets": ("c_attn", "mlp.c_proj"), "ia3_feedforward": ("mlp.c_proj",),
            "config_keys": GPT2_CONFIG_KEYS, "other_heads": GPT2_OTHER_HEADS,
        },
    )
)
