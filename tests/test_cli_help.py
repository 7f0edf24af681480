"""Every command's --help renders: argparse formats help strings with %, so a stray one breaks it."""

import argparse

from prodray.cli import build_parser


def _parsers(parser: argparse.ArgumentParser, path=("prodray",)):
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                yield from _parsers(child, path + (name,))


def test_every_command_formats_its_help():
    seen = []
    for path, parser in _parsers(build_parser()):
        assert parser.format_help().startswith("usage:"), path
        seen.append(" ".join(path))
    assert "prodray eval preference" in seen and "prodray enhance" in seen
