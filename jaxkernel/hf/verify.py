"""Every export checks itself before it reports success.

``save_pretrained``, ``save_merged`` and ``save_adapter`` (and through them ``jaxkernel
export``, ``convert`` and ``quantize --hf-out``) end here: what was written is read back and
compared with the model in memory —

1. the tensors, byte for byte, through jaxkernel's own reader;
2. the outputs on a small probe batch, built from the tokenizer when one is given or copied
   (random ids otherwise), of the model re-read from the directory (``from_pretrained``, or
   ``load_adapter`` on the in-memory base) against the model in memory;
3. optionally (``verify_torch=True``; the CLI's default) the same probe through the PyTorch
   class a user would load — ``transformers.<architecture>`` or ``peft.PeftModel`` — in a
   subprocess (``torch_probe.py``), when torch + transformers (+ peft) are installed.

The result goes to ``<dir>/jaxkernel_export.json`` (versions, source run and step, probe
diffs). A mismatch above tolerance is an ``ExportVerificationError`` and the record is written
as ``jaxkernel_export.FAILED.json`` instead: the directory is marked bad, never silently
shipped. ``verify=False`` skips the checks (the record then says so).

Example::

    save_pretrained(model, "out/", tokenizer=tok, verify_torch=True)
    print(summary("out/"))   # verified: ... max |logit diff| 3.1e-06 vs transformers BertForTokenClassification
    with export_verification(torch=True, source={"run_dir": "runs/a", "step": 200}):
        trainer.export("out/")          # what the CLI does; explicit arguments still win
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import datetime
import importlib.metadata
import importlib.util
import json
import logging
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import jax
import numpy as np
from flax import nnx

from jaxkernel.hf import io
from jaxkernel.hf.mapping import export_tensors, param_paths
from jaxkernel.models.registry import family_of

log = logging.getLogger(__name__)

RECORD = "jaxkernel_export.json"
FAILED_RECORD = "jaxkernel_export.FAILED.json"
PROBE_TEXTS = ("jaxkernel checks every export before it ships.", "Paris is nice in May.")
PROBE_MAX_LENGTH = 24
RANDOM_LENGTHS = (9, 5)
# max |diff| allowed, relative to max(1, max |reference output|): float32 compute, else (bf16/fp16).
RTOL_FLOAT32 = 1e-4
RTOL_HALF = 5e-2
TORCH_TIMEOUT_S = 600


class ExportVerificationError(ValueError):
    """What was written does not match the model in memory; the directory is marked bad."""


@dataclasses.dataclass(frozen=True)
class VerifyOptions:
    """Defaults for exports that do not pass ``verify`` / ``verify_torch`` themselves.

    Attributes:
      enabled: run the checks at all.
      torch: also run the probe through PyTorch in a subprocess.
      tokenizer: a tokenizer object for the probe (when the export call has none).
      source: provenance recorded in the json (run directory, step, source model...).
    """

    enabled: bool = True
    torch: bool = False
    tokenizer: Any = None
    source: dict | None = None


_OPTIONS: contextvars.ContextVar[VerifyOptions] = contextvars.ContextVar("jaxkernel_verify", default=VerifyOptions())


@contextlib.contextmanager
def export_verification(**changes):
    """Change the verification defaults (``VerifyOptions`` fields) for exports inside the block."""
    token = _OPTIONS.set(dataclasses.replace(_OPTIONS.get(), **changes))
    try:
        yield
    finally:
        _OPTIONS.reset(token)


# -- entry points, called at the end of each writer ---------------------------------------------------


def verify_model_dir(exported: nnx.Module, directory, *, reference: nnx.Module | None = None, kind: str = "model",
                     tokenizer=None, verify: bool | None = None, verify_torch: bool | None = None) -> dict | None:
    """Check a transformers directory written from ``exported`` (``reference``: the model to match, default it).

    Returns the record (also written to the directory), or None where nothing was checked.

    Raises:
      ExportVerificationError: a tensor or an output differs; the directory is marked bad.
    """
    return _Check(exported, reference or exported, Path(directory), kind, tokenizer, verify, verify_torch).run()


def verify_adapter_dir(model: nnx.Module, directory, written: dict[str, np.ndarray], *, verify: bool | None = None,
                       verify_torch: bool | None = None) -> dict | None:
    """Check a PEFT adapter directory: ``written`` are the tensors ``save_adapter`` meant to write."""
    return _Check(model, model, Path(directory), "adapter", None, verify, verify_torch, written).run()


def read_record(directory) -> dict | None:
    """The verification record of an export directory (the FAILED one if that is what is there)."""
    for name in (RECORD, FAILED_RECORD):
        file = Path(directory) / name
        if file.is_file():
            return json.loads(file.read_text())
    return None


def summary(directory) -> str:
    """One line for the CLI: ``verified: 12 tensors byte-identical; max |logit diff| 3.1e-06 vs ...``."""
    record = read_record(directory)
    if record is None:
        return f"not verified: {directory} has no {RECORD} (this format is not checked yet)"
    if record.get("verified") is None:
        return f"not verified: {record.get('skipped')}"
    logits = [c for c in record["checks"] if c["check"] == "outputs" and "max_abs_diff" in c]
    tensors = next((c for c in record["checks"] if c["check"] == "tensors"), None)
    parts = [f"{tensors['compared']} tensors byte-identical on re-read"] if tensors and tensors["ok"] else []
    parts += [f"max |logit diff| {c['max_abs_diff']:.1e} vs {c['against']}" for c in logits]
    parts += [f"{c['against']}: {c['skipped']}" for c in record["checks"] if "skipped" in c]
    return ("verified: " if record["verified"] else "FAILED: ") + "; ".join(parts)


# -- the check ----------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _deterministic(model: nnx.Module):
    """Dropout off for the probe, the caller's train/eval mode restored afterwards."""
    saved = [(m, m.deterministic) for _, m in nnx.iter_graph(model)
             if isinstance(m, nnx.Module) and isinstance(getattr(m, "deterministic", None), bool)]
    for m, _ in saved:
        m.deterministic = True
    try:
        yield
    finally:
        for m, value in saved:
            m.deterministic = value


