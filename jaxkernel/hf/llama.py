"""Llama, Mistral and Qwen2 <-> Hugging Face: the mapping table, config converters and registrations.

Our attribute names are HF's, so the table only transposes torch ``nn.Linear``
weights (out, in) into our (in, out) kernels and renames norm/embedding weights.

Config: HF v5 writes ``rope_parameters`` (``rope_theta`` inside), v4 writes
``rope_theta`` + ``rope_scaling``; both are read, and both are written so either
``transformers`` generation reads our exports with the right rotary frequencies.
"""

from __future__ import annotations

import dataclasses
import functools

from jaxkernel.hf.family import ConfigKeys, labels_from_hf, labels_to_hf
from jaxkernel.hf.mapping import TRANSPOSE, Rule
from jaxkernel.models.llama import LlamaConfig, LlamaForCausalLM, LlamaForSequenceClassification, LlamaModel
from jaxkernel.models.registry import ModelDims, ModelFamily, register

LLAMA_TABLE = [
    Rule("{p}norm.weight", "{p}norm.scale"),  # input_layernorm, post_attention_layernorm, model.norm
    Rule("{p}embed_tokens.weight", "{p}embed_tokens.embedding"),
    Rule("{p}.weight", "{p}.kernel", TRANSPOSE),  # every nn.Linear, lm_head and score included
    Rule("{p}.bias", "{p}.bias"),
]

# Rotary buffers of old checkpoints; lm_head is a copy of embed_tokens when tied (HF ignores it too).
LLAMA_IGNORE = (r"rotary_emb\.inv_freq$", r"^lm_head\.weight$")

_ARCH_FIELDS = [
    f.name for f in dataclasses.fields(LlamaConfig)
    if f.name not in ("model_type", "num_labels", "labels", "dtype", "rope_theta", "rope_scaling")
]


def _rope_from_hf(hf: dict) -> dict:
    """rope_theta / rope_scaling from a v5 ``rope_parameters`` or a v4 config."""
    params = hf.get("rope_parameters")
    if isinstance(params, dict) and "rope_theta" in params:
        scaling = {k: v for k, v in params.items() if k != "rope_theta"}
        theta = params["rope_theta"]
    else:
        scaling, theta = dict(hf.get("rope_scaling") or {}), hf.get("rope_theta", 10000.0)
    if scaling.get("rope_type", scaling.get("type")) in (None, "default"):
        scaling = {k: v for k, v in scaling.items() if k not in ("rope_type", "type")}
        if scaling:
            raise ValueError(f"rope parameters {scaling} need a rope_type; jaxkernel reads linear and llama3 scaling")
        scaling = None
    return {"rope_theta": float(theta), "rope_scaling": scaling}


# Fields only some model types read (HF's LlamaModel ignores a stray sliding_window, so must we).
_TYPE_FIELDS = {"sliding_window": ("mistral", "qwen2"), "layer_types": ("qwen2",),
                "attention_bias": ("llama",), "mlp_bias": ("llama",)}


def _qwen2_windows(hf: dict, values: dict) -> None:
    """HF Qwen2Config: the window exists only with use_sliding_window, on layers >= max_window_layers."""
    if not hf.get("use_sliding_window", False):
        values["sliding_window"] = None
    if values.get("layer_types") is None:
        layers, first = values.get("num_hidden_layers", 32), hf.get("max_window_layers", 28)
        windowed = values.get("sliding_window") is not None
        values["layer_types"] = tuple(
            "sliding_attention" if windowed and i >= first else "full_attention" for i in range(layers)
        )


@functools.cache
def llama_config_keys(model_type: str) -> ConfigKeys:
    """Every config.json key of ``model_type`` (the PretrainedConfig ones are classified in hf/family.py)."""
    return ConfigKeys(
        handled=(
            *(name for name in _ARCH_FIELDS if model_type in _TYPE_FIELDS.get(name, (model_type,))),
            "rope_theta", "rope_scaling", "rope_parameters",
            *(("use_sliding_window", "max_window_layers") if model_type == "qwen2" else ()),  # -> layer windows
        ),
        ignored={
            "pretraining_tp": "the tensor-parallel degree Meta pretrained with; older transformers computed the "
                              "linears in that many slices (the same sums, regrouped), current transformers ignores it",
            **{name: f"transformers' {model_type} model does not read it (only {', '.join(types)})"
               for name, types in _TYPE_FIELDS.items() if model_type not in types},
        },
    )


def llama_config_from_hf(hf: dict, overrides: dict, defaults: dict | None = None) -> LlamaConfig:
    """A LlamaConfig from a config.json dict; ``defaults`` are the HF class defaults of its model type."""
    source = overrides.pop("source", "config.json")
    model_type = hf.get("model_type", "llama")
    llama_config_keys(model_type).check(hf, source=source, strict=overrides.pop("strict", False))
    num_labels, labels = labels_from_hf(hf, overrides.pop("num_labels", None), overrides.pop("labels", None))
    values = dict(defaults or {})
    values.update({
        name: hf[name] for name in _ARCH_FIELDS
        if name in hf and model_type in _TYPE_FIELDS.get(name, (model_type,))
    })
    if model_type == "qwen2":
        _qwen2_windows(hf, values)
    if isinstance(values.get("eos_token_id"), list):
        values["eos_token_id"] = tuple(values["eos_token_id"])
    try:
        values.update(_rope_from_hf(hf))
    except ValueError as err:
        raise ValueError(f"{source}: {err}") from None
    values.update(overrides)
    try:
        return LlamaConfig(model_type=model_type, **values, num_labels=num_labels, labels=labels)
    except ValueError as err:
        raise ValueError(f"{source}: {err}") from None


