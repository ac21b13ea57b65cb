"""CLI verbs of the main job: ``train``, ``eval``, ``predict``, ``generate``, ``export``.

Each verb reads a YAML config (or a run directory's resolved ``config.yaml``) plus
``section.key=value`` overrides. A run directory given on the command line *is* the run,
wherever it was first trained (``cp -a`` / ``mv`` of a run directory work): the
``train.run_dir`` recorded inside its ``config.yaml`` is replaced by it. ``eval``,
``predict`` and ``export`` refuse a run without a checkpoint rather than use an untrained model.

Example::

    jaxkernel train configs/bert_ner_lora.yaml train.steps=200
    jaxkernel eval runs/bert_ner_lora --split test
    jaxkernel predict runs/bert_ner_lora --input in.jsonl --output out.jsonl
    jaxkernel export runs/bert_ner_lora out/ --adapter
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from pathlib import Path

from jaxkernel.config import RESOLVED_NAME, ConfigError


def _load(config_or_run: str, overrides: list[str]):
    from jaxkernel.config import load_config

    path = Path(config_or_run)
    if not path.exists():
        raise FileNotFoundError(
            f"{path} does not exist: give a YAML config (e.g. one from configs/) or a run directory")
    if path.is_dir():
        if not (path / RESOLVED_NAME).is_file():
            raise FileNotFoundError(
                f"{path} is not a run directory: it has no {RESOLVED_NAME}. Give the run directory that holds "
                f"{RESOLVED_NAME}, or the YAML config the run was trained with")
        given = [o for o in overrides if o.split("=", 1)[0].strip() == "train.run_dir"]
        if given:
            raise ConfigError(
                f"{given[-1]!r}: the run directory is the one given, {str(path)!r}; drop the override, "
                "or pass a YAML config instead of a run directory to train into another one"
            )
        config = load_config(path / RESOLVED_NAME, overrides)
        # The directory given is the run, not the train.run_dir recorded in it: after `cp -a A B`
        # or `mv A B` that one is A's (or gone), and following it would resume or change another run.
        return dataclasses.replace(config, train=dataclasses.replace(config.train, run_dir=str(path)))
    return load_config(path, overrides)


def _is_run_dir(config_or_run: str) -> bool:
    return Path(config_or_run).is_dir()


def _trainer(args, roles, *, require_checkpoint: bool = False):
    from jaxkernel.train.loop import Trainer

    return Trainer(_load(args.config, args.overrides), roles=roles, require_checkpoint=require_checkpoint)


def _print_metrics(name: str, metrics: dict) -> None:
    shown = ", ".join(f"{k}={v:.4f}" for k, v in metrics.items() if isinstance(v, float))
    print(f"{name}: {shown}")


DISTRIBUTED_ENV = "JAXKERNEL_DISTRIBUTED"  # "1": jax.distributed.initialize() finds the other hosts itself


def _initialize_distributed() -> bool:
    """Join a multi-process run before JAX starts, when the environment asks for one.

    ``JAX_COORDINATOR_ADDRESS`` / ``JAX_NUM_PROCESSES`` / ``JAX_PROCESS_ID`` (CPU or GPU
    clusters, the two-process tests) go through ``jaxkernel.sharding.initialize_distributed``;
    ``JAXKERNEL_DISTRIBUTED=1`` without a coordinator lets ``jax.distributed.initialize()``
    auto-detect the cluster (TPU pod slices: ``tpu_scripts/launch.sh`` sets it). Neither: one
    process, nothing to do.
    """
    from jaxkernel.sharding.mesh import initialize_distributed

    if os.environ.get(DISTRIBUTED_ENV) == "1" and not os.environ.get("JAX_COORDINATOR_ADDRESS"):
        import jax

        jax.distributed.initialize()
        return True
    return initialize_distributed()


def _run_train(args) -> int:
    _initialize_distributed()
    trainer = _trainer(args, ("train", "eval", "test"))
    results = trainer.fit()
    if not trainer.is_main:  # in a multi-process run only process 0 reports
        return 0
    for split, metrics in results.items():
        _print_metrics(split, metrics)
    if "test" in results and "f1" in results["test"]:
        print(f"test entity F1: {results['test']['f1']:.4f}" if trainer.data.task == "token-classification"
              else f"test F1: {results['test']['f1']:.4f}")
    print(f"run directory: {trainer.run_dir}")
    return 0


def _run_eval(args) -> int:
    role = {"validation": "eval", "dev": "eval"}.get(args.split, args.split)
    trainer = _trainer(args, ("train", role), require_checkpoint=True)
    _print_metrics(args.split, trainer.evaluate(role))
    return 0


def _read_rows(name: str) -> list[dict]:
    """The ``--input`` JSONL rows (``-`` = stdin); a bad line is named by file:line."""
    from jaxkernel.data.readers import DataError, read_jsonl

    if name != "-":
        if not Path(name).is_file():
            raise FileNotFoundError(f"--input {name} does not exist: give a JSONL file, one JSON object per line "
                                    '(e.g. {"text": "..."}), or - for stdin')
        return [{k: v for k, v in row.items() if k != "source"} for row in read_jsonl(name)]
    rows = []
    for number, line in enumerate(sys.stdin, start=1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise DataError(f"<stdin>:{number}: invalid JSON ({err.msg} at column {err.colno}); "
                                "give one JSON object per line") from None
    return rows


def check_out_dir(out: str, protected: dict[str, str]) -> None:
    """Refuse an output directory that is one of the inputs (it would be overwritten while read)."""
    for what, path in protected.items():
        if path and Path(out).resolve() == Path(path).resolve():
            raise ValueError(f"{out} is the {what}: writing there would overwrite what is being read; "
                             "choose another output directory")


def _run_predict(args) -> int:
    from jaxkernel.train.predict import predict_rows

    rows = _read_rows(args.input)  # before the model loads: a bad input file fails in a second
    trainer = _trainer(args, ("train",), require_checkpoint=True)
    out = open(args.output, "w") if args.output != "-" else sys.stdout
    for result in predict_rows(trainer, rows):
        out.write(json.dumps(result) + "\n")
    if out is not sys.stdout:
        out.close()
    return 0


def _run_generate(args) -> int:
    from jaxkernel.models.generation import generate

    # A YAML config may generate with the pretrained model; a run directory means its trained one.
    trainer = _trainer(args, ("train",), require_checkpoint=_is_run_dir(args.config))
    model = trainer.model_for_inference()
    tokenizer = trainer.data.tokenizer
    eos = tokenizer.eos_token_id
    if args.chat:
        if not getattr(tokenizer, "chat_template", None):
            raise ValueError(f"the tokenizer of {trainer.config.model.path} has no chat template: drop --chat")
        # A chat turn may end on the model's own EOS ids too (generation_config lists several).
        config_eos = getattr(model.config, "eos_token_id", None)
        extra = [config_eos] if isinstance(config_eos, int) else list(config_eos or ())
        eos = list(dict.fromkeys(([eos] if eos is not None else []) + extra)) or None
    for prompt in args.prompt:
        if args.chat:  # the question as one user turn, then the assistant's turn opened
            text = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                                 add_generation_prompt=True)
            ids = tokenizer(text, return_tensors="np", add_special_tokens=False)["input_ids"]
        else:
            ids = tokenizer(prompt, return_tensors="np")["input_ids"]
        out = generate(model, ids, max_new_tokens=args.max_new_tokens, do_sample=args.temperature > 0,
                       temperature=args.temperature or 1.0, top_k=args.top_k, top_p=args.top_p, seed=args.seed,
                       eos_token_id=eos)
        shown = out[0, ids.shape[1]:] if args.chat else out[0]  # chat: the answer only
        print(tokenizer.decode(shown.tolist(), skip_special_tokens=True))
    return 0


def _run_export(args) -> int:
    from jaxkernel.config import resolve_path
    from jaxkernel.hf.verify import export_verification, summary

    check_out_dir(args.out, {"run directory": args.config if _is_run_dir(args.config) else None})
    trainer = _trainer(args, ("train",), require_checkpoint=True)
    check_out_dir(args.out, {"run directory": str(trainer.run_dir)})
    source = {"run_dir": str(trainer.run_dir), "step": int(trainer.state.step),
              "base_model": str(resolve_path(trainer.config.model.path))}
    # The trainer's export goes through save_merged / save_adapter / save_pretrained: the CLI
    # turns on the PyTorch probe, probes with the run's tokenizer and records where it came from.
    with export_verification(enabled=not args.no_verify, torch=not args.no_verify,
                             tokenizer=trainer.data.tokenizer, source=source):
        out = trainer.export(args.out, merged=not args.adapter)
    kind = "PEFT adapter" if args.adapter else "transformers model"
    print(f"wrote {kind} to {out}")
    print(summary(out))
    return 0


def _common(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("config", help=f"YAML config, or a run directory ({what})")
    p.add_argument("overrides", nargs="*", default=[], help="section.key=value overrides, e.g. train.steps=100")


def add_train_verbs(subparsers) -> None:
    p = subparsers.add_parser("train", help="fine-tune from a YAML config (resumes from its run directory)")
    _common(p, "resumes it")
    p.set_defaults(func=_run_train)

    p = subparsers.add_parser("eval", help="evaluate a run's latest checkpoint on a split")
    _common(p, "its latest checkpoint")
    p.add_argument("--split", default="eval", choices=["eval", "validation", "dev", "test"])
    p.set_defaults(func=_run_eval)

    p = subparsers.add_parser("predict", help="predict JSONL rows with a run's latest checkpoint")
    _common(p, "its latest checkpoint")
    p.add_argument("--input", required=True, help="JSONL file ('-' = stdin): text / tokens / question+context")
    p.add_argument("--output", default="-", help="JSONL output ('-' = stdout)")
    p.set_defaults(func=_run_predict)

    p = subparsers.add_parser("generate", help="generate text with a causal-LM run (or config)")
    _common(p, "its latest checkpoint")
    p.add_argument("--prompt", action="append", required=True, help="prompt text (repeatable)")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--top-p", type=float, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--chat", action="store_true", help="wrap each prompt in the tokenizer's chat template")
    p.set_defaults(func=_run_generate)

    p = subparsers.add_parser("export", help="export a run to a transformers directory or a PEFT adapter")
    p.add_argument("config", help="run directory (or its YAML config)")
    p.add_argument("out", help="output directory")
    p.add_argument("overrides", nargs="*", default=[], help="section.key=value overrides")
    p.add_argument("--adapter", action="store_true", help="write a PEFT adapter instead of a merged model")
    add_no_verify(p)
    p.set_defaults(func=_run_export)


def add_no_verify(p: argparse.ArgumentParser) -> None:
    p.add_argument("--no-verify", action="store_true",
                   help="skip re-reading the export and comparing it with the model (in jaxkernel and, "
                   "when installed, in transformers/peft in a subprocess)")
