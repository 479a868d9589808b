"""The `dvae-q` command line. Errors are mapped to exit codes here and only here:
bad input (config, flag, data file, topology, token) -> one stderr line, exit 2;
a runtime failure -> message (and the last good checkpoint), exit 1; bugs keep their traceback."""

from __future__ import annotations

import argparse
import sys

from dvae_q.errors import BadInput, DvaeqError


class _Parser(argparse.ArgumentParser):
    """argparse that raises BadInput instead of printing usage and exiting."""

    def error(self, message):
        raise BadInput(f"{self.prog}: {message}")


def _input_error_types() -> tuple[type[BaseException], ...]:
    """Input errors of the sibling packages, which do not depend on dvae_q."""
    types: list[type[BaseException]] = [BadInput]
    try:
        from samplers import SamplerOptionError

        types.append(SamplerOptionError)
    except ImportError:
        pass
    try:
        from topologies import TopologyError

        types.append(TopologyError)
    except ImportError:
        pass
    return tuple(types)


def _cmd_data_fetch(args) -> int:
    from dvae_q.data_fetch import fetch

    result = fetch(args.name, data_dir=args.data_dir, base_url=args.url)
    print(f"stored {result.path}")
    for file_name, digest in result.downloaded.items():
        print(f"  {file_name}: sha256 {digest}")
    return 0


def _cmd_data_info(args) -> int:
    from dvae_q import data

    names = [args.name] if args.name else list(data.DATASETS)
    for name in names:
        variant = data.dataset_variant(name, args.data_dir)
        sizes = []
        for split in data.SPLITS:
            images = data.load_dataset(name, split, args.data_dir)
            scale = 1.0 if data.is_binary(name) else 255.0
            sizes.append(f"{split} {images.shape[0]} (mean {images.mean() / scale:.4f})")
        print(f"{name} [{variant}]: " + ", ".join(sizes) + "; content hashes verified")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="dvae-q", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    data_cmd = commands.add_parser("data", help="inspect or download the datasets")
    data_sub = data_cmd.add_subparsers(dest="data_command", required=True, parser_class=_Parser)
    fetch = data_sub.add_parser("fetch", help="download canonical files, convert and verify")
    fetch.add_argument("name", choices=["binarized_mnist", "omniglot"])
    fetch.add_argument("--data-dir", help="where to store (default: $DVAEQ_DATA_DIR or cache)")
    fetch.add_argument("--url", help="base URL of a mirror instead of the canonical location")
    fetch.set_defaults(func=_cmd_data_fetch)
    info = data_sub.add_parser("info", help="load, verify and summarise the datasets")
    info.add_argument("name", nargs="?", choices=["binarized_mnist", "omniglot"])
    info.add_argument("--data-dir", help="folder holding the files (default: $DVAEQ_DATA_DIR)")
    info.set_defaults(func=_cmd_data_info)

    demo = commands.add_parser("demo", help="the main job of `make demo`")
    demo.add_argument("--data-dir", default=None)
    demo.add_argument("name", nargs="?", default=None, help=argparse.SUPPRESS)
    demo.set_defaults(func=_cmd_data_info)
    return parser


def main(argv: list[str] | None = None) -> int:
    input_errors = _input_error_types()
    try:
        args = build_parser().parse_args(argv)
        return args.func(args)
    except input_errors as exc:
        print(f"dvae-q: error: {exc}", file=sys.stderr)
        return 2
    except DvaeqError as exc:
        print(f"dvae-q: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("dvae-q: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
