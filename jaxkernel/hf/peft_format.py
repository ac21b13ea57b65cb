"""Hugging Face PEFT adapter directories, both ways, plus merged export.

An adapter directory holds ``adapter_config.json`` and
``adapter_model.safetensors`` exactly as ``peft`` writes them, so
``peft.PeftModel.from_pretrained(hf_base, directory)`` loads what jaxkernel
trained and ``load_adapter`` reads what PEFT trained. Names come from the
model's mapping table (``jaxkernel.hf.bert`` / ``gpt2``), never a second table:

=====================================  =====================================================
jaxkernel                              PEFT key
=====================================  =====================================================
``<m>.lora_A`` (in, r)                 ``base_model.model.<hf m>.lora_A.weight`` (r, in)
``<m>.lora_B`` (r, out)                ``base_model.model.<hf m>.lora_B.weight`` (out, r)
``<m>.lora_magnitude_vector`` (out,)   ``base_model.model.<hf m>.lora_magnitude_vector`` (DoRA)
``<m>.ia3_l`` (out,) / (in,)           ``base_model.model.<hf m>.ia3_l`` (out, 1) / feed-forward (1, in)
``<m>.lora_A`` / ``lora_E`` / ``lora_B``  ``base_model.model.<hf m>.lora_A`` ... (AdaLoRA: ``jaxkernel.hf.peft_adalora``)
modules_to_save param (LoRA)           ``base_model.model.<hf key>`` (table transform)
modules_to_save param (prefix)         ``base_model.<hf key>``
prefix encoder output (P, 2 L D)       ``prompt_embeddings``
=====================================  =====================================================

``<hf m>`` is the HF module of ``<m>.kernel``. LoRA factors are ``nn.Linear``
shaped even on GPT-2's ``Conv1D`` (PEFT handles Conv1D through
``fan_in_fan_out``, which is set when the table stores the kernel untransposed).
``task_type`` follows ``model.task``. A prefix is saved the way PEFT saves it:
the encoder *output*, so a projected prefix comes back as a plain
(``prefix_projection=False``) prefix with identical outputs. Bottleneck adapters have no PEFT
form: ``save_adapter`` / ``load_adapter`` hand them to ``jaxkernel.hf.adapterhub_format``.

Several named adapters (``jaxkernel.peft.multi_adapter.AdapterSet``) are saved as PEFT saves a
multi-adapter ``PeftModel``: ``default`` in the directory itself, every other one in a
subdirectory named after it (``save_adapters`` / ``load_adapters``).

Example::

    save_adapter(model, "adapter/")                     # PEFT directory
    # torch: PeftModel.from_pretrained(AutoModelForTokenClassification..., "adapter/")
    model = load_adapter(jaxkernel.from_pretrained(base_dir, task="token-classification"), "adapter/")
    save_merged(model, "merged/")                       # plain transformers directory
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np
from flax import nnx
from safetensors.numpy import save_file

from jaxkernel.hf import io
from jaxkernel.models.registry import family_of
from jaxkernel.hf.mapping import IDENTITY, MappingError, Rule, hf_key_for, param_paths
from jaxkernel.hf.pretrained import _normalise_prefix, save_pretrained
from jaxkernel.hf.verify import verify_adapter_dir, verify_model_dir
from jaxkernel.peft.adalora import AdaLoraConfig
from jaxkernel.peft.bottleneck import BottleneckConfig
from jaxkernel.peft.ia3 import Ia3Config, apply_ia3, ia3_layers
from jaxkernel.peft.lora import LoraConfig, apply_lora, lora_layers, merge_and_unload
from jaxkernel.peft.prefix import PrefixConfig, apply_prefix_tuning, base_model_of, model_dims
from jaxkernel.peft.trainable import SavedModuleParam

log = logging.getLogger(__name__)

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
LORA_PREFIX = "base_model.model."
PROMPT_PREFIX = "base_model."  # prompt-learning PeftModels hold the HF model directly
PROMPT_KEY = "prompt_embeddings"
PEFT_TASK_TYPES = {
    "sequence-classification": "SEQ_CLS",
    "token-classification": "TOKEN_CLS",
    "question-answering": "QUESTION_ANS",
    "causal-lm": "CAUSAL_LM",
    "feature-extraction": "FEATURE_EXTRACTION",
    "masked-lm": None,  # PEFT has no masked-LM task type: a plain PeftModel
}

# LoRA options PEFT can save that jaxkernel does not implement: key -> the only accepted value.
_LORA_UNSUPPORTED = {
    "bias": "none", "lora_bias": False, "layers_to_transform": None, "layers_pattern": None,
    "rank_pattern": None, "alpha_pattern": None, "exclude_modules": None, "layer_replication": None,
    "target_parameters": None, "trainable_token_indices": None, "use_qalora": False, "use_bdlora": None,
    "alora_invocation_tokens": None,
}


def peft_task_type(model: nnx.Module) -> str | None:
    task = getattr(model, "task", None)
    if task not in PEFT_TASK_TYPES:
        raise ValueError(f"{type(model).__name__} has task {task!r}, which has no PEFT task type")
    return PEFT_TASK_TYPES[task]


def _hf_module(path: str, table: list[Rule]) -> tuple[str, Rule]:
    """HF module name for our module ``path`` (via the rule for its kernel)."""
    key, rule = hf_key_for(path + ".kernel", table)
    if not key.endswith(".weight"):
        raise MappingError(f"the mapping table names {path}.kernel {key!r}; expected an HF '.weight' key")
    return key[: -len(".weight")], rule


def _saved_module_tensors(model: nnx.Module, table: list[Rule]) -> dict[str, np.ndarray]:
    out = {}
    for path, var in param_paths(model).items():
        if isinstance(var, SavedModuleParam):
            key, rule = hf_key_for(path, table)
            out[key] = np.ascontiguousarray(rule.transform.to_hf(np.asarray(var[...], np.float32)))
    return out


def _saved_module_names(model: nnx.Module) -> list[str]:
    """Outermost modules all of whose params are SavedModuleParam, as paths (PEFT's modules_to_save).

    Climbing to the outermost whole module matters for nested heads (RoBERTa's ``classifier.dense`` /
    ``classifier.out_proj``): PEFT must get ``classifier``, not its children, or it wraps twice.
    """
    params = param_paths(model)
    saved = {path for path, var in params.items() if isinstance(var, SavedModuleParam)}
    owners = set()
    for path in saved:
        parts = path.split(".")[:-1]
        for i in range(1, len(parts) + 1):
            module = ".".join(parts[:i])
            if all(p in saved for p in params if p.startswith(module + ".")):
                owners.add(module)
                break
    return sorted(owners)


def save_adapter(model: nnx.Module, directory: str | os.PathLike, *, base_model_name_or_path: str | None = None,
                 verify: bool | None = None, verify_torch: bool | None = None) -> Path:
    """Write the model's LoRA / DoRA, AdaLoRA, IA3 or prefix adapter as a PEFT directory.

    A bottleneck adapter is written as an AdapterHub directory instead (``save_adapterhub``).

    Args:
      model: a model with ``apply_lora`` / ``apply_ia3`` / ``apply_prefix_tuning`` (or ``load_adapter``) applied.
      directory: output directory (created).
      base_model_name_or_path: recorded in ``adapter_config.json`` for PEFT users.
      verify / verify_torch: read the adapter back and compare it with ``model``, and also run
        ``peft.PeftModel`` in a subprocess (see ``jaxkernel.save_pretrained``).

    Returns:
      The directory.
    """
    config = getattr(model, "peft_config", None)
    if isinstance(config, BottleneckConfig):
        from jaxkernel.hf.adapterhub_format import save_adapterhub

        return save_adapterhub(model, directory, model_name=base_model_name_or_path)
    if not isinstance(config, (LoraConfig, AdaLoraConfig, PrefixConfig, Ia3Config)):
        raise ValueError(
            f"{type(model).__name__} carries no adapter: apply_lora / apply_ia3 / apply_prefix_tuning first, "
            "or use jaxkernel.save_pretrained for a full model"
        )
    family = family_of(model)
    common = {
        "task_type": peft_task_type(model),
        "base_model_name_or_path": base_model_name_or_path,
        "inference_mode": True,
        "modules_to_save": _saved_module_names(model) or None,
        "revision": None,
    }
    if isinstance(config, LoraConfig):
        tensors, conv1d = {}, False
        for path, layer in lora_layers(model).items():
            hf_module, rule = _hf_module(path, family.table)
            conv1d |= rule.transform is IDENTITY  # kernel stored (in, out): HF Conv1D
            # Merged layers still hold A and B; the base kernel is what changed.
            tensors[f"{LORA_PREFIX}{hf_module}.lora_A.weight"] = np.asarray(layer.lora_A[...], np.float32).T
            tensors[f"{LORA_PREFIX}{hf_module}.lora_B.weight"] = np.asarray(layer.lora_B[...], np.float32).T
            if config.use_dora:
                tensors[f"{LORA_PREFIX}{hf_module}.lora_magnitude_vector"] = np.asarray(
                    layer.lora_magnitude_vector[...], np.float32)
        tensors.update({LORA_PREFIX + k: v for k, v in _saved_module_tensors(model, family.table).items()})
        targets = config.target_modules
        hf_config = {
            "peft_type": "LORA", **common, "r": config.r, "lora_alpha": config.alpha,
            "lora_dropout": config.dropout, "use_rslora": config.use_rslora,
            "target_modules": targets if isinstance(targets, str) else list(targets),
            "fan_in_fan_out": conv1d, "bias": "none", "init_lora_weights": True, "use_dora": config.use_dora,
        }
    elif isinstance(config, AdaLoraConfig):
        from jaxkernel.hf.peft_adalora import adalora_to_peft

        tensors, fields = adalora_to_peft(model, config, family.table, _hf_module, LORA_PREFIX)
        tensors.update({LORA_PREFIX + k: v for k, v in _saved_module_tensors(model, family.table).items()})
        hf_config = {**common, **fields}
    elif isinstance(config, Ia3Config):
        tensors, conv1d = {}, False
        for path, layer in ia3_layers(model).items():
            hf_module, rule = _hf_module(path, family.table)
            conv1d |= rule.transform is IDENTITY
            vector = np.asarray(layer.ia3_l[...], np.float32)
            tensors[f"{LORA_PREFIX}{hf_module}.ia3_l"] = vector[None, :] if layer.is_feedforward else vector[:, None]
        tensors.update({LORA_PREFIX + k: v for k, v in _saved_module_tensors(model, family.table).items()})
        hf_config = {
            "peft_type": "IA3", **common, "target_modules": _as_json(config.target_modules),
            "feedforward_modules": _as_json(config.feedforward_modules), "fan_in_fan_out": conv1d,
            "init_ia3_weights": True, "exclude_modules": None,
        }
    else:
        encoder = base_model_of(model).prefix_encoder
        tensors = {PROMPT_KEY: np.asarray(encoder.flat(), np.float32)}
        tensors.update({PROMPT_PREFIX + k: v for k, v in _saved_module_tensors(model, family.table).items()})
        dims = model_dims(model)
        kv_width = dims.kv_heads * dims.head_dim  # PEFT sizes the prefix by key/value heads (GQA)
        hf_config = {
            "peft_type": "PREFIX_TUNING", **common, "num_virtual_tokens": config.num_virtual_tokens,
            "token_dim": kv_width, "num_transformer_submodules": 1, "num_attention_heads": dims.kv_heads,
            "num_layers": dims.layers, "encoder_hidden_size": encoder.encoder_hidden_size or kv_width,
            # The saved tensor is the encoder output; describing it as unprojected lets PEFT
            # also reload it with is_trainable=True.
            "prefix_projection": False,
        }
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, str(directory / ADAPTER_WEIGHTS),
              metadata={"format": "pt"})
    (directory / ADAPTER_CONFIG).write_text(json.dumps(hf_config, indent=2, sort_keys=True) + "\n")
    verify_adapter_dir(model, directory, tensors, verify=verify, verify_torch=verify_torch)
    return directory


def _as_json(targets):
    return targets if isinstance(targets, str) else list(targets)


def read_adapter(directory: str | os.PathLike) -> tuple[dict, dict[str, np.ndarray], str]:
    """(adapter_config dict, tensors, weights file) of a PEFT adapter directory."""
    directory = Path(directory)
    config_file, weights_file = directory / ADAPTER_CONFIG, directory / ADAPTER_WEIGHTS
    if not config_file.is_file():
        raise FileNotFoundError(f"{config_file} not found: a PEFT adapter directory needs {ADAPTER_CONFIG}")
    if not weights_file.is_file():
        found = sorted(p.name for p in directory.iterdir())
        raise FileNotFoundError(
            f"{weights_file} not found (found {found}); jaxkernel reads {ADAPTER_WEIGHTS} only: "
            "re-save the adapter with safe_serialization=True"
        )
    try:
        hf_config = json.loads(config_file.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{config_file} is not valid JSON: {err}") from err
    return hf_config, io._load_safetensors(weights_file), str(weights_file)


def _lora_config_from_peft(hf: dict, source: str) -> LoraConfig:
    for key, accepted in _LORA_UNSUPPORTED.items():
        value = hf.get(key, accepted)
        if value != accepted and not (not value and not accepted and accepted != "none"):
            raise ValueError(f"{source}: {key}={value!r} is not supported by jaxkernel LoRA (only {accepted!r})")
    targets = hf.get("target_modules")
    if targets is None:
        raise ValueError(f"{source}: target_modules is missing; jaxkernel needs explicit LoRA targets")
    return LoraConfig(
        r=hf["r"], alpha=hf.get("lora_alpha", 8), dropout=hf.get("lora_dropout", 0.0) or 0.0,
        target_modules=targets if isinstance(targets, str) else tuple(targets),
        modules_to_save=None if hf.get("modules_to_save") is None else tuple(hf["modules_to_save"]),
        use_rslora=bool(hf.get("use_rslora", False)), use_dora=bool(hf.get("use_dora", False)),
    )


def _ia3_config_from_peft(hf: dict, source: str) -> Ia3Config:
    if hf.get("exclude_modules"):
        raise ValueError(f"{source}: exclude_modules={hf['exclude_modules']!r} is not supported by jaxkernel IA3")
    targets, feedforward = hf.get("target_modules"), hf.get("feedforward_modules")
    if targets is None or feedforward is None:
        raise ValueError(f"{source}: target_modules and feedforward_modules must be given for IA3")
    return Ia3Config(
        target_modules=targets if isinstance(targets, str) else tuple(targets),
        feedforward_modules=feedforward if isinstance(feedforward, str) else tuple(feedforward),
        modules_to_save=None if hf.get("modules_to_save") is None else tuple(hf["modules_to_save"]),
    )


def _prefix_config_from_peft(hf: dict, model: nnx.Module, source: str) -> PrefixConfig:
    dims = model_dims(model)
    expected = {"num_layers": dims.layers, "token_dim": dims.kv_heads * dims.head_dim, "num_attention_heads": dims.kv_heads,
                "num_transformer_submodules": 1}
    for key, value in expected.items():
        if hf.get(key) is not None and hf[key] != value:
            raise ValueError(
                f"{source}: {key}={hf[key]} but the model has {value}: this prefix was trained for a different base model"
            )
    return PrefixConfig(
        num_virtual_tokens=hf["num_virtual_tokens"],
        modules_to_save=None if hf.get("modules_to_save") is None else tuple(hf["modules_to_save"]),
    )


def _check_task_type(hf: dict, model: nnx.Module, task_type: str | None, config_file: Path) -> None:
    """An adapter trained for another head is refused; one trained on the bare model fits any head (as in HF)."""
    theirs = hf.get("task_type")
    if theirs in (None, task_type, PEFT_TASK_TYPES["feature-extraction"]):
        return
    task = next((t for t, v in PEFT_TASK_TYPES.items() if v == theirs), None)
    fix = (f"load the base model with task={task!r} (jaxkernel.from_pretrained(base, task={task!r}))" if task
           else "load it onto the head it was trained for")
    raise ValueError(
        f"{config_file}: task_type {theirs!r} but the model is {model.task} ({task_type}): the adapter was "
        f"trained for another head; {fix}"
    )


def _check_rank(hf: dict, tensors: dict, config_file: Path, source: str) -> None:
    ranks = sorted({int(v.shape[0]) for k, v in tensors.items() if k.endswith(".lora_A.weight")})
    if ranks and ranks != [hf.get("r")]:
        raise ValueError(
            f"{config_file}: r={hf.get('r')} but the LoRA tensors in {source} have rank {', '.join(map(str, ranks))}: "
            "fix r in adapter_config.json, or re-save the adapter"
        )


def _take(tensors: dict, key: str, expected: tuple, source: str, what: str) -> np.ndarray:
    if key not in tensors:
        raise MappingError(f"{source} lacks {key!r} (for {what}): was the adapter trained with other target modules?")
    value = np.asarray(tensors.pop(key))
    if tuple(value.shape) != tuple(expected):
        raise MappingError(
            f"adapter tensor {key!r} in {source} has shape {tuple(value.shape)}; {what} expects {tuple(expected)}: "
            "was the adapter trained on a different base model?"
        )
    return value


def load_adapter(model: nnx.Module, directory: str | os.PathLike, *, seed: int = 0) -> nnx.Module:
    """Apply a PEFT adapter directory (LoRA / DoRA, AdaLoRA, IA3 or prefix tuning) to ``model``, in place.

    An AdapterHub bottleneck-adapter directory is recognised and read by ``load_adapterhub``.

    Args:
      model: the jaxkernel base model, loaded with the head the adapter was trained for.
      directory: a directory written by ``peft`` ``save_pretrained`` or ``save_adapter``.
      seed: seeds LoRA dropout (weights all come from the file).

    Returns:
      ``model`` with the adapter applied and filled.

    Raises:
      ValueError / MappingError: unsupported adapter options, or tensors that do
        not fit the model (names the tensor, its shape and the expectation).
        After an error the model may already carry the (partly filled)
        adapter: load the base model again before retrying.
    """
    from jaxkernel.hf.adapterhub_format import is_adapterhub_dir, load_adapterhub

    if is_adapterhub_dir(directory):
        return load_adapterhub(model, directory, seed=seed)
    hf, tensors, source = read_adapter(directory)
    family = family_of(model)
    task_type = peft_task_type(model)
    _check_task_type(hf, model, task_type, Path(directory) / ADAPTER_CONFIG)
    peft_type = hf.get("peft_type")
    if peft_type == "LORA":
        _check_rank(hf, tensors, Path(directory) / ADAPTER_CONFIG, source)
        apply_lora(model, _lora_config_from_peft(hf, source), seed=seed)
        prefix = LORA_PREFIX
    elif peft_type == "ADALORA":
        from jaxkernel.hf.peft_adalora import apply_adalora_from_peft, fill_adalora

        apply_adalora_from_peft(model, hf, source, family.table, _hf_module, family, seed=seed)
        prefix = LORA_PREFIX
    elif peft_type == "IA3":
        apply_ia3(model, _ia3_config_from_peft(hf, source))
        prefix = LORA_PREFIX
    elif peft_type == "PREFIX_TUNING":
        apply_prefix_tuning(model, _prefix_config_from_peft(hf, model, source), seed=seed)
        prefix = PROMPT_PREFIX
    else:
        raise ValueError(f"{source}: peft_type {peft_type!r} is not supported; jaxkernel reads LORA, ADALORA, IA3 and "
                         "PREFIX_TUNING")

    prompt = tensors.pop(PROMPT_KEY, None)
    unexpected = sorted(k for k in tensors if not k.startswith(prefix))
    if unexpected:
        raise MappingError(f"{source}: unexpected tensors for a {peft_type} adapter: {', '.join(unexpected[:8])}")
    tensors = {k[len(prefix):]: v for k, v in tensors.items()}
    if peft_type in ("LORA", "ADALORA", "IA3"):  # an adapter trained on the bare model fits a task model, as in HF
        tensors = _normalise_prefix(model, family, tensors)

    if peft_type == "LORA":
        for path, layer in lora_layers(model).items():
            hf_module, _ = _hf_module(path, family.table)
            a = _take(tensors, f"{hf_module}.lora_A.weight", (layer.r, layer.in_features), source, f"{path} lora_A (r, in)")
            b = _take(tensors, f"{hf_module}.lora_B.weight", (layer.out_features, layer.r), source, f"{path} lora_B (out, r)")
            layer.lora_A[...] = np.asarray(a.T, layer.lora_A.dtype)
            layer.lora_B[...] = np.asarray(b.T, layer.lora_B.dtype)
            if model.peft_config.use_dora:
                m = _take(tensors, f"{hf_module}.lora_magnitude_vector", (layer.out_features,), source,
                          f"{path} lora_magnitude_vector (out,)")
                layer.lora_magnitude_vector[...] = np.asarray(m, layer.lora_magnitude_vector.dtype)
    elif peft_type == "ADALORA":
        fill_adalora(model, tensors, family.table, _hf_module, _take, source)
    elif peft_type == "IA3":
        for path, layer in ia3_layers(model).items():
            hf_module, _ = _hf_module(path, family.table)
            shape = (1, layer.in_features) if layer.is_feedforward else (layer.out_features, 1)
            what = f"{path} ia3_l " + ("(1, in): feed-forward" if layer.is_feedforward else "(out, 1)")
            vector = _take(tensors, f"{hf_module}.ia3_l", shape, source, what)
            layer.ia3_l[...] = np.asarray(vector.reshape(-1), layer.ia3_l.dtype)
    else:
        encoder = base_model_of(model).prefix_encoder
        if prompt is None:
            raise MappingError(f"{source} lacks {PROMPT_KEY!r}, the prefix of a PREFIX_TUNING adapter")
        expected = tuple(encoder.embedding.shape)
        if tuple(prompt.shape) != expected:
            raise MappingError(
                f"{PROMPT_KEY!r} in {source} has shape {tuple(prompt.shape)}; the model expects {expected} "
                "(num_virtual_tokens, layers * 2 * hidden): was it trained on a different base model?"
            )
        encoder.embedding[...] = np.asarray(prompt, encoder.embedding.dtype)

    for path, var in param_paths(model).items():
        if isinstance(var, SavedModuleParam):
            key, rule = hf_key_for(path, family.table)
            value = rule.transform.to_ours(np.asarray(tensors.pop(key))) if key in tensors else None
            if value is None or tuple(value.shape) != tuple(var.shape):
                raise MappingError(
                    f"{source}: modules_to_save tensor {prefix + key!r} for {path} is "
                    + ("missing" if value is None else f"shaped {tuple(value.shape)} after {rule.transform.name}")
                    + f"; the model expects {tuple(var.shape)}: does the model's head match the adapter's?"
                )
            var[...] = np.asarray(value, var.dtype)
    if tensors:
        raise MappingError(
            f"{source}: {len(tensors)} tensor(s) fit no module of {type(model).__name__}: "
            f"{', '.join(sorted(tensors)[:8])}: was the adapter trained on a different model or head?"
        )
    return model


def save_merged(model: nnx.Module, directory: str | os.PathLike, *, verify: bool | None = None,
                verify_torch: bool | None = None, **save_kwargs) -> Path:
    """Write the full model with LoRA folded in as a plain ``transformers`` directory.

    ``model`` itself is left untouched (a copy is merged). ``save_kwargs`` go to
    ``jaxkernel.save_pretrained`` (tokenizer, max_shard_size...). ``verify`` / ``verify_torch``
    compare the written directory with ``model`` itself (unmerged), as ``save_pretrained`` does.
    """
    merged = merge_and_unload(nnx.clone(model))
    out = save_pretrained(merged, directory, verify=False, **save_kwargs)
    verify_model_dir(merged, out, reference=model, kind="merged", tokenizer=save_kwargs.get("tokenizer"),
                     verify=verify, verify_torch=verify_torch)
    return out


def save_adapters(adapters, directory: str | os.PathLike, **save_kwargs) -> Path:
    """Write every adapter of an ``AdapterSet`` as PEFT writes a multi-adapter ``PeftModel``.

    ``default`` goes in ``directory`` itself, any other adapter in ``directory/<name>``; each is an
    ordinary adapter directory (PEFT, or AdapterHub for bottleneck adapters). In PyTorch:
    ``PeftModel.from_pretrained(base, directory)`` then ``load_adapter(directory/<name>, adapter_name=<name>)``.
    ``save_kwargs`` go to ``save_adapter``. The set's active adapter is unchanged.
    """
    directory = Path(directory)
    for name in adapters.names:
        adapters.save(name, directory if name == "default" else directory / name, **save_kwargs)
    return directory


def load_adapters(adapters, directory: str | os.PathLike, *, seed: int = 0) -> list[str]:
    """Load every adapter ``save_adapters`` (or a multi-adapter ``PeftModel.save_pretrained``) wrote.

    An adapter in ``directory`` itself is named ``default``; each subdirectory holding an adapter
    is named after the subdirectory. Returns the names loaded, in that order.
    """
    from jaxkernel.hf.adapterhub_format import is_adapterhub_dir

    directory = Path(directory)
    found = [("default", directory)] if (directory / ADAPTER_CONFIG).is_file() else []
    found += [(sub.name, sub) for sub in sorted(directory.iterdir())
              if sub.is_dir() and ((sub / ADAPTER_CONFIG).is_file() or is_adapterhub_dir(sub))]
    if not found:
        raise FileNotFoundError(f"{directory} holds no adapter ({ADAPTER_CONFIG} in it or in a subdirectory)")
    for name, path in found:
        adapters.load(name, path, seed=seed)
    return [name for name, _ in found]
