"""What the benchmarks' command lines share: `--quick`, a smoke run whose settings replace the defaults."""

import argparse


def parse_args(parser: argparse.ArgumentParser, argv, quick: dict) -> argparse.Namespace:
    """`parser`'s arguments plus `--quick`; with it, every key of `quick` overrides what was parsed."""
    parser.add_argument("--quick", action="store_true", help=f"a smoke run: {quick}")
    args = parser.parse_args(argv)
    if args.quick:
        for key, value in quick.items():
            setattr(args, key, value)
    return args
