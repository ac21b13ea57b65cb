"""The ``jaxkernel`` command line: one subcommand per verb.

Each verb is a function ``add_<verb>(subparsers)`` that registers its parser and
sets ``func``; new verbs are added to ``VERBS`` below.

Example::

    jaxkernel convert path/to/hf_model out/      # HF -> jaxkernel -> HF round trip
"""

from __future__ import annotations

import argparse
import sys

import jaxkernel


def _run_convert(args: argparse.Namespace) -> int:
    from jaxkernel.hf.pretrained import from_pretrained, save_pretrained
    from jaxkernel.hf.verify import export_verification, summary
    from jaxkernel.train.cli import check_out_dir

    check_out_dir(args.out, {"source model directory": args.src})
    model = from_pretrained(args.src, task=args.task)
    with export_verification(enabled=not args.no_verify, torch=not args.no_verify, source={"model": str(args.src)}):
        out = save_pretrained(model, args.out, tokenizer_from=args.src, max_shard_size=args.max_shard_size)
    print(f"wrote {type(model).__name__} ({model.task}) to {out}")
    print(summary(out))
    return 0


def add_convert(subparsers) -> None:
    p = subparsers.add_parser(
        "convert", help="read a Hugging Face model directory (or hub id) and write it back through jaxkernel",
        description="HF dir -> jaxkernel -> HF dir. Use it to check that jaxkernel reads a checkpoint exactly.",
    )
    p.add_argument("src", help="HF model directory or hub id")
    p.add_argument("out", help="output directory")
    p.add_argument("--task", default=None, help="model head (default: from config.json architectures)")
    p.add_argument("--max-shard-size", default="5GB", help="split weights into shards past this size")
    add_no_verify(p)
    p.set_defaults(func=_run_convert)


from jaxkernel.quant.cli import add_quantize  # noqa: E402
from jaxkernel.compress.cli import add_prune  # noqa: E402

from jaxkernel.train.cli import add_no_verify, add_train_verbs  # noqa: E402
from jaxkernel.sharding.plan import add_plan  # noqa: E402

VERBS = [add_train_verbs, add_convert, add_quantize, add_plan, add_prune]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="jaxkernel", description=jaxkernel.__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"jaxkernel {jaxkernel.__version__}")
    subparsers = parser.add_subparsers(dest="verb", metavar="VERB")
    for add_verb in VERBS:
        add_verb(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return args.func(args) or 0
    except (FileNotFoundError, ValueError, TypeError) as err:
        print(f"jaxkernel {args.verb}: error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
