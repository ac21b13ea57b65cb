"""Architectures of well-known checkpoints, for abstract shapes and planning.

``nnx.eval_shape`` builds a model of ``ShapeDtypeStruct`` leaves: no memory is
allocated, so bert-large or gpt2-xl can be inspected (and planned for) anywhere.

Example::

    model = abstract_model("gpt2-xl")
    count_params(model)      # 1_557_611_200
"""

from __future__ import annotations

import math

from flax import nnx

from jaxkernel.models.bert import BERT_TASKS, BertConfig
from jaxkernel.models.gpt2 import GPT2_TASKS, Gpt2Config

KNOWN_SIZES = {
    "bert-base-uncased": BertConfig(),
    "bert-base-cased": BertConfig(vocab_size=28996),
    "bert-large-uncased": BertConfig(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096),
    "all-MiniLM-L6-v2": BertConfig(hidden_size=384, num_hidden_layers=6, num_attention_heads=12, intermediate_size=1536),
    "gpt2": Gpt2Config(),
    "gpt2-medium": Gpt2Config(n_embd=1024, n_layer=24, n_head=16),
    "gpt2-large": Gpt2Config(n_embd=1280, n_layer=36, n_head=20),
    "gpt2-xl": Gpt2Config(n_embd=1600, n_layer=48, n_head=25),
}


def abstract_model(config: BertConfig | Gpt2Config | str, task: str = "feature-extraction") -> nnx.Module:
    """The model with ``jax.ShapeDtypeStruct`` parameters (nothing allocated)."""
    if isinstance(config, str):
        if config not in KNOWN_SIZES:
            raise ValueError(f"unknown model size {config!r}; known: {sorted(KNOWN_SIZES)}")
        config = KNOWN_SIZES[config]
    tasks = BERT_TASKS if isinstance(config, BertConfig) else GPT2_TASKS
    if task not in tasks:
        raise ValueError(f"task {task!r} is not available for {type(config).__name__}; choose one of {sorted(tasks)}")
    return nnx.eval_shape(lambda: tasks[task](config, rngs=nnx.Rngs(0)))


def count_params(model: nnx.Module) -> int:
    """Number of scalar parameters (works on abstract and concrete models)."""
    return sum(math.prod(v.shape) for v in nnx.state(model, nnx.Param).flat_state().leaves
               if hasattr(v, "shape"))
