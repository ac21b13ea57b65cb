"""Seeded, tiny, odd-sized Hugging Face PyTorch models for parity tests."""

from __future__ import annotations

import numpy as np
import torch
import transformers

BERT_CONFIGS = {
    "h36-heads3": dict(vocab_size=97, hidden_size=36, num_hidden_layers=2, num_attention_heads=3,
                       intermediate_size=50, max_position_embeddings=40, type_vocab_size=2),
    "h24-heads2-relu": dict(vocab_size=61, hidden_size=24, num_hidden_layers=3, num_attention_heads=2,
                            intermediate_size=37, hidden_act="relu", max_position_embeddings=33,
                            type_vocab_size=3, layer_norm_eps=1e-7),
    "h40-heads5-gelunew": dict(vocab_size=113, hidden_size=40, num_hidden_layers=1, num_attention_heads=5,
                               intermediate_size=72, hidden_act="gelu_new", max_position_embeddings=32),
}

GPT2_CONFIGS = {
    "e36-heads3": dict(vocab_size=97, n_embd=36, n_layer=2, n_head=3, n_positions=64),
    "e24-heads2-inner": dict(vocab_size=61, n_embd=24, n_layer=3, n_head=2, n_positions=80, n_inner=50,
                             layer_norm_epsilon=1e-6),
    "e40-heads5-relu": dict(vocab_size=113, n_embd=40, n_layer=1, n_head=5, n_positions=64,
                            activation_function="relu"),
}

BERT_HEADS = {
    "feature-extraction": transformers.BertModel,
    "sequence-classification": transformers.BertForSequenceClassification,
    "token-classification": transformers.BertForTokenClassification,
    "question-answering": transformers.BertForQuestionAnswering,
    "masked-lm": transformers.BertForMaskedLM,
}

GPT2_HEADS = {
    "feature-extraction": transformers.GPT2Model,
    "causal-lm": transformers.GPT2LMHeadModel,
    "sequence-classification": transformers.GPT2ForSequenceClassification,
}


