"""`brain-tumor`: the tools a user runs by hand, beside the DVC stages (which run `python stages/<name>.py`)."""

from __future__ import annotations

import argparse
import sys

from .common import PipelineError


def weights_command(args: argparse.Namespace) -> None:
    """Find the ImageNet weights offline, verify their sha256 and print where they are."""
    from .models import resolve_weights

    print(resolve_weights())


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="brain-tumor", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    weights = commands.add_parser("weights", help="locate and verify the MobileNetV2 ImageNet weights")
    weights.set_defaults(handler=weights_command)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.handler(args)
    except PipelineError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0
