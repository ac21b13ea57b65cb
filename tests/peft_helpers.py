"""Shared helpers for the LoRA / prefix / PEFT-format tests."""

from __future__ import annotations

import jax
import numpy as np
import torch
from flax import nnx

import jaxkernel
from jaxkernel.peft import lora_layers

BERT_LORA_TARGETS = ["query", "key", "value", "attention.output.dense", "intermediate.dense", "output.dense"]
GPT2_LORA_TARGETS = ["c_attn", "c_proj", "c_fc"]
PEFT_TASK = {
    "sequence-classification": "SEQ_CLS",
    "token-classification": "TOKEN_CLS",
    "question-answering": "QUESTION_ANS",
    "causal-lm": "CAUSAL_LM",
    "feature-extraction": "FEATURE_EXTRACTION",
    "masked-lm": None,
}


def ours_from_hf(hf: torch.nn.Module, path, task: str) -> nnx.Module:
    """Our copy of an in-memory HF model, through an HF directory."""
    hf.save_pretrained(path)
    return jaxkernel.from_pretrained(path, task=task)


def randomise_trainable(model: nnx.Module, seed: int, scale: float = 0.3) -> None:
    """Give every LoRA/prefix/modules_to_save variable random non-zero values."""
    key = jax.random.key(seed)
    for i, (_, var) in enumerate(nnx.iter_graph(model)):
        if isinstance(var, jaxkernel.TrainableParam):
            var[...] = scale * jax.random.normal(jax.random.fold_in(key, i), var.shape, var.dtype)


def first_output(out):
    """Logits of a model call (our models return tuples for LM / QA)."""
    if isinstance(out, tuple) and out[-1] is None:  # (logits, cache)
        return np.asarray(out[0])
    if isinstance(out, tuple):
        return np.stack([np.asarray(o) for o in out])
    return np.asarray(out)


def torch_output(out, task: str) -> np.ndarray:
    if task == "question-answering":
        return np.stack([out.start_logits.numpy(), out.end_logits.numpy()])
    if task == "feature-extraction":
        return out.last_hidden_state.numpy()
    return out.logits.numpy()


def ours_output(model, task: str, ids, mask) -> np.ndarray:
    out = model(ids, mask)
    if task == "feature-extraction":
        out = out[0]  # BERT: last_hidden_state; GPT-2: hidden
    return first_output(out)


def peft_prefix_forward(peft_model, ids: np.ndarray, mask: np.ndarray):
    """What PEFT's prefix-tuning forward does, step by step, for any HF head.

    PEFT 0.21.2's ``PeftModelFor*.forward`` refuses BERT with transformers 5.24
    ("Model does not support past key values"), because BERT's forward now names
    the argument ``cache``; the path it would take is: prepend P ones to the
    attention mask and pass ``get_prompt(B)`` (a DynamicCache) as past_key_values.
    """
    batch = ids.shape[0]
    num_virtual = peft_model.active_peft_config.num_virtual_tokens
    mask_t = torch.tensor(mask)
    extended = torch.cat([torch.ones(batch, num_virtual, dtype=mask_t.dtype), mask_t], dim=1)
    with torch.no_grad():
        return peft_model.base_model(
            input_ids=torch.tensor(ids), attention_mask=extended, past_key_values=peft_model.get_prompt(batch)
        )


def lora_paths(model) -> list[str]:
    return sorted(lora_layers(model))


def peft_lora_paths(peft_model) -> list[str]:
    """Module names PEFT wrapped with LoRA, relative to the HF model."""
    from peft.tuners.lora import LoraLayer

    prefix = "base_model.model."
    return sorted(n[len(prefix):] for n, m in peft_model.named_modules() if isinstance(m, LoraLayer))
