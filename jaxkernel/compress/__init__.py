"""Compression beyond int8: structured pruning, magnitude / 2:4 sparsity, distillation.

Each method is one module with an ``apply``-style entry point; results export as ordinary
Hugging Face directories (``jaxkernel.save_pretrained``).

- ``prune``     remove attention heads and FFN units (Michel et al. 2019 importance)
- ``sparsity``  gradual magnitude pruning (Zhu & Gupta 2017) and 2:4 masks, as an optax transform
- ``distill``   teacher -> student with T^2-scaled KL, hard labels and hidden-state MSE

Example::

    from jaxkernel.compress import compute_importance, prune_model
    report = prune_model(model, compute_importance(model, dev_batches), heads=0.5, ffn=0.3)
"""

from jaxkernel.compress.prune import (
    Importance, compute_importance, pad_pruned_heads, prune_ffn, prune_heads, prune_model, select_ffn, select_heads,
)

__all__ = [
    "Importance", "compute_importance", "pad_pruned_heads", "prune_ffn", "prune_heads", "prune_model",
    "select_ffn", "select_heads",
]
