"""The command line's parser: every subcommand is there, whatever is installed."""

from __future__ import annotations

import sys

import pytest

import radlint
from radlint import cli


@pytest.mark.parametrize("command, module, argv", [
    ("import-checkpoint", "checkpoint", ["x.pt", "--kind", "bodypart"]),
    ("evaluate", "evaluate", ["--labels", "labels.csv"]),
])
def test_a_subcommand_whose_module_cannot_be_imported_says_why(monkeypatch, capsys, command, module, argv):
    # None in sys.modules makes the import raise ImportError, as a missing optional package would
    monkeypatch.setitem(sys.modules, f"radlint.{module}", None)
    monkeypatch.delattr(radlint, module, raising=False)
    assert cli.main([command, *argv]) == cli.EXIT_CANNOT_RUN
    err = capsys.readouterr().err
    assert f"radlint: {command} cannot run:" in err and "radlint[train]" in err


def test_subcommands_with_their_modules_take_their_own_arguments():
    from radlint import checkpoint, evaluate

    args = cli.build_parser().parse_args(["import-checkpoint", "x.pt", "--kind", "bodypart"])
    assert args.func is checkpoint.run
    assert cli.build_parser().parse_args(["evaluate", "--labels", "l.csv"]).func is evaluate.run