def _outputs(model: nnx.Module, batch: dict) -> list[np.ndarray]:
    from jaxkernel.train.step import compiled_forward

    with _deterministic(model):
        out = compiled_forward(model, batch)
    out = list(out) if isinstance(out, tuple) else [out]
    return [np.asarray(o, np.float32) for o in out if o is not None]


def _versions(*names) -> dict:
    import jaxkernel

    found = {"jaxkernel": jaxkernel.__version__}
    for name in names:
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            found[name] = importlib.metadata.version(name)
    return found


class _Check:
    def __init__(self, exported, reference, directory: Path, kind: str, tokenizer, verify, verify_torch, written=None):
        options = _OPTIONS.get()
        self.enabled = options.enabled if verify is None else verify
        self.torch = options.torch if verify_torch is None else verify_torch
        self.tokenizer = tokenizer if tokenizer is not None else options.tokenizer
        self.source = options.source
        self.exported, self.reference, self.directory, self.kind = exported, reference, directory, kind
        self.family = family_of(exported)
        self.written = written
        self.checks: list[dict] = []
        self.problems: list[str] = []
        self.warnings: list[str] = []

    # record ---------------------------------------------------------------------------------------

    def _record(self, verified) -> dict:
        model = self.reference
        record = {
            "format": "jaxkernel-export", "version": 1, "verified": verified, "kind": self.kind,
            "written_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "model": {"class": type(model).__name__, "task": getattr(model, "task", None),
                      "model_type": self.family.model_type,
                      "architecture": self.family.tasks[model.task][1] if model.task in self.family.tasks else None,
                      "peft_type": type(getattr(model, "peft_config", None)).__name__
                      if getattr(model, "peft_config", None) is not None else None},
            "source": self.source,
            "versions": _versions("jax", "flax", "numpy", "safetensors"),
            "checks": self.checks, "problems": self.problems, "warnings": self.warnings,
        }
        return record

    def _write(self, record: dict, name: str) -> None:
        for stale in (RECORD, FAILED_RECORD):
            (self.directory / stale).unlink(missing_ok=True)
        tmp = self.directory / (name + ".tmp")
        tmp.write_text(json.dumps(record, indent=2, sort_keys=True, default=str) + "\n")
        tmp.replace(self.directory / name)

    def run(self) -> dict | None:
        if jax.process_count() > 1 and jax.process_index() != 0:
            return None  # every process writes the same files; process 0 checks them once
        if not self.enabled:
            record = self._record(None)
            record["skipped"] = "verification turned off (--no-verify / verify=False)"
            self._write(record, RECORD)
            return record
        rows, probe = self._probe_rows()
        self._run_step("tensors", self._check_tensors)
        self._run_step("outputs", lambda: self._check_reread(rows))
        if self.torch:
            self._run_step("outputs", lambda: self._check_torch(rows))
        record = self._record(not self.problems)
        record["probe"] = probe
        if self.torch:
            torch_check = next((c for c in self.checks if c.get("versions")), None)
            if torch_check:
                record["versions"].update(torch_check["versions"])
        if self.problems:
            self._write(record, FAILED_RECORD)
            raise ExportVerificationError(
                f"{self.directory}: the export does not match the model in memory:\n  - "
                + "\n  - ".join(self.problems)
                + f"\nThe directory is marked bad ({FAILED_RECORD}): do not ship it. Export again into an empty "
                "directory; if it fails again, report it with that file (verify=False / --no-verify skips the check)."
            )
        self._write(record, RECORD)
        log.info("%s: %s", self.directory, summary(self.directory))
        return record

    def _run_step(self, what: str, step) -> None:
        try:
            step()
        except ExportVerificationError:
            raise
        except Exception as err:  # a directory that cannot be read back is a failed export too
            self.problems.append(f"{what}: reading the export back failed: {type(err).__name__}: {err}")

    # probe ----------------------------------------------------------------------------------------

    def _probe_rows(self) -> tuple[list[dict], dict]:
        """Unpadded rows {input_ids, token_type_ids?}: from the tokenizer, else seeded random ids."""
        from jaxkernel.train.step import _model_inputs

        dims = self.family.dims(self.reference.config)
        limit = min(PROBE_MAX_LENGTH, dims.positions)
        wants_types = "token_type_ids" in _model_inputs(self.reference)
        tokenizer = self.tokenizer
        if tokenizer is None and any((self.directory / name).is_file() for name in io.TOKENIZER_FILES):
            try:
                import transformers

                tokenizer = transformers.AutoTokenizer.from_pretrained(str(self.directory))
            except Exception as err:  # noqa: BLE001 - a probe from random ids still checks the weights
                self.warnings.append(f"the tokenizer in {self.directory} did not load ({err}); probing random ids")
        rows = []
        if tokenizer is not None:
            for text in PROBE_TEXTS:
                enc = tokenizer(text, truncation=True, max_length=limit)
                row = {"input_ids": [int(i) for i in enc["input_ids"]]}
                if wants_types:
                    row["token_type_ids"] = [int(i) for i in enc.get("token_type_ids", [0] * len(row["input_ids"]))]
                rows.append(row)
            too_big = max(max(r["input_ids"]) for r in rows)
            if too_big >= dims.vocab:
                self.warnings.append(
                    f"the tokenizer gives id {too_big} but the model's vocabulary has {dims.vocab}: "
                    "tokenizer and model do not belong together; probing random ids")
                rows = []
            else:
                return rows, {"from": "tokenizer", "texts": list(PROBE_TEXTS), "lengths": [len(r["input_ids"]) for r in rows]}
        rng = np.random.RandomState(0)
        for n in RANDOM_LENGTHS:
            n = min(n, limit)
            row = {"input_ids": [int(i) for i in rng.randint(0, dims.vocab, n)]}
            if wants_types:
                row["token_type_ids"] = [0] * n
            rows.append(row)
        return rows, {"from": "random ids (seed 0)", "lengths": [len(r["input_ids"]) for r in rows]}

    def _batch(self, rows: list[dict]) -> tuple[dict, np.ndarray]:
        width = max(len(r["input_ids"]) for r in rows)
        pad = getattr(self.reference.config, "pad_token_id", None) or 0
        batch = {"input_ids": np.full((len(rows), width), pad, np.int32),
                 "attention_mask": np.zeros((len(rows), width), np.int32)}
        if "token_type_ids" in rows[0]:
            batch["token_type_ids"] = np.zeros((len(rows), width), np.int32)
        for i, row in enumerate(rows):
            n = len(row["input_ids"])
            batch["attention_mask"][i, :n] = 1
            for key in row:
                batch[key][i, :n] = row[key]
        return batch, batch["attention_mask"].astype(bool)

    def _tolerance(self, outputs: list[np.ndarray]) -> float:
        dtype = getattr(self.reference.config, "dtype", None)
        rtol = RTOL_FLOAT32 if dtype in (None, "float32") else RTOL_HALF
        return rtol * max(1.0, max(float(np.abs(o).max()) for o in outputs))

    def _compare(self, against: str, ours: list[np.ndarray], theirs: list[np.ndarray], mask=None, **extra) -> None:
        """Max |diff| over real (unpadded) positions; above tolerance is a problem."""
        check = {"check": "outputs", "against": against, **extra}
        if len(ours) != len(theirs) or any(a.shape != b.shape for a, b in zip(ours, theirs)):
            check["ok"] = False
            self.problems.append(f"{against} returns outputs shaped {[b.shape for b in theirs]}; the model in memory "
                                 f"{[a.shape for a in ours]}")
            self.checks.append(check)
            return
        diff = 0.0
        for a, b in zip(ours, theirs):
            d = np.abs(a - b)
            if mask is not None and d.shape[:2] == mask.shape:
                d = d[mask]
            diff = max(diff, float(d.max()) if d.size else 0.0)
        tol = self._tolerance(ours)
        check.update(max_abs_diff=diff, tolerance=tol, ok=bool(diff <= tol))
        self.checks.append(check)
        if not check["ok"]:
            self.problems.append(f"outputs differ from {against}: max |diff| {diff:.3g} > tolerance {tol:.3g}")

    # 1. tensors -------------------------------------------------------------------------------------

    def _check_tensors(self) -> None:
        if self.kind == "adapter":
            from jaxkernel.hf.peft_format import read_adapter

            _, reread, source = read_adapter(self.directory)
            expected = self.written
        else:
            reread, source = io.read_weights(self.directory)
            expected = export_tensors(self.exported, self.family.table)
        check = {"check": "tensors", "against": f"jaxkernel reader ({source})", "compared": len(expected)}
        missing = sorted(set(expected) - set(reread))
        extra = sorted(set(reread) - set(expected))
        bad = []
        for key in sorted(set(expected) & set(reread)):
            a, b = np.ascontiguousarray(expected[key]), np.ascontiguousarray(reread[key])
            if a.dtype != b.dtype or a.shape != b.shape or a.tobytes() != b.tobytes():
                bad.append(f"{key} ({b.dtype}{list(b.shape)} on disk, {a.dtype}{list(a.shape)} in memory"
                           + (f", max |diff| {float(np.abs(a.astype(np.float64) - b.astype(np.float64)).max()):.3g})"
                              if a.shape == b.shape else ")"))
        check["ok"] = not (missing or extra or bad)
        self.checks.append(check)
        for label, keys in (("missing on disk", missing), ("unexpected on disk", extra), ("differ on disk", bad)):
            if keys:
                self.problems.append(f"tensors {label} in {source}: {', '.join(keys[:5])}"
                                     + (f" (and {len(keys) - 5} more)" if len(keys) > 5 else ""))

    # 2. re-read through jaxkernel -------------------------------------------------------------------

    def _reread(self) -> nnx.Module | None:
        if self.kind != "adapter":  # exactly what a jaxkernel user runs on the directory
            from jaxkernel.hf.pretrained import config_from_pretrained, from_pretrained

            _, _, task, _ = config_from_pretrained(self.directory)
            if task != self.exported.task:
                self.problems.append(f"{io.CONFIG_NAME} architectures give task {task!r}, the model is {self.exported.task!r}")
                return None
            dtype = getattr(self.exported.config, "dtype", None)
            return from_pretrained(self.directory, dtype=None if dtype in (None, "float32") else dtype)
        # An adapter is re-read the way a user does: load_adapter on the base, here the in-memory one.
        from jaxkernel.hf.peft_format import load_adapter
        from jaxkernel.peft.trainable import SavedModuleParam, TrainableParam

        base = self.family.build(self.reference.task, self.reference.config)
        fresh = param_paths(base)
        for path, var in param_paths(self.reference).items():
            if isinstance(var, TrainableParam) and not isinstance(var, SavedModuleParam):
                continue  # the adapter itself comes from the file
            target = fresh.pop(path.replace(".base_layer", ""), None)
            if target is not None and tuple(target.shape) == tuple(var.shape):
                target[...] = np.asarray(var[...])
        if fresh:  # e.g. an int8 base: a float base model cannot hold it
            self.checks.append({"check": "outputs", "against": "jaxkernel load_adapter",
                                "skipped": f"the in-memory base has weights a float base cannot hold ({next(iter(fresh))})"})
            return None
        return load_adapter(base, self.directory)

    def _check_reread(self, rows: list[dict]) -> None:
        model = self._reread()
        if model is None:
            return
        batch, mask = self._batch(rows)
        against = "jaxkernel load_adapter" if self.kind == "adapter" else "jaxkernel from_pretrained"
        self._compare(against, _outputs(self.reference, batch), _outputs(model, batch), mask)

    # 3. PyTorch, in a subprocess -------------------------------------------------------------------------

    def _check_torch(self, rows: list[dict]) -> None:
        needs = ("torch", "transformers") + (("peft",) if self.kind == "adapter" else ())
        absent = [name for name in needs if importlib.util.find_spec(name) is None]
        architecture = self.family.tasks[self.reference.task][1]
        against = (f"peft PeftModel({architecture})" if self.kind == "adapter" else f"transformers {architecture}")
        if absent:
            self.checks.append({"check": "outputs", "against": against, "skipped": f"{', '.join(absent)} not installed"})
            return
        with tempfile.TemporaryDirectory(prefix="jaxkernel-probe-") as tmp:
            spec = {"directory": str(self.directory.resolve()), "kind": self.kind, "architecture": architecture,
                    "rows": rows, "out": str(Path(tmp) / "outputs.npz")}
            if self.kind == "adapter":
                from jaxkernel.hf.peft_format import ADAPTER_CONFIG
                from jaxkernel.hf.pretrained import hf_config_for

                base = json.loads((self.directory / ADAPTER_CONFIG).read_text()).get("base_model_name_or_path")
                if not base:
                    self.checks.append({"check": "outputs", "against": against,
                                        "skipped": "adapter_config.json names no base_model_name_or_path"})
                    return
                if _has_int8(self.reference):
                    self.checks.append({"check": "outputs", "against": against,
                                        "skipped": "the base is int8 in jaxkernel, float in PyTorch"})
                    return
                io.write_config(hf_config_for(self.reference), Path(tmp) / "base_config")
                spec.update(base=base, base_config=str(Path(tmp) / "base_config"))
            (Path(tmp) / "spec.json").write_text(json.dumps(spec))
            script = Path(__file__).with_name("torch_probe.py")
            env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
            done = subprocess.run([sys.executable, str(script), str(Path(tmp) / "spec.json")], capture_output=True,
                                  text=True, timeout=TORCH_TIMEOUT_S, env=env)
            if done.returncode != 0:
                tail = "\n    ".join(done.stderr.strip().splitlines()[-6:])
                self.checks.append({"check": "outputs", "against": against, "ok": False})
                self.problems.append(f"{against} could not run the export (exit {done.returncode}):\n    {tail}")
                return
            info = json.loads(Path(spec["out"] + ".json").read_text())
            with np.load(spec["out"]) as npz:
                theirs = {k: npz[k] for k in npz.files}
        ours, torch_out = [], []
        for i, row in enumerate(rows):
            single = {k: np.asarray([v], np.int32) for k, v in row.items()}
            single["attention_mask"] = np.ones_like(single["input_ids"])
            mine = _outputs(self.reference, single)
            ours += [o[0] for o in mine]
            torch_out += [theirs.get(f"r{i}_o{j}", np.zeros(0)) for j in range(len(mine))]
        self._compare(info["ran"], ours, torch_out, pid=info["pid"], versions=info["versions"])


def _has_int8(model: nnx.Module) -> bool:
    from jaxkernel.quant.transform import quantized_paths

    return bool(quantized_paths(model))
