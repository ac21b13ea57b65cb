"""Trainable fraction and optimizer-state bytes: LoRA and prefix tuning vs full fine-tuning.

Shapes only (``nnx.eval_shape``): nothing is allocated, runs in seconds on CPU.
Adam/AdamW state = 2 float32 moments per trainable parameter.

    python benchmarks/peft_trainable.py
"""

from flax import nnx

import jaxkernel
from jaxkernel.peft import LoraConfig, PrefixConfig, apply_lora, apply_prefix_tuning, count_parameters

MODELS = {
    "MiniLM-L6 token-cls (9 labels)": lambda: jaxkernel.BertForTokenClassification(
        jaxkernel.BertConfig(hidden_size=384, num_hidden_layers=6, num_attention_heads=12, intermediate_size=1536,
                             num_labels=9), rngs=nnx.Rngs(0)),
    "GPT-2 small causal LM": lambda: jaxkernel.Gpt2LMHeadModel(jaxkernel.Gpt2Config(), rngs=nnx.Rngs(0)),
}
METHODS = {
    "full fine-tune": lambda m: m,
    "LoRA r=8 q/v or c_attn (+head)": lambda m: apply_lora(
        m, LoraConfig(r=8, alpha=16, target_modules=["query", "value"] if hasattr(m, "bert") else ["c_attn"])),
    "prefix P=20 (+head)": lambda m: apply_prefix_tuning(m, PrefixConfig(num_virtual_tokens=20)),
}


def main():
    print(f"{'model':34s} {'method':30s} {'trainable':>12s} {'total':>12s} {'fraction':>9s} {'Adam state':>11s}")
    for model_name, build in MODELS.items():
        for method_name, method in METHODS.items():
            model = nnx.eval_shape(lambda: method(build()))
            trainable, total = count_parameters(model)
            print(f"{model_name:34s} {method_name:30s} {trainable:12,d} {total:12,d} {trainable / total:9.4%} "
                  f"{8 * trainable / 2**20:9.2f} MiB")


if __name__ == "__main__":
    main()
