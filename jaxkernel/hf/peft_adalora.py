"""AdaLoRA adapters in PEFT's format (``peft_type: ADALORA``), used by ``jaxkernel.hf.peft_format``.

=====================================  =====================================================
jaxkernel (kept triplets only)         PEFT key (``base_model.model.`` + HF module)
=====================================  =====================================================
``<m>.lora_A`` (in, r)                 ``<hf m>.lora_A`` (r, in)
``<m>.lora_E`` (r,)                    ``<hf m>.lora_E`` (r, 1)
``<m>.lora_B`` (r, out)                ``<hf m>.lora_B`` (out, r)
``layer.rank_pattern``                 ``rank_pattern["<hf m>.lora_E"]`` in adapter_config.json
``layer.ranknum``                      not saved by PEFT 0.21 (it is ``init_r``); read if present
=====================================  =====================================================

As in PEFT (``resize_state_dict_by_rank_pattern``), a layer with a rank pattern saves only the
triplets it keeps; loading creates the layers at ``init_r`` and shrinks them to the pattern
(``resize_modules_by_rank_pattern``), keeping ``ranknum = init_r`` and so the scale.

Example::

    save_adapter(model, "out/")      # dispatches here for an AdaLoraConfig
    load_adapter(base, "out/")       # and for peft_type ADALORA
"""

from __future__ import annotations

import numpy as np
from flax import nnx

from jaxkernel.hf.mapping import IDENTITY
from jaxkernel.hf.pretrained import _normalise_prefix
from jaxkernel.peft.adalora import AdaLoraConfig, adalora_layers, apply_adalora, kept_triplets, resize_by_rank_pattern

# Options PEFT's AdaLoraConfig may carry that jaxkernel does not implement: key -> the only accepted value.
_UNSUPPORTED = {
    "bias": "none", "lora_bias": False, "layers_to_transform": None, "layers_pattern": None, "use_dora": False,
    "use_rslora": False, "exclude_modules": None, "layer_replication": None, "target_parameters": None,
    "trainable_token_indices": None,
}


def adalora_to_peft(model: nnx.Module, config: AdaLoraConfig, table, hf_module, prefix: str) -> tuple[dict, dict]:
    """(tensors, adapter_config fields) of ``model``'s AdaLoRA layers; ``hf_module(path, table)`` names them."""
    if config.total_step is None:
        raise ValueError(
            "AdaLoRA total_step is unset, and PEFT refuses an AdaLoraConfig without it: give AdaLoraConfig(total_step=...) "
            "(the trainer fills in the run's steps)"
        )
    tensors, pattern, conv1d = {}, {}, False
    for path, layer in adalora_layers(model).items():
        module, rule = hf_module(path, table)
        conv1d |= rule.transform is IDENTITY
        keep = kept_triplets(layer)
        tensors[f"{prefix}{module}.lora_A"] = np.asarray(layer.lora_A[...], np.float32)[:, keep].T
        tensors[f"{prefix}{module}.lora_E"] = np.asarray(layer.lora_E[...], np.float32)[keep][:, None]
        tensors[f"{prefix}{module}.lora_B"] = np.asarray(layer.lora_B[...], np.float32)[keep].T
        if layer.rank_pattern is not None:
            pattern[f"{module}.lora_E"] = [bool(k) for k in layer.rank_pattern]
    targets = config.target_modules
    fields = {
        "peft_type": "ADALORA", "lora_alpha": config.alpha, "lora_dropout": config.dropout,
        "target_modules": targets if isinstance(targets, str) else list(targets), "init_r": config.init_r,
        "target_r": config.target_r, "tinit": config.tinit, "tfinal": config.tfinal, "deltaT": config.deltaT,
        "beta1": config.beta1, "beta2": config.beta2, "orth_reg_weight": config.orth_reg_weight,
        "total_step": config.total_step, "rank_pattern": pattern or None, "fan_in_fan_out": conv1d, "bias": "none",
        "init_lora_weights": True, "use_rslora": False, "use_dora": False,
    }
    return tensors, fields


def adalora_config_from_peft(hf: dict, source: str) -> AdaLoraConfig:
    for key, accepted in _UNSUPPORTED.items():
        value = hf.get(key, accepted)
        if value != accepted and not (not value and not accepted and accepted != "none"):
            raise ValueError(f"{source}: {key}={value!r} is not supported by jaxkernel AdaLoRA (only {accepted!r})")
    targets = hf.get("target_modules")
    if targets is None:
        raise ValueError(f"{source}: target_modules is missing; jaxkernel needs explicit AdaLoRA targets")
    names = ("init_r", "target_r", "tinit", "tfinal", "deltaT", "beta1", "beta2", "orth_reg_weight", "total_step")
    defaults = AdaLoraConfig()
    return AdaLoraConfig(
        **{name: hf.get(name, getattr(defaults, name)) for name in names},
        alpha=hf.get("lora_alpha", 8), dropout=hf.get("lora_dropout", 0.0) or 0.0,
        target_modules=targets if isinstance(targets, str) else tuple(targets),
        modules_to_save=None if hf.get("modules_to_save") is None else tuple(hf["modules_to_save"]),
    )


def apply_adalora_from_peft(model: nnx.Module, hf: dict, source: str, table, hf_module, family, *, seed: int = 0) -> None:
    """``apply_adalora`` with the file's config, then shrink the layers to its ``rank_pattern``."""
    apply_adalora(model, adalora_config_from_peft(hf, source), seed=seed)
    pattern = _normalise_prefix(model, family, dict(hf.get("rank_pattern") or {}))
    by_module = {hf_module(path, table)[0]: path for path in adalora_layers(model)}
    ours = {}
    for key, kept in pattern.items():
        module = key[: -len(".lora_E")] if key.endswith(".lora_E") else key
        if module not in by_module:
            raise ValueError(f"{source}: rank_pattern names {key!r}, which is no AdaLoRA layer of the model "
                             f"({', '.join(sorted(by_module)[:4])}...)")
        ours[by_module[module]] = kept
    resize_by_rank_pattern(model, ours)


def fill_adalora(model: nnx.Module, tensors: dict, table, hf_module, take, source: str) -> None:
    """Pop each layer's A / E / B (and an optional ``ranknum``) from ``tensors`` into ``model``."""
    for path, layer in adalora_layers(model).items():
        module = hf_module(path, table)[0]
        a = take(tensors, f"{module}.lora_A", (layer.r, layer.in_features), source, f"{path} lora_A (r, in)")
        e = take(tensors, f"{module}.lora_E", (layer.r, 1), source, f"{path} lora_E (r, 1)")
        b = take(tensors, f"{module}.lora_B", (layer.out_features, layer.r), source, f"{path} lora_B (out, r)")
        layer.lora_A[...] = np.asarray(a.T, layer.lora_A.dtype)
        layer.lora_E[...] = np.asarray(e.reshape(-1), layer.lora_E.dtype)
        layer.lora_B[...] = np.asarray(b.T, layer.lora_B.dtype)
        ranknum = tensors.pop(f"{module}.ranknum", None)  # older PEFT files may hold it
        if ranknum is not None:
            layer.set_ranknum(float(np.asarray(ranknum).reshape(-1)[0]))
