"""The ``cnnkit`` command. Every sub-command is a thin call into the library."""

from __future__ import annotations

import argparse
import sys

from .errors import CnnkitError
from .models import MODELS


def parse_volume(text: str) -> tuple[int, int, int]:
    """``"224x224x3"`` -> ``(224, 224, 3)``."""
    try:
        parts = tuple(int(v) for v in text.lower().split("x"))
    except ValueError:
        parts = ()
    if len(parts) != 3 or min(parts) < 1:
        raise argparse.ArgumentTypeError(f"--input must look like 224x224x3 (H x W x C); received {text!r}")
    return parts  # type: ignore[return-value]


def _summary(args: argparse.Namespace) -> int:
    options = {}
    if args.input is not None:
        options["input_shape"] = args.input
    if args.num_classes is not None:
        options["num_classes"] = args.num_classes
    if args.batch_norm:
        if not args.model.startswith("vgg"):
            raise CnnkitError(f"--batch-norm applies to the VGG models only; received model {args.model!r}")
        options["batch_norm"] = True
    model = MODELS[args.model](**options)
    if args.json:
        print(model.summary(batch_size=args.batch_size, format="json"))
    elif args.markdown:
        print(model.summary(batch_size=args.batch_size, format="markdown"))
    else:
        model.summary(batch_size=args.batch_size)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cnnkit", description="Convolutional neural networks on NumPy.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    summary = commands.add_parser("summary", help="per-layer shapes, parameters, memory, mult-adds, receptive field")
    summary.add_argument("model", choices=sorted(MODELS), help="architecture name")
    summary.add_argument("--batch-size", type=int, default=1, help="batch size for the memory totals")
    summary.add_argument("--input", type=parse_volume, default=None, help="input volume HxWxC, e.g. 224x224x3")
    summary.add_argument("--num-classes", type=int, default=None, help="output classes")
    summary.add_argument("--batch-norm", action="store_true", help="the VGG variant with batch normalisation")
    output = summary.add_mutually_exclusive_group()
    output.add_argument("--json", action="store_true", help="print JSON")
    output.add_argument("--markdown", action="store_true", help="print a Markdown table")
    summary.set_defaults(run=_summary)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``cnnkit`` console script."""
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except CnnkitError as error:
        print(f"cnnkit {args.command}: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