def llama_config_to_hf(config: LlamaConfig) -> dict:
    hf = {name: getattr(config, name) for name in _ARCH_FIELDS
          if config.model_type in _TYPE_FIELDS.get(name, (config.model_type,))}
    hf["head_dim"] = config.attention_head_dim
    if isinstance(config.eos_token_id, tuple):
        hf["eos_token_id"] = list(config.eos_token_id)
    scaling = config.scaling_dict
    hf.update(
        model_type=config.model_type, num_labels=config.num_labels, rope_theta=config.rope_theta, rope_scaling=scaling,
        rope_parameters={"rope_theta": config.rope_theta, **(scaling or {"rope_type": "default"})},
    )
    if config.model_type == "qwen2":
        hf["use_sliding_window"] = config.sliding_window is not None
        hf["layer_types"] = list(config.layer_types or ["full_attention"] * config.num_hidden_layers)
        sliding = [i for i, t in enumerate(hf["layer_types"]) if t == "sliding_attention"]
        hf["max_window_layers"] = sliding[0] if sliding else config.num_hidden_layers
    hf.update(labels_to_hf(config.num_labels, config.labels))
    return hf


def llama_dims(c: LlamaConfig) -> ModelDims:
    return ModelDims(
        width=c.hidden_size, heads=c.num_attention_heads, kv_heads=c.num_key_value_heads, head_dim=c.attention_head_dim,
        layers=c.num_hidden_layers, positions=c.max_position_embeddings, vocab=c.vocab_size,
        intermediate=c.intermediate_size,
    )


LLAMA_SIZES = {
    "smollm2-135m": dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                         num_key_value_heads=3, vocab_size=49152, max_position_embeddings=8192, rope_theta=100000.0,
                         rms_norm_eps=1e-5, tie_word_embeddings=True),
    "llama-2-7b": dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                       vocab_size=32000, max_position_embeddings=4096, rms_norm_eps=1e-5),
    "llama-3-8b": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                       num_key_value_heads=8, vocab_size=128256, max_position_embeddings=8192, rope_theta=500000.0,
                       rms_norm_eps=1e-5),
    "llama-3.2-1b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
                         num_key_value_heads=8, head_dim=64, vocab_size=128256, max_position_embeddings=131072,
                         rope_theta=500000.0, rms_norm_eps=1e-5, tie_word_embeddings=True,
                         rope_scaling={"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0,
                                       "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}),
}


def _family(model_type: str, arch: str, *, defaults: dict | None = None, known_sizes=None, extra=None) -> ModelFamily:
    """One registered HF model type of the Llama architecture (``arch``: HF class-name prefix)."""
    return ModelFamily(
        model_type=model_type,
        config_class=LlamaConfig,
        tasks={
            "feature-extraction": (LlamaModel, f"{arch}Model"),
            "causal-lm": (LlamaForCausalLM, f"{arch}ForCausalLM"),
            "sequence-classification": (LlamaForSequenceClassification, f"{arch}ForSequenceClassification"),
        },
        base_prefix="model",
        layers_path="layers",
        dims=llama_dims,
        lora_targets=("q_proj", "v_proj"),  # PEFT's default for llama, mistral and qwen2
        table=LLAMA_TABLE,
        ignore=LLAMA_IGNORE,
        config_from_hf=lambda hf, overrides: llama_config_from_hf(hf, overrides, defaults),
        config_to_hf=llama_config_to_hf,
        known_sizes=known_sizes or {},
        causal=True,
        extra={
            **(extra or {"ia3_targets": ("k_proj", "v_proj", "down_proj"), "ia3_feedforward": ("down_proj",)}),
            "config_keys": llama_config_keys(model_type), "other_heads": {},
        },
    )


LLAMA_FAMILY = register(_family("llama", "Llama", known_sizes=LLAMA_SIZES))

# HF MistralConfig defaults where they differ from Llama's (a config.json may omit them).
MISTRAL_DEFAULTS = dict(sliding_window=4096, max_position_embeddings=131072, num_key_value_heads=8,
                        intermediate_size=14336)
MISTRAL_SIZES = {
    "mistral-7b": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                       num_key_value_heads=8, vocab_size=32000, max_position_embeddings=32768, sliding_window=4096,
                       rms_norm_eps=1e-5),
}
MISTRAL_FAMILY = register(_family("mistral", "Mistral", defaults=MISTRAL_DEFAULTS, known_sizes=MISTRAL_SIZES))

QWEN2_DEFAULTS = dict(vocab_size=151936, intermediate_size=22016, max_position_embeddings=32768, bos_token_id=None,
                      eos_token_id=None)
QWEN2_SIZES = {
    "qwen2.5-0.5b": dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                         num_key_value_heads=2, vocab_size=151936, max_position_embeddings=32768,
                         rope_theta=1000000.0, tie_word_embeddings=True),
}
# Hub ids of the checkpoints presets and the planner name (same shapes as above).
LLAMA_SIZES["HuggingFaceTB/SmolLM2-135M-Instruct"] = LLAMA_SIZES["smollm2-135m"]
LLAMA_SIZES["meta-llama/Meta-Llama-3-8B"] = LLAMA_SIZES["llama-3-8b"]
QWEN2_SIZES["qwen2-0.5b"] = QWEN2_SIZES["Qwen/Qwen2-0.5B"] = QWEN2_SIZES["qwen2.5-0.5b"]
MISTRAL_SIZES["mistralai/Mistral-7B-v0.1"] = MISTRAL_SIZES["mistral-7b"]
QWEN2_FAMILY = register(_family(
    "qwen2", "Qwen2", defaults=QWEN2_DEFAULTS, known_sizes=QWEN2_SIZES,
    extra={"ia3_targets": ("q_proj", "v_proj", "down_proj"), "ia3_feedforward": ("down_proj",)},  # PEFT's qwen2
))
