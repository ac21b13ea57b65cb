"""Several named adapters on one base model, any mix of methods, switched without rebuilding it.

PEFT keeps every adapter inside each wrapped layer and flips an ``active_adapter`` flag.
jaxkernel's methods are graph surgery, so an ``AdapterSet`` records, per adapter, the surgery
its ``apply_*`` did to the *bare* base model: which attributes of which base modules it replaced
(a linear by its ``LoraLinear`` / ``Ia3Linear``, an adapter hook, the prefix encoder, the head's
parameters re-typed for ``modules_to_save``, ``peft_config``) and with what. Switching undoes one
record and replays another: only references move, the base weights are shared and never copied,
and at any moment the model looks exactly like a model with one adapter applied — so training
(``trainable_filter``), ``save_adapter``, merging and jit work on the active adapter unchanged
(each adapter compiles once; switching back reuses the compiled step).

Example::

    adapters = AdapterSet(jaxkernel.from_pretrained("bert/", task="token-classification", num_labels=7))
    adapters.load("ner", "runs/ner/adapter")         # PEFT or AdapterHub directory; the first becomes active
    adapters.add("ia3", Ia3Config())                 # a fresh adapter, apply_* style (not activated)
    adapters.set_active("ia3"); logits = adapters.model(ids, mask)
    adapters.set_active(None)                        # the bare base model
    adapters.add_weighted_adapter(["a", "b"], [0.7, 0.3], "mix", combination_type="linear")   # LoRA, as PEFT
    adapters.delete("ia3")
    save_adapters(adapters, "out/")                  # jaxkernel.hf.peft_format: PEFT's multi-adapter layout

Merging (``merge_lora`` / ``merge_ia3``) writes into the shared base kernels: switching is
refused while the active adapter is merged (unmerge first; ``save_merged`` works on a copy).
"""

from __future__ import annotations

import dataclasses
import logging
import math
from typing import Any, Callable, Sequence

import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxkernel.peft.adalora import AdaLoraConfig, apply_adalora
from jaxkernel.peft.bottleneck import BottleneckConfig, apply_bottleneck
from jaxkernel.peft.dora import DoraLinear
from jaxkernel.peft.ia3 import Ia3Config, apply_ia3
from jaxkernel.peft.lora import LoraConfig, LoraLinear, apply_lora
from jaxkernel.peft.prefix import PrefixConfig, apply_prefix_tuning

log = logging.getLogger(__name__)

_MISSING = object()  # "the attribute did not exist"


def _apply_for(config) -> Callable[..., nnx.Module]:
    """The ``apply_*`` of a method config (seeded ones get ``seed``)."""
    if isinstance(config, LoraConfig):
        return apply_lora
    if isinstance(config, AdaLoraConfig):
        return apply_adalora
    if isinstance(config, BottleneckConfig):
        return apply_bottleneck
    if isinstance(config, PrefixConfig):
        return apply_prefix_tuning
    if isinstance(config, Ia3Config):
        return lambda model, cfg, seed=0: apply_ia3(model, cfg)
    raise TypeError(
        f"{type(config).__name__} is not an adapter config: use LoraConfig, AdaLoraConfig, Ia3Config, "
        "BottleneckConfig or PrefixConfig"
    )


@dataclasses.dataclass(eq=False)
class _Change:
    owner: nnx.Module  # a module of the bare base model
    name: str  # its attribute (or list index, as a string)
    base: Any  # the value in the bare model (_MISSING: no such attribute)
    adapted: Any  # the value with the adapter applied


@dataclasses.dataclass(eq=False)
class _Adapter:
    config: Any
    changes: list[_Change]


def _attributes(model: nnx.Module) -> dict[int, tuple[nnx.Module, dict[str, Any]]]:
    """id -> (module, its attributes) for every module of the graph (the root included)."""
    out = {}
    for _, node in nnx.iter_graph(model):
        if isinstance(node, nnx.Module) and id(node) not in out:
            out[id(node)] = (node, {k: v for k, v in vars(node).items() if not k.startswith("_pytree__")})
    return out


def _set(owner: nnx.Module, name: str, value) -> None:
    if isinstance(owner, nnx.List) and name.isdigit():
        owner[int(name)] = value
    elif value is _MISSING:
        if hasattr(owner, name):
            delattr(owner, name)
    else:
        setattr(owner, name, value)


