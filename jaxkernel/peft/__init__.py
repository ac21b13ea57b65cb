"""Parameter-efficient fine-tuning: LoRA, prefix tuning, trainable-set selection.

Example::

    from jaxkernel.peft import LoraConfig, apply_lora, trainable_filter
    apply_lora(model, LoraConfig(r=8, alpha=16, target_modules=["query", "value"]))
    optimizer = nnx.Optimizer(model, optax.adamw(1e-3), wrt=trainable_filter(model))

PEFT-format import/export lives in ``jaxkernel.hf.peft_format``.
"""

from jaxkernel.peft.lora import (
    LoraConfig,
    LoraLinear,
    LoraParam,
    apply_lora,
    lora_layers,
    merge_and_unload,
    merge_lora,
    unmerge_lora,
)
from jaxkernel.peft.prefix import PrefixConfig, PrefixEncoder, PrefixParam, apply_prefix_tuning
from jaxkernel.peft.trainable import (
    SavedModuleParam,
    TrainableParam,
    count_parameters,
    print_trainable_parameters,
    trainable_filter,
)

__all__ = [
    "LoraConfig", "LoraLinear", "LoraParam", "apply_lora", "lora_layers", "merge_and_unload", "merge_lora",
    "unmerge_lora", "PrefixConfig", "PrefixEncoder", "PrefixParam", "apply_prefix_tuning", "SavedModuleParam",
    "TrainableParam", "count_parameters", "print_trainable_parameters", "trainable_filter",
]
