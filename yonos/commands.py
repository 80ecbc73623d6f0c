"""The one mechanism of yonos' own commands (chain, demo, export, upscale, evaluate, shard, make-base,
prepare-samples): jsonargparse parsers, as LightningCLI uses for fit / validate / test / predict.

Each command declares its options once on :func:`command_parser`; every command then takes ``--config FILE`` (a
yaml or json file of its options, the keys being the option names with ``_`` for ``-``), prints the options it
would run with under ``--print_config`` (save that, edit it, pass it back with ``--config``), and says in ``--help``
what each option means and what its default is. Options after ``--config`` override the file.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from jsonargparse import ActionConfigFile, ArgumentParser, DefaultHelpFormatter


class OptionError(argparse.ArgumentTypeError, ValueError):
    """A bad option value, raised by an option's ``type`` function: its message reaches the user whether the value
    came from the command line (argparse shows an ArgumentTypeError's message) or from a ``--config`` file
    (jsonargparse's check of file values reports ValueErrors)."""


class _HelpFormatter(DefaultHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """jsonargparse's help (types and defaults of every option) with the description's examples kept as written."""


def command_parser(prog: str, description: str | None, epilog: str | None = None) -> ArgumentParser:
    """The parser of one ``yonos`` command, with ``--config`` and ``--print_config`` in place."""
    parser = ArgumentParser(prog=prog, description=description, epilog=epilog, formatter_class=_HelpFormatter)
    parser.add_argument(
        "--config",
        action=ActionConfigFile,
        help="a yaml or json file of this command's options (as --print_config writes them); later options override it",
    )
    return parser


def parse(parser: ArgumentParser, argv: Sequence[str]) -> argparse.Namespace:
    """``argv`` parsed into a plain namespace of the command's options (the ``--config`` files they came from
    dropped); exits with the parser's message (status 2) on a bad option."""
    values = parser.parse_args(list(argv)).as_dict()
    values.pop("config", None)
    return argparse.Namespace(**values)