class AdapterSet:
    """Named adapters on one base model; ``model`` always carries the active one (or none)."""

    def __init__(self, model: nnx.Module):
        """Args: model: the bare base model (no adapter applied), changed in place from now on."""
        if getattr(model, "peft_config", None) is not None:
            raise ValueError(
                f"{type(model).__name__} already carries a {type(model.peft_config).__name__} adapter: an AdapterSet "
                "starts from the bare base model. Load the base again and add that adapter with "
                "adapters.load(name, directory) or adapters.add(name, config)"
            )
        self.model = model
        self._adapters: dict[str, _Adapter] = {}
        self.active: str | None = None

    @property
    def names(self) -> list[str]:
        """Adapter names, in the order they were added."""
        return list(self._adapters)

    def config(self, name: str):
        """The method config of adapter ``name``."""
        return self._get(name).config

    def _get(self, name: str) -> _Adapter:
        if name not in self._adapters:
            raise KeyError(f"no adapter named {name!r}; the set holds {self.names}")
        return self._adapters[name]

    # -- building ---------------------------------------------------------------------------
    def _record(self, name: str, surgery: Callable[[nnx.Module], Any]) -> _Adapter:
        """Run ``surgery`` on the bare model, record what it changed, keep the previous active adapter."""
        if not isinstance(name, str) or not name:
            raise ValueError(f"adapter name {name!r} must be a non-empty string")
        if name in self._adapters:
            raise ValueError(f"an adapter named {name!r} exists already: delete it first or choose another name")
        previous = self.active
        self.set_active(None)
        before = _attributes(self.model)
        try:
            surgery(self.model)
        except BaseException:
            self._undo_partial(before)
            self.set_active(previous)
            raise
        changes = []
        for owner, attrs in before.values():
            now = {k: v for k, v in vars(owner).items() if not k.startswith("_pytree__")}
            for key in attrs.keys() | now.keys():
                old, new = attrs.get(key, _MISSING), now.get(key, _MISSING)
                if old is not new:
                    changes.append(_Change(owner, key, old, new))
        adapter = _Adapter(getattr(self.model, "peft_config", None), changes)
        self._adapters[name] = adapter
        self.active = name
        if previous is not None or len(self._adapters) > 1:  # like PEFT: only the first adapter becomes active
            self.set_active(previous)
        return adapter

    def _undo_partial(self, before) -> None:
        for owner, attrs in before.values():
            now = {k: v for k, v in vars(owner).items() if not k.startswith("_pytree__")}
            for key in attrs.keys() | now.keys():
                old = attrs.get(key, _MISSING)
                if old is not now.get(key, _MISSING):
                    _set(owner, key, old)

    def add(self, name: str, config, *, seed: int = 0) -> None:
        """Apply a fresh adapter of any method (``LoraConfig``, ``Ia3Config``...) under ``name``."""
        apply = _apply_for(config)
        self._record(name, lambda model: apply(model, config, seed=seed))

    def load(self, name: str, directory, *, seed: int = 0) -> None:
        """Load a PEFT or AdapterHub adapter directory under ``name`` (``jaxkernel.load_adapter``)."""
        from jaxkernel.hf.peft_format import load_adapter

        self._record(name, lambda model: load_adapter(model, directory, seed=seed))

    def save(self, name: str, directory, **save_kwargs):
        """Write adapter ``name`` as its own adapter directory (``jaxkernel.save_adapter``)."""
        from jaxkernel.hf.peft_format import save_adapter

        self._get(name)
        previous = self.active
        self.set_active(name)
        try:
            return save_adapter(self.model, directory, **save_kwargs)
        finally:
            self.set_active(previous)

    # -- switching --------------------------------------------------------------------------
    def set_active(self, name: str | None) -> None:
        """Make ``name`` the adapter the model runs (None: the bare base model); nothing is copied."""
        if name == self.active:
            return
        target = self._get(name) if name is not None else None
        if self.active is not None:
            merged = [type(m).__name__ for _, m in nnx.iter_graph(self.model)
                      if isinstance(m, nnx.Module) and getattr(m, "merged", False) is True]
            if merged:
                raise ValueError(
                    f"adapter {self.active!r} is merged into the shared base weights ({len(merged)} layers): "
                    "unmerge it (unmerge_lora / unmerge_ia3) before switching adapters"
                )
            for change in reversed(self._adapters[self.active].changes):
                _set(change.owner, change.name, change.base)
        self.active = None
        if target is not None:
            for change in target.changes:
                _set(change.owner, change.name, change.adapted)
            self.active = name

    def delete(self, name: str) -> None:
        """Remove adapter ``name``; deleting the active one activates the first remaining (PEFT's rule)."""
        self._get(name)
        if self.active == name:
            self.set_active(None)
            del self._adapters[name]
            if self._adapters:
                log.warning("deleted the active adapter %r; %r is active now", name, self.names[0])
                self.set_active(self.names[0])
            return
        del self._adapters[name]

    # -- combining (PEFT's LoraModel.add_weighted_adapter) ----------------------------------
    def add_weighted_adapter(self, adapters: Sequence[str], weights: Sequence[float], adapter_name: str,
                             combination_type: str = "linear") -> None:
        """A new LoRA adapter combining LoRA adapters, exactly as PEFT's ``add_weighted_adapter``.

        ``linear`` (equal ranks): ``A = Σ sign_i √|w_i s_i| A_i``, ``B = Σ √|w_i s_i| B_i`` with
        ``s_i`` each adapter's scale; ``cat``: ``A = [w_i s_i A_i]``, ``B = [B_i]`` stacked along
        the rank (rank = Σ r_i, the exact weighted sum of the updates). The new adapter has
        ``alpha = r`` (scale 1, or √r with rsLoRA, as PEFT copies the first adapter's config),
        the union of the target modules and the first adapter's ``modules_to_save`` (the
        original head, as PEFT's new ``ModulesToSaveWrapper`` copy). Not activated.

        Raises:
          ValueError: unknown names, a non-LoRA (or DoRA / AdaLoRA) adapter, unequal ranks for
            ``linear``, a mix of regex and list targets, or two adapters training the same head.
        """
        if combination_type not in ("linear", "cat"):
            raise ValueError(f"combination_type={combination_type!r}: jaxkernel implements 'linear' and 'cat'")
        if len(adapters) != len(weights) or not adapters:
            raise ValueError(f"give one weight per adapter: {list(adapters)} / {list(weights)}")
        configs = [self._get(name).config for name in adapters]
        for name, config in zip(adapters, configs):
            if type(config) is not LoraConfig or config.use_dora:
                raise ValueError(f"adapter {name!r} is a {type(config).__name__}"
                                 f"{' with use_dora' if getattr(config, 'use_dora', False) else ''}: "
                                 "add_weighted_adapter combines plain LoRA adapters only")
        combination_type = "linear" if len(adapters) == 1 else combination_type
        if combination_type == "linear" and len({c.r for c in configs}) != 1:
            raise ValueError(f"combination_type linear needs equal ranks, got {[c.r for c in configs]}: use 'cat'")
        heads = [self._head_changes(name) for name in adapters]
        if any(len([h for h in heads if key in h]) > 1 for key in set().union(*heads)):
            raise ValueError("cannot combine adapters that train the same module in full (modules_to_save), as in PEFT")
        if len({isinstance(c.target_modules, str) for c in configs}) != 1:
            raise ValueError("all adapters must give target_modules the same way (all regex or all lists), as in PEFT")
        if isinstance(configs[0].target_modules, str):
            targets = "|".join(f"({c.target_modules})" for c in configs)
        else:
            targets = tuple(sorted(set().union(*(c.target_modules for c in configs))))
        rank = configs[0].r if combination_type == "linear" else sum(c.r for c in configs)
        combined = dataclasses.replace(configs[0], r=rank, alpha=float(rank), target_modules=targets)
        new = self._record(adapter_name, lambda model: apply_lora(model, combined))
        sources = [self._wrappers(name) for name in adapters]
        for change in new.changes:
            if not isinstance(change.adapted, LoraLinear):
                continue
            key = (id(change.owner), change.name)
            found = [(src[key], w) for src, w in zip(sources, weights) if key in src]
            a, b = _combine([layer for layer, _ in found], [w for _, w in found], combination_type, rank)
            change.adapted.lora_A[...] = a.astype(change.adapted.lora_A.dtype)
            change.adapted.lora_B[...] = b.astype(change.adapted.lora_B.dtype)

    def _wrappers(self, name: str) -> dict[tuple[int, str], LoraLinear]:
        return {(id(c.owner), c.name): c.adapted for c in self._get(name).changes
                if isinstance(c.adapted, LoraLinear) and not isinstance(c.adapted, DoraLinear)}

    def _head_changes(self, name: str) -> set[int]:
        """Modules whose parameters adapter ``name`` re-typed (its modules_to_save)."""
        return {id(c.owner) for c in self._get(name).changes
                if isinstance(c.adapted, nnx.Variable) and isinstance(c.base, nnx.Variable)}


