"""jaxkernel: adapt pretrained language models in JAX, hand them back to PyTorch.

Example::

    import jaxkernel
    model = jaxkernel.from_pretrained("path/to/bert", task="token-classification", num_labels=7)
    jaxkernel.save_pretrained(model, "out/")
"""

__version__ = "0.1.0"

from jaxkernel.hf.pretrained import from_pretrained, save_pretrained  # noqa: E402
from jaxkernel.models.bert import (  # noqa: E402
    BertConfig,
    BertForMaskedLM,
    BertForQuestionAnswering,
    BertForSequenceClassification,
    BertForTokenClassification,
    BertModel,
)
from jaxkernel.models.gpt2 import (  # noqa: E402
    Gpt2Config,
    Gpt2ForSequenceClassification,
    Gpt2LMHeadModel,
    Gpt2Model,
)
from jaxkernel.models.attention import KVCache  # noqa: E402
from jaxkernel.models.registry import ModelFamily, families, family_for, family_of  # noqa: E402
from jaxkernel.quant.int8 import Int8Embed, Int8Linear, Int8Weight, QuantScale, dequantize, quantize_int8  # noqa: E402
from jaxkernel.quant.io import load_quantized, save_quantized  # noqa: E402
from jaxkernel.quant.memory import MemoryReport, param_bytes  # noqa: E402
from jaxkernel.quant.transform import dequantize_model, quantize_model  # noqa: E402
from jaxkernel.hf.peft_format import load_adapter, save_adapter, save_merged  # noqa: E402
from jaxkernel.peft import (  # noqa: E402
    LoraConfig,
    LoraLinear,
    LoraParam,
    PrefixConfig,
    PrefixParam,
    SavedModuleParam,
    TrainableParam,
    apply_lora,
    apply_prefix_tuning,
    count_parameters,
    merge_and_unload,
    merge_lora,
    print_trainable_parameters,
    trainable_filter,
    unmerge_lora,
)
from jaxkernel.sharding.mesh import DistributedConfig, MeshConfig, initialize_distributed, make_mesh  # noqa: E402
from jaxkernel.sharding.placement import create_sharded, from_pretrained_sharded, shard_batch  # noqa: E402
from jaxkernel.sharding.plan import format_plan, plan_config, plan_model  # noqa: E402
from jaxkernel.models.layers import constrain  # noqa: E402
from jaxkernel.sharding.rules import ShardingRules, get_rules  # noqa: E402
from jaxkernel.train.step import (  # noqa: E402
    ModelDef,
    TrainState,
    init_train_state,
    make_eval_step,
    make_train_step,
    model_from_state,
)
