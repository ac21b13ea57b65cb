"""``jaxkernel quantize SRC OUT``: HF model directory -> jaxkernel int8 directory.

Registered in ``jaxkernel.cli.VERBS``. Prints the parameter memory before and
after. ``--hf-out DIR`` also writes the dequantized float model as a plain HF
directory (what a PyTorch user loads: float32 weights equal to ``q * scale``).

Example::

    jaxkernel quantize path/to/minilm out/int8 --mode w8a8 --skip "output.dense"
"""

from __future__ import annotations

import argparse

from jaxkernel.train.cli import add_no_verify, check_out_dir


def _names(text: str | None):
    """``"query,value"`` -> ["query", "value"]; ``re:PATTERN`` -> the regex string."""
    if text is None:
        return None
    if text.startswith("re:"):
        return text[3:]
    return [t.strip() for t in text.split(",") if t.strip()]


def _run_quantize(args: argparse.Namespace) -> int:
    from jaxkernel.hf.pretrained import from_pretrained, save_pretrained
    from jaxkernel.quant.io import save_quantized
    from jaxkernel.quant.memory import format_bytes, param_bytes
    from jaxkernel.quant.transform import dequantize_model, quantize_model, quantized_paths

    check_out_dir(args.out, {"source model directory": args.src})
    if args.hf_out:
        check_out_dir(args.hf_out, {"source model directory": args.src, "int8 output directory": args.out})
    model = from_pretrained(args.src, task=args.task)
    before = param_bytes(model)
    quantize_model(
        model, _names(args.targets), skip=_names(args.skip), mode=args.mode,
        group_size=args.group_size, include_heads=args.include_heads,
    )
    after = param_bytes(model)
    paths = quantized_paths(model)
    out = save_quantized(model, args.out, tokenizer_from=args.src)
    print(after.table(depth=args.depth))
    print(
        f"quantized {len(paths)} modules ({args.mode}): their parameters {format_bytes(before.bytes_under(paths))}"
        f" -> {format_bytes(after.bytes_under(paths))}; model {format_bytes(before.total)} -> "
        f"{format_bytes(after.total)} ({after.total / before.total:.3f}x)"
    )
    print(f"wrote {type(model).__name__} ({model.task}) int8 to {out}")
    if args.hf_out:
        from jaxkernel.hf.verify import export_verification, summary

        source = {"model": str(args.src), "quantized": args.mode, "int8_dir": str(out)}
        with export_verification(enabled=not args.no_verify, torch=not args.no_verify, source=source):
            hf = save_pretrained(dequantize_model(model), args.hf_out, tokenizer_from=args.src)
        print(f"wrote dequantized float32 HF model to {hf}")
        print(summary(hf))
    return 0


def add_quantize(subparsers) -> None:
    p = subparsers.add_parser(
        "quantize", help="quantize a Hugging Face BERT/GPT-2 to int8 and save it",
        description="HF dir -> int8 jaxkernel dir (int8_model.safetensors + config.json). "
        "Default: weight-only int8 for every linear in the transformer blocks.",
    )
    p.add_argument("src", help="HF model directory or hub id")
    p.add_argument("out", help="output directory for the int8 model")
    p.add_argument("--task", default=None, help="model head (default: from config.json architectures)")
    p.add_argument("--mode", choices=["weight_only", "w8a8"], default="weight_only", help="compute path")
    p.add_argument("--targets", default=None,
                   help="comma-separated module names (query,value,dense) or re:REGEX on full paths")
    p.add_argument("--skip", default=None, help="modules to keep float, same forms as --targets")
    p.add_argument("--group-size", type=int, default=None, help="one scale per this many input features")
    p.add_argument("--include-heads", action="store_true", help="also quantize task-head linears")
    p.add_argument("--hf-out", default=None, help="also write the dequantized float model as an HF directory")
    add_no_verify(p)
    p.add_argument("--depth", type=int, default=2, help="module depth of the printed memory table")
    p.set_defaults(func=_run_quantize)
