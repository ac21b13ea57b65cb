"""Flax NNX BERT and GPT-2 with HF-compatible structure."""
