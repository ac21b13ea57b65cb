"""Run an export's probe rows through the PyTorch class a user would load, in its own process.

``jaxkernel.hf.verify`` starts this file as a script (``python torch_probe.py SPEC.json``) so
that torch's threads and memory never stay in the training process. It imports numpy, torch,
transformers and (for adapters) peft only — never jaxkernel or JAX — and is not imported by the
package. The spec (JSON) gives:

  directory     the exported directory
  kind          "model" (a transformers directory) or "adapter" (a PEFT directory)
  architecture  the transformers class, e.g. "BertForTokenClassification"
  base          adapters: the base model directory / hub id the adapter was trained on
  base_config   adapters: a directory whose config.json describes the base with its head
  rows          [{"input_ids": [...], "token_type_ids": [...]?}, ...], each run unpadded
  out           where to write the outputs (.npz: "r<row>_o<output>") and <out>.json
                (pid, versions, the class that ran)

Example (what verify.py runs)::

    python jaxkernel/hf/torch_probe.py /tmp/probe/spec.json
"""

from __future__ import annotations

import json
import os
import sys

import numpy as np


def _outputs(out) -> list:
    """The tensors jaxkernel's model returns, in the same order."""
    if getattr(out, "start_logits", None) is not None:
        return [out.start_logits, out.end_logits]
    if getattr(out, "logits", None) is not None:
        return [out.logits]
    pooled = getattr(out, "pooler_output", None)
    return [out.last_hidden_state] + ([pooled] if pooled is not None else [])


def _is_prefix(model) -> bool:
    config = getattr(model, "active_peft_config", None)
    return str(getattr(config, "peft_type", "")).endswith("PREFIX_TUNING")


def _prefix_forward(model, inputs: dict):
    """Prepend the virtual tokens to the mask and pass PEFT's prompt as past_key_values."""
    import torch

    virtual = model.active_peft_config.num_virtual_tokens
    mask = inputs.pop("attention_mask")
    mask = torch.cat([torch.ones(mask.shape[0], virtual, dtype=mask.dtype), mask], dim=1)
    return model.base_model(**inputs, attention_mask=mask, past_key_values=model.get_prompt(mask.shape[0]))


def main(spec_file: str) -> int:
    with open(spec_file) as f:
        spec = json.load(f)
    import torch
    import transformers

    versions = {"torch": torch.__version__, "transformers": transformers.__version__}
    arch = getattr(transformers, spec["architecture"], None)
    if arch is None:
        print(f"transformers {transformers.__version__} has no class {spec['architecture']}", file=sys.stderr)
        return 3
    if spec["kind"] == "adapter":
        import peft

        versions["peft"] = peft.__version__
        config = transformers.AutoConfig.from_pretrained(spec["base_config"])
        base = arch.from_pretrained(spec["base"], config=config, ignore_mismatched_sizes=True)
        model = peft.PeftModel.from_pretrained(base, spec["directory"])
        ran = f"peft PeftModel({spec['architecture']})"
    else:
        model = arch.from_pretrained(spec["directory"])
        ran = f"transformers {spec['architecture']}"
    model = model.float().eval()
    arrays = {}
    with torch.no_grad():
        for i, row in enumerate(spec["rows"]):
            inputs = {k: torch.tensor([v], dtype=torch.long) for k, v in row.items()}
            inputs["attention_mask"] = torch.ones_like(inputs["input_ids"])
            try:
                out = model(**inputs)
            except ValueError as err:
                if not _is_prefix(model):
                    raise
                # PEFT 0.21's PeftModel.forward refuses prefixes for heads whose forward no longer
                # names past_key_values (BERT in transformers 5); run the path it would take.
                out = _prefix_forward(model, inputs)
                ran = f"{ran} (prefix via get_prompt: {err})"
            for j, tensor in enumerate(_outputs(out)):
                arrays[f"r{i}_o{j}"] = tensor[0].float().numpy()
    np.savez(spec["out"], **arrays)
    with open(spec["out"] + ".json", "w") as f:
        json.dump({"pid": os.getpid(), "versions": versions, "ran": ran}, f)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