def _randomise(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Re-draw every float tensor so LayerNorms and biases are non-trivial too."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            param.copy_(torch.randn(param.shape, generator=gen) * 0.2)
    return model.eval()


def hf_bert(name: str, task: str, num_labels: int = 2, seed: int = 0) -> torch.nn.Module:
    config = transformers.BertConfig(**BERT_CONFIGS[name], num_labels=num_labels)
    torch.manual_seed(seed)
    return _randomise(BERT_HEADS[task](config), seed)


def hf_gpt2(name: str, task: str, num_labels: int = 2, seed: int = 0, pad_token_id: int | None = None):
    config = transformers.GPT2Config(
        **GPT2_CONFIGS[name], num_labels=num_labels, bos_token_id=1, eos_token_id=2, pad_token_id=pad_token_id,
    )
    torch.manual_seed(seed)
    return _randomise(GPT2_HEADS[task](config), seed)


def padded_batch(vocab_size: int, lengths=(9, 6, 3), seed: int = 0, left: bool = False, pad_id: int = 0):
    """(input_ids, attention_mask) numpy int arrays, padded on the right (or left)."""
    rng = np.random.RandomState(seed)
    width = max(lengths)
    ids = np.full((len(lengths), width), pad_id, np.int64)
    mask = np.zeros((len(lengths), width), np.int64)
    for row, n in enumerate(lengths):
        span = slice(width - n, width) if left else slice(0, n)
        ids[row, span] = rng.randint(3, vocab_size, n)
        mask[row, span] = 1
    return ids, mask


LLAMA_CONFIGS = {
    # multi-head (kv ratio 1), tied embeddings, llama3 rope scaling
    "h30-mha-tied-llama3": dict(
        vocab_size=97, hidden_size=30, intermediate_size=46, num_hidden_layers=2, num_attention_heads=3,
        num_key_value_heads=3, max_position_embeddings=64, tie_word_embeddings=True,
        rope_parameters=dict(rope_type="llama3", rope_theta=500.0, factor=4.0, low_freq_factor=1.0,
                             high_freq_factor=4.0, original_max_position_embeddings=16),
    ),
    # grouped-query 6/2, explicit head_dim != hidden/heads, linear rope scaling, biases, untied
    "h36-gqa3-linear-bias": dict(
        vocab_size=61, hidden_size=36, intermediate_size=50, num_hidden_layers=3, num_attention_heads=6,
        num_key_value_heads=2, head_dim=8, max_position_embeddings=80, rms_norm_eps=1e-5,
        rope_parameters=dict(rope_type="linear", rope_theta=1000.0, factor=2.5), attention_bias=True, mlp_bias=True,
    ),
    # nine query heads sharing one key/value head, plain rope, untied
    "h36-q9-kv1": dict(
        vocab_size=113, hidden_size=36, intermediate_size=38, num_hidden_layers=2, num_attention_heads=9,
        num_key_value_heads=1, max_position_embeddings=64, rope_parameters=dict(rope_type="default", rope_theta=100.0),
    ),
}

LLAMA_HEADS = {
    "feature-extraction": transformers.LlamaModel,
    "causal-lm": transformers.LlamaForCausalLM,
    "sequence-classification": transformers.LlamaForSequenceClassification,
}


def hf_llama(name: str, task: str, num_labels: int = 2, seed: int = 0, pad_token_id: int | None = None):
    config = transformers.LlamaConfig(
        **LLAMA_CONFIGS[name], num_labels=num_labels, bos_token_id=1, eos_token_id=2, pad_token_id=pad_token_id,
    )
    torch.manual_seed(seed)
    return _randomise(LLAMA_HEADS[task](config), seed)


MISTRAL_CONFIGS = {
    # sliding window 4, shorter than the test sequences (10 tokens + 32 generated); GQA 6/2
    "m36-gqa3-window4": dict(
        vocab_size=89, hidden_size=36, intermediate_size=44, num_hidden_layers=2, num_attention_heads=6,
        num_key_value_heads=2, max_position_embeddings=64, sliding_window=4,
        rope_parameters=dict(rope_type="default", rope_theta=100.0),
    ),
    # window 7, five query heads on one kv head, tied embeddings
    "m30-kv1-window7-tied": dict(
        vocab_size=71, hidden_size=30, intermediate_size=34, num_hidden_layers=3, num_attention_heads=5,
        num_key_value_heads=1, max_position_embeddings=64, sliding_window=7, tie_word_embeddings=True,
        rope_parameters=dict(rope_type="default", rope_theta=1000.0),
    ),
    # no window (sliding_window null, as in Mistral v0.2+), multi-head
    "m24-nowindow": dict(
        vocab_size=101, hidden_size=24, intermediate_size=40, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=4, max_position_embeddings=64, sliding_window=None,
        rope_parameters=dict(rope_type="default", rope_theta=10000.0),
    ),
}

MISTRAL_HEADS = {
    "feature-extraction": transformers.MistralModel,
    "causal-lm": transformers.MistralForCausalLM,
    "sequence-classification": transformers.MistralForSequenceClassification,
}


def hf_mistral(name: str, task: str, num_labels: int = 2, seed: int = 0, pad_token_id: int | None = None):
    config = transformers.MistralConfig(
        **MISTRAL_CONFIGS[name], num_labels=num_labels, bos_token_id=1, eos_token_id=2, pad_token_id=pad_token_id,
    )
    torch.manual_seed(seed)
    return _randomise(MISTRAL_HEADS[task](config), seed)


QWEN2_CONFIGS = {
    # GQA 6/2, q/k/v biases (always on in Qwen2), untied
    "q36-gqa3": dict(
        vocab_size=83, hidden_size=36, intermediate_size=52, num_hidden_layers=2, num_attention_heads=6,
        num_key_value_heads=2, max_position_embeddings=64, rope_parameters=dict(rope_type="default", rope_theta=1e6),
    ),
    # 7 query heads on one kv head, tied embeddings (as Qwen2.5-0.5B)
    "q28-kv1-tied": dict(
        vocab_size=67, hidden_size=28, intermediate_size=30, num_hidden_layers=2, num_attention_heads=7,
        num_key_value_heads=1, max_position_embeddings=64, tie_word_embeddings=True,
        rope_parameters=dict(rope_type="default", rope_theta=10000.0),
    ),
    # sliding window 5 on layers >= 1 only (use_sliding_window + max_window_layers)
    "q32-window5-layers1+": dict(
        vocab_size=79, hidden_size=32, intermediate_size=36, num_hidden_layers=3, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64, use_sliding_window=True, sliding_window=5,
        max_window_layers=1, rope_parameters=dict(rope_type="default", rope_theta=10000.0),
    ),
}

QWEN2_HEADS = {
    "feature-extraction": transformers.Qwen2Model,
    "causal-lm": transformers.Qwen2ForCausalLM,
    "sequence-classification": transformers.Qwen2ForSequenceClassification,
}


def hf_qwen2(name: str, task: str, num_labels: int = 2, seed: int = 0, pad_token_id: int | None = None):
    config = transformers.Qwen2Config(
        **QWEN2_CONFIGS[name], num_labels=num_labels, bos_token_id=1, eos_token_id=2, pad_token_id=pad_token_id,
    )
    torch.manual_seed(seed)
    return _randomise(QWEN2_HEADS[task](config), seed)