def _combine(layers: list[LoraLinear], weights: list[float], combination_type: str, rank: int):
    """(A (in, rank), B (rank, out)) for one site, in float32 like PEFT's torch code."""
    if combination_type == "cat":
        # PEFT: lora_A * weight * scaling, each product rounded to float32
        a = np.concatenate([np.asarray(layer.lora_A[...], np.float32) * np.float32(w) * np.float32(layer.scale)
                            for layer, w in zip(layers, weights)], 1)
        b = np.concatenate([np.asarray(layer.lora_B[...], np.float32) for layer in layers], 0)
        pad = rank - a.shape[1]  # adapters that do not target this module leave zeros
        return jnp.pad(a, ((0, 0), (0, pad))), jnp.pad(b, ((0, pad), (0, 0)))
    scaled = [w * layer.scale for layer, w in zip(layers, weights)]
    w_a = np.asarray([math.sqrt(abs(s)) * (1 if s >= 0 else -1) for s in scaled], np.float32)
    w_b = np.asarray([math.sqrt(abs(s)) for s in scaled], np.float32)
    a = (np.stack([np.asarray(layer.lora_A[...], np.float32) for layer in layers]) * w_a[:, None, None]).sum(0)
    b = (np.stack([np.asarray(layer.lora_B[...], np.float32) for layer in layers]) * w_b[:, None, None]).sum(0)
    return jnp.asarray(a), jnp.asarray(b)
