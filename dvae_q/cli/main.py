"""The `dvae-q` entry point: parse (`parsers`), run the command (`commands`), map errors to
exit codes.

Errors are mapped to exit codes here and only here: bad input (config, flag, data file,
topology, checkpoint, token) is one stderr line and exit 2; a runtime failure is one line (with
the last good checkpoint) and exit 1; Ctrl-C is one line and exit 130; bugs keep their
traceback. Heavy modules are imported inside the commands, after the error mapping is in place.
"""

from __future__ import annotations

import sys

from dvae_q.cli import parsers
from dvae_q.errors import DvaeqError


def _input_error_types() -> tuple[type[BaseException], ...]:
    """Input errors of the sibling packages, which do not depend on dvae_q (both ValueErrors)."""
    from samplers import SamplerOptionError
    from topologies import TopologyError

    return SamplerOptionError, TopologyError


def _say(message: object) -> None:
    text = " ".join(str(message).split())  # one line, whatever the message held
    print(f"dvae-q: error: {text}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    try:
        args = parsers.build_parser().parse_args(argv)
        return args.func(args)
    except KeyboardInterrupt:
        print("dvae-q: interrupted", file=sys.stderr)
        return 130
    except DvaeqError as exc:  # BadInput (2) and RunFailure (1)
        _say(exc)
        return exc.exit_code
    except ValueError as exc:
        if isinstance(exc, _input_error_types()):
            _say(exc)
            return 2
        raise


if __name__ == "__main__":
    sys.exit(main())
