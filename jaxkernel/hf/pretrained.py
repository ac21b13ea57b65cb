"""``from_pretrained`` / ``save_pretrained``: HF directories in, HF directories out.

Example::

    model = jaxkernel.from_pretrained("bert-base-cased", task="token-classification", num_labels=7)
    jaxkernel.save_pretrained(model, "out/", tokenizer_from="bert-base-cased")
    # PyTorch: transformers.AutoModelForTokenClassification.from_pretrained("out/")
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
from pathlib import Path

import numpy as np
from flax import nnx

from jaxkernel.hf import io
from jaxkernel.hf.mapping import MappingError, export_tensors, hf_key_for, import_tensors, param_paths
from jaxkernel.hf.verify import verify_model_dir
from jaxkernel.models.registry import ModelFamily, family_for, family_of

log = logging.getLogger(__name__)


def config_from_pretrained(
    path_or_id: str | os.PathLike, *, revision: str | None = None, strict: bool = False, **overrides
):
    """(family, config, task from ``architectures``, directory) for a checkpoint.

    ``strict``: a config.json key the family does not classify (``jaxkernel.hf.family.ConfigKeys``)
    is an error instead of a warning.
    """
    directory = io.resolve_model_dir(path_or_id, revision)
    hf = io.read_config(directory)
    source = str(directory / io.CONFIG_NAME)
    family = family_for(hf.get("model_type"), source)
    config = family.config_from_hf(hf, {"source": source, **({"strict": True} if strict else {}), **overrides})
    return family, config, family.task_for_architecture(hf.get("architectures")), directory


def from_pretrained(
    path_or_id: str | os.PathLike,
    *,
    task: str | None = None,
    num_labels: int | None = None,
    labels: list[str] | tuple[str, ...] | None = None,
    dtype: str | None = None,
    seed: int = 0,
    revision: str | None = None,
    strict: bool = False,
) -> nnx.Module:
    """Load a Hugging Face BERT or GPT-2 checkpoint as a jaxkernel model.

    Args:
      path_or_id: a local HF model directory, or a hub id (downloaded, needs internet).
      task: "feature-extraction", "sequence-classification", "token-classification",
        "question-answering", "masked-lm" (BERT) or "causal-lm" (GPT-2). Default:
        from the checkpoint's ``architectures``.
      num_labels / labels: size and names of a classification head.
      dtype: compute dtype, e.g. "bfloat16" (parameters stay float32).
      seed: initialises task heads that the checkpoint does not contain.
      strict: a config.json key jaxkernel does not know is an error, not a warning (it may
        select math jaxkernel does not implement). Checkpoint tensors are always strict: one
        that no table row consumes is an error unless it is a known buffer or another head's.

    Returns:
      The model in eval mode (dropout off); call ``model.train()`` to fine-tune.
    """
    overrides = {"num_labels": num_labels, "labels": labels}
    if dtype is not None:
        overrides["dtype"] = dtype
    family, config, default_task, directory = config_from_pretrained(path_or_id, revision=revision, strict=strict, **overrides)
    task = task or default_task
    family.check_task(task)
    # Built abstractly and filled tensor by tensor: never initialised at random and overwritten.
    from jaxkernel.sharding.placement import load_sharded

    tensors, source = io.open_weights(directory)
    return load_sharded(lambda: family.build(task, config, seed=seed), tensors, None, source=str(directory / source))


def _normalise_prefix(model: nnx.Module, family: ModelFamily, tensors: dict) -> dict:
    """Add or strip the base-model prefix so checkpoint keys match the model (as HF does)."""
    prefix = family.base_prefix + "."
    model_has = hasattr(model, family.base_prefix)
    ckpt_has = any(k.startswith(prefix) for k in tensors)
    if model_has and not ckpt_has:
        return {prefix + k: v for k, v in tensors.items()}
    if not model_has and ckpt_has:
        return {k[len(prefix):] if k.startswith(prefix) else k: v for k, v in tensors.items()}
    return tensors


def load_tensors(model: nnx.Module, tensors: dict[str, np.ndarray], *, source: str) -> None:
    """Fill ``model`` in place from HF-named tensors; heads missing from them stay random."""
    family = family_of(model)
    tensors = _normalise_prefix(model, family, tensors)
    _check_tied_lm_head(model, tensors, source)
    # A pooler may be missing (checkpoints saved from an MLM head): fresh, as HF does, also on a bare model.
    pooler = f"{family.base_prefix}.pooler." if hasattr(model, family.base_prefix) else "pooler."
    report = import_tensors(
        model, tensors, family.table, source=source,
        may_initialize=getattr(model, "head_modules", ()) + (pooler,),
        ignore=family.ignore,
        other_heads=lambda keys: _other_heads(model, family, keys),
    )
    if report.initialized:
        log.warning("%s: newly initialised (not in the checkpoint): %s", source, ", ".join(report.initialized))
    by_head: dict[str, list[str]] = {}
    for key, head in report.other_heads.items():
        by_head.setdefault(head, []).append(key)
    for head, keys in by_head.items():
        log.warning("%s: not loaded, the weights of %s: %s", source, head, ", ".join(keys))


def _other_heads(model: nnx.Module, family: ModelFamily, keys: list[str]) -> dict[str, str]:
    """Which of ``keys`` (checkpoint tensors ``model`` does not use) are another head's weights.

    A key is the weights of another task's model of this family when that model (built
    abstractly, same sizes) maps a parameter to it, or of an HF head jaxkernel has no task
    for when it matches the family's ``extra["other_heads"]`` (regex -> which head).
    """
    found: dict[str, str] = {}
    for pattern, head in family.extra.get("other_heads", {}).items():
        found.update({k: head for k in keys if k not in found and re.search(pattern, k)})
    rest = [k for k in keys if k not in found]
    config = dataclasses.replace(model.config, num_labels=2, labels=None)  # any head size builds
    for task, (_, architecture) in family.tasks.items():
        if not rest or task == getattr(model, "task", None):
            continue
        other = nnx.eval_shape(lambda task=task: family.build(task, config))
        names = {hf_key_for(path, family.table)[0]: None for path in param_paths(other)}
        names = _normalise_prefix(model, family, names)  # base prefix as the checkpoint's keys have it for ``model``
        found.update({k: f"the {task} head ({architecture})" for k in rest if k in names})
        rest = [k for k in rest if k not in found]
    return found


def _check_tied_lm_head(model, tensors, source) -> None:
    head, wte = tensors.get("lm_head.weight"), tensors.get("transformer.wte.weight", tensors.get("wte.weight"))
    if head is None or wte is None:
        return
    if tuple(head.shape) == tuple(wte.shape):  # lazy tensors: compared in row blocks, never whole in memory
        read = [t.read if hasattr(t, "read") else (lambda i, a=np.asarray(t): a[i]) for t in (head, wte)]
        rows = max(1, (64 << 20) // max(1, 4 * int(np.prod(head.shape[1:], dtype=np.int64))))
        if all(np.array_equal(read[0]((slice(i, i + rows),)), read[1]((slice(i, i + rows),)))
               for i in range(0, head.shape[0], rows)):
            return
    raise MappingError(f"{source}: lm_head.weight differs from wte.weight; jaxkernel GPT-2 ties them")


def _check_exportable(model: nnx.Module) -> None:
    """Refuse models whose weights a plain transformers directory cannot hold (never drop them)."""
    from jaxkernel.peft.trainable import SavedModuleParam, TrainableParam

    for path, var in nnx.iter_graph(model):
        name = ".".join(str(p) for p in path)
        if isinstance(var, nnx.Variable) and not isinstance(var, (nnx.Param, nnx.RngState)):
            raise TypeError(
                f"{name} is a {type(var).__name__}, not a float parameter: export "
                "jaxkernel.dequantize_model(model) to get float weights a transformers directory can hold"
            )
        adapter_param = isinstance(var, TrainableParam) and not isinstance(var, SavedModuleParam)
        if isinstance(var, nnx.Param) and (adapter_param or "lora_" in name or "prefix_encoder" in name):
            raise TypeError(
                f"{name} belongs to a PEFT adapter: use jaxkernel.save_merged(model, dir) for a plain "
                "transformers directory (LoRA / DoRA / IA3 folded in), or jaxkernel.save_adapter(model, dir) for "
                "a PEFT (or, for bottleneck adapters, AdapterHub) adapter"
            )


def hf_config_for(model: nnx.Module) -> dict:
    family = family_of(model)
    hf = family.config_to_hf(model.config)
    hf["architectures"] = [family.tasks[model.task][1]]
    return hf


def save_pretrained(
    model: nnx.Module,
    directory: str | os.PathLike,
    *,
    tokenizer=None,
    tokenizer_from: str | os.PathLike | None = None,
    max_shard_size: int | str = "5GB",
    verify: bool | None = None,
    verify_torch: bool | None = None,
) -> Path:
    """Write ``model`` as a directory that ``transformers.AutoModelFor*.from_pretrained`` loads.

    Args:
      model: any jaxkernel BERT/GPT-2 model.
      directory: output directory (created).
      tokenizer: optional object with ``save_pretrained`` (a transformers tokenizer).
      tokenizer_from: or a model directory whose tokenizer files are copied.
      max_shard_size: past this, weights are split into shards plus an index.
      verify: read the directory back and compare tensors and probe outputs with ``model``
        (default True, or what ``jaxkernel.hf.verify.export_verification`` set); the result
        goes to ``jaxkernel_export.json``.
      verify_torch: also run the probe through ``transformers`` in a subprocess (default False:
        it costs seconds; the CLI turns it on).

    Returns:
      The output directory.

    Raises:
      jaxkernel.hf.verify.ExportVerificationError: what was written differs from ``model``; the
        directory is marked bad (``jaxkernel_export.FAILED.json``).
    """
    directory = Path(directory)
    family = family_of(model)
    _check_exportable(model)
    tensors = export_tensors(model, family.table)
    io.write_weights(tensors, directory, max_shard_size)
    io.write_config(hf_config_for(model), directory)
    if tokenizer is not None:
        tokenizer.save_pretrained(str(directory))
    elif tokenizer_from is not None:
        io.copy_tokenizer_files(io.resolve_model_dir(tokenizer_from), directory)
    verify_model_dir(model, directory, tokenizer=tokenizer, verify=verify, verify_torch=verify_torch)
    return directory
