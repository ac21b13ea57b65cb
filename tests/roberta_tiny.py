"""Seeded, tiny, odd-sized HF RoBERTa / XLM-RoBERTa PyTorch models (pad_token_id 1, as RoBERTa)."""

from __future__ import annotations

import transformers

from tiny_models import _randomise, padded_batch

PAD = 1

ROBERTA_CONFIGS = {
    "roberta": {
        "h36-heads3": dict(vocab_size=97, hidden_size=36, num_hidden_layers=2, num_attention_heads=3,
                           intermediate_size=50, max_position_embeddings=40, type_vocab_size=1, layer_norm_eps=1e-5),
        "h24-heads2-relu": dict(vocab_size=61, hidden_size=24, num_hidden_layers=3, num_attention_heads=2,
                                intermediate_size=37, hidden_act="relu", max_position_embeddings=35,
                                type_vocab_size=2, layer_norm_eps=1e-7),
        "h40-heads5-gelunew": dict(vocab_size=113, hidden_size=40, num_hidden_layers=1, num_attention_heads=5,
                                   intermediate_size=72, hidden_act="gelu_new", max_position_embeddings=34,
                                   type_vocab_size=1),
    },
    "xlm-roberta": {
        "h30-heads3": dict(vocab_size=89, hidden_size=30, num_hidden_layers=2, num_attention_heads=3,
                           intermediate_size=41, max_position_embeddings=37, type_vocab_size=1, layer_norm_eps=1e-5),
        "h28-heads7-silu": dict(vocab_size=71, hidden_size=28, num_hidden_layers=3, num_attention_heads=7,
                                intermediate_size=45, hidden_act="silu", max_position_embeddings=31,
                                type_vocab_size=1, layer_norm_eps=1e-6),
        "h44-heads4": dict(vocab_size=101, hidden_size=44, num_hidden_layers=1, num_attention_heads=4,
                           intermediate_size=66, max_position_embeddings=43, type_vocab_size=3),
    },
}

_T = transformers
HF_CONFIG = {"roberta": _T.RobertaConfig, "xlm-roberta": _T.XLMRobertaConfig}
HF_HEADS = {
    "roberta": {
        "feature-extraction": _T.RobertaModel,
        "sequence-classification": _T.RobertaForSequenceClassification,
        "token-classification": _T.RobertaForTokenClassification,
        "question-answering": _T.RobertaForQuestionAnswering,
        "masked-lm": _T.RobertaForMaskedLM,
    },
    "xlm-roberta": {
        "feature-extraction": _T.XLMRobertaModel,
        "sequence-classification": _T.XLMRobertaForSequenceClassification,
        "token-classification": _T.XLMRobertaForTokenClassification,
        "question-answering": _T.XLMRobertaForQuestionAnswering,
        "masked-lm": _T.XLMRobertaForMaskedLM,
    },
}
TASKS = list(HF_HEADS["roberta"])
ALL_CONFIGS = [(t, n) for t, configs in ROBERTA_CONFIGS.items() for n in configs]


def first_config(model_type: str) -> str:
    return next(iter(ROBERTA_CONFIGS[model_type]))


def hf_roberta(model_type: str, name: str, task: str, num_labels: int = 2, seed: int = 0):
    config = HF_CONFIG[model_type](**ROBERTA_CONFIGS[model_type][name], num_labels=num_labels, pad_token_id=PAD)
    return _randomise(HF_HEADS[model_type][task](config), seed)


def roberta_batch(model_type: str, name: str, lengths=(11, 7, 2), seed: int = 3):
    """Right-padded (input_ids, attention_mask) with RoBERTa's pad id; real ids avoid 0..2."""
    return padded_batch(ROBERTA_CONFIGS[model_type][name]["vocab_size"], lengths=lengths, seed=seed, pad_id=PAD)
