"""Parameter-efficient fine-tuning: LoRA (and DoRA), AdaLoRA, IA3, bottleneck adapters, prefix tuning,
trainable-set selection, several named adapters on one base (``AdapterSet``).

Example::

    from jaxkernel.peft import LoraConfig, apply_lora, trainable_filter
    apply_lora(model, LoraConfig(r=8, alpha=16, target_modules=["query", "value"]))
    optimizer = nnx.Optimizer(model, optax.adamw(1e-3), wrt=trainable_filter(model))

PEFT-format import/export lives in ``jaxkernel.hf.peft_format``; AdapterHub's format for
bottleneck adapters in ``jaxkernel.hf.adapterhub_format``.
"""

from jaxkernel.peft.adalora import AdaLoraConfig, AdaLoraLinear, AdaLoraParam, adalora_layers, apply_adalora
from jaxkernel.peft.adalora_budget import adalora_optimizer, attach_rank_pattern
from jaxkernel.peft.bottleneck import AdapterParam, BottleneckAdapter, BottleneckConfig, adapter_layers, apply_bottleneck
from jaxkernel.peft.dora import DoraLinear
from jaxkernel.peft.ia3 import Ia3Config, Ia3Linear, Ia3Param, apply_ia3, ia3_layers, merge_ia3, unmerge_ia3
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
from jaxkernel.peft.multi_adapter import AdapterSet
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
    "AdapterParam", "BottleneckAdapter", "BottleneckConfig", "adapter_layers", "apply_bottleneck", "DoraLinear",
    "Ia3Config", "Ia3Linear", "Ia3Param", "apply_ia3", "ia3_layers", "merge_ia3", "unmerge_ia3",
    "AdaLoraConfig", "AdaLoraLinear", "AdaLoraParam", "adalora_layers", "apply_adalora", "adalora_optimizer",
    "attach_rank_pattern", "AdapterSet",
]
