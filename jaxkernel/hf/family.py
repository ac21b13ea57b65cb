"""Helpers the HF config converters of every family share: labels, refused values, and the
classification of every ``config.json`` key.

Each family's table file classifies the keys of its ``config.json`` with a :class:`ConfigKeys`:
*handled* (read into the config: the dataclass fields and a few the converter reads itself),
*ignored* on purpose (key -> the reason it cannot change the model's outputs), or *refused*
(key -> the only value implemented; another value is an error). A key in none of them is
unknown — perhaps a newer transformers option that changes the math — and is reported by name:
a warning, or an error with ``strict=True`` (``from_pretrained(..., strict=True)``,
``model.strict=true`` in a run config). The keys every ``PretrainedConfig`` writes are
classified here once (``COMMON_IGNORED`` / ``COMMON_REFUSED``).

Example::

    BERT_CONFIG_KEYS = ConfigKeys(handled=(*fields, "pruned_heads"), ignored={"pooler_type": "..."},
                                  refused={"position_embedding_type": "absolute"})
    BERT_CONFIG_KEYS.check(hf, source="bert/config.json", strict=False)

The families themselves are registered in ``jaxkernel.models.registry``.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any, Iterable, Mapping

log = logging.getLogger(__name__)

# Read by every converter (family, task, labels), whatever the family.
COMMON_HANDLED = ("model_type", "architectures", "id2label", "label2id", "num_labels")

_GENERATION = (
    "a generation default (transformers now keeps these in generation_config.json); "
    "jaxkernel's generate takes its own arguments"
)
_OUTPUTS = "selects what a torch forward returns (tuple or ModelOutput, extra outputs), not how it computes"
_KERNEL = "selects which torch implementation runs; the math is the same"
_ENCODER_DECODER = "used only by encoder-decoder / cross-attention models, which are refused (is_encoder_decoder, add_cross_attention)"
_TOKENS = "a special-token id kept for the tokenizer and generation; this model's forward does not read it"

# Keys any PretrainedConfig may write (transformers 2.x to 5.x) that cannot change the outputs.
COMMON_IGNORED = {
    "transformers_version": "the transformers version that wrote the file",
    "_name_or_path": "where transformers loaded the model from",
    "name_or_path": "where transformers loaded the model from",
    "_commit_hash": "hub revision bookkeeping",
    "dtype": "the dtype the weights were saved in; jaxkernel reads float checkpoints into float32 "
             "parameters (compute dtype: the dtype argument, model.dtype in a run config)",
    "torch_dtype": "old name of dtype: the dtype the weights were saved in (read into float32 parameters)",
    "use_bfloat16": "an old TensorFlow-era storage hint; parameters are read as float32",
    "output_attentions": _OUTPUTS,
    "output_hidden_states": _OUTPUTS,
    "return_dict": _OUTPUTS,
    "torchscript": "a torch export switch (tuples instead of ModelOutputs, untied weights for tracing)",
    "tie_last_hidden_states": "which tensor torch returns as hidden_states[-1]; jaxkernel returns last_hidden_state",
    "chunk_size_feed_forward": "torch runs the feed-forward in chunks of this many positions to save memory; "
                               "the outputs are the same",
    "gradient_checkpointing": "a torch training-memory switch (jaxkernel: train.remat); the outputs are the same",
    "use_cache": "switches torch's key/value cache on or off at inference; the outputs are the same",
    "output_past": "old name of use_cache",
    "_attn_implementation": _KERNEL,
    "attn_implementation": _KERNEL,
    "_attn_implementation_autoset": _KERNEL,
    "_experts_implementation": _KERNEL,
    "xla_device": "an old TensorFlow/XLA device hint",
    "tf_legacy_loss": "a TensorFlow loss switch",
    "finetuning_task": "a note of the task the checkpoint was fine-tuned on",
    "task_specific_params": "pipeline defaults per task (e.g. generation settings)",
    "tokenizer_class": "read by the tokenizer, not the model",
    "prefix": "a text prefix pipelines put before the input; read by pipelines, not the model",
    "_num_labels": "old copy of num_labels; id2label / num_labels are read",
    "bos_token_id": _TOKENS,
    "eos_token_id": _TOKENS,
    "pad_token_id": _TOKENS,
    "sep_token_id": _TOKENS,
    "decoder_start_token_id": _ENCODER_DECODER,
    "tie_encoder_decoder": _ENCODER_DECODER,
    "cross_attention_hidden_size": _ENCODER_DECODER,
    **{key: _GENERATION for key in (
        "max_length", "min_length", "do_sample", "early_stopping", "num_beams", "num_beam_groups",
        "diversity_penalty", "temperature", "top_k", "top_p", "typical_p", "repetition_penalty",
        "length_penalty", "no_repeat_ngram_size", "encoder_no_repeat_ngram_size", "bad_words_ids",
        "num_return_sequences", "output_scores", "return_dict_in_generate", "forced_bos_token_id",
        "forced_eos_token_id", "remove_invalid_values", "exponential_decay_length_penalty",
        "suppress_tokens", "begin_suppress_tokens",
    )},
}

# Keys any PretrainedConfig may write whose other values change the math: key -> the value implemented.
COMMON_REFUSED = {
    "is_encoder_decoder": False,
    "add_cross_attention": False,
    # regression / multi-label heads need another loss and another decoding than softmax + argmax
    "problem_type": "single_label_classification",
    "pruned_heads": {},  # a family that builds pruned layers reads it (handled)
    "per_layer_config": {},  # per-layer overrides of the architecture
    "quantization_config": None,  # bitsandbytes / GPTQ / AWQ... weights are not float tensors
    "auto_map": None,  # the checkpoint runs its own modeling code, not the stock architecture
}


@dataclasses.dataclass(frozen=True)
class ConfigKeys:
    """How one family's converter treats every key of an HF ``config.json``.

    Args (as fields):
      handled: keys the converter reads (``COMMON_HANDLED`` is added).
      ignored: key -> why it cannot change the outputs (``COMMON_IGNORED`` is added, minus handled keys).
      refused: key -> the only value implemented (``COMMON_REFUSED`` is added, minus handled keys);
        None or a missing key is accepted too.
    """

    handled: frozenset[str]
    ignored: Mapping[str, str]
    refused: Mapping[str, Any]

    def __init__(self, handled: Iterable[str], ignored: Mapping[str, str] = (), refused: Mapping[str, Any] = ()):
        handled = frozenset(handled) | frozenset(COMMON_HANDLED)
        ignored, refused = {**COMMON_IGNORED, **dict(ignored)}, {**COMMON_REFUSED, **dict(refused)}
        for key in handled:
            ignored.pop(key, None)
            refused.pop(key, None)
        for key in set(ignored) & set(refused):
            raise ValueError(f"config key {key!r} is classified both as ignored and as refused")
        missing = [key for key, reason in ignored.items() if not str(reason).strip()]
        if missing:
            raise ValueError(f"ignored config keys need a reason: {missing}")
        object.__setattr__(self, "handled", handled)
        object.__setattr__(self, "ignored", dict(ignored))
        object.__setattr__(self, "refused", dict(refused))

    def unknown(self, hf: Mapping[str, Any]) -> list[str]:
        """The keys of ``hf`` this family does not classify."""
        return sorted(k for k in hf if k not in self.handled and k not in self.ignored and k not in self.refused)

    def check(self, hf: Mapping[str, Any], *, source: str, strict: bool = False) -> None:
        """Refuse values we do not implement; report unknown keys (an error when ``strict``).

        Raises:
          ValueError: a refused key has another value, or ``strict`` and a key is unknown.
        """
        reject_values(hf, source, self.refused)
        unknown = self.unknown(hf)
        if not unknown:
            return
        message = (
            f"{source}: jaxkernel does not know the config key(s) {', '.join(unknown)} "
            f"(model_type {hf.get('model_type')!r}); if one changes how the model computes, the loaded "
            "model will differ from transformers'. Check them, then remove them from config.json, or "
            "classify them in the family's table file (handled / ignored with a reason / refused)"
        )
        if strict:
            raise ValueError(message + " [strict: unknown keys are errors]")
        log.warning("%s (strict=True makes this an error)", message)

def labels_from_hf(hf: dict, num_labels: int | None, labels: tuple[str, ...] | None) -> tuple[int, tuple[str, ...] | None]:
    """Resolve num_labels / label names from user overrides first, then config.json."""
    if labels is not None:
        labels = tuple(labels)
        if num_labels is not None and num_labels != len(labels):
            raise ValueError(f"num_labels={num_labels} but {len(labels)} label names were given")
        return len(labels), labels
    id2label = hf.get("id2label")
    if num_labels is None:
        if id2label:
            num_labels = len(id2label)
        else:
            num_labels = int(hf.get("num_labels", 2))
    if id2label and len(id2label) == num_labels:
        names = tuple(str(id2label[k]) for k in sorted(id2label, key=int))
        if names != tuple(f"LABEL_{i}" for i in range(num_labels)):
            return num_labels, names
    return num_labels, None


def labels_to_hf(num_labels: int, labels: tuple[str, ...] | None) -> dict:
    names = labels or tuple(f"LABEL_{i}" for i in range(num_labels))
    return {
        "id2label": {str(i): name for i, name in enumerate(names)},
        "label2id": {name: i for i, name in enumerate(names)},
    }


def reject_values(hf: dict, source: str, required: dict[str, Any]) -> None:
    """Raise for HF config keys whose value selects a feature we do not implement."""
    for key, allowed in required.items():
        if key in hf and hf[key] is not None and hf[key] != allowed and not (hf[key] == {} and allowed is None):
            raise ValueError(
                f"{source}: {key}={hf[key]!r} is not supported by jaxkernel (only {allowed!r}); "
                "this checkpoint needs a feature jaxkernel does not implement"
            )
