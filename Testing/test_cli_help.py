"""Every command-line entry point prints its help and exits 0 (argparse formats help strings lazily, so a stray
'%' in one only fails when a user asks for --help)."""

from __future__ import annotations

import pytest

from sdseg import cli
from SDSegSlicerLib import headless


@pytest.mark.parametrize("subcommand", sorted(cli.SUBCOMMANDS))
def test_sdseg_subcommand_help(subcommand, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main([subcommand, "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: sdseg " + subcommand) or f"sdseg {subcommand}" in out.splitlines()[0]
    assert "--help" in out


def test_sdseg_help_lists_subcommands(capsys):
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in cli.SUBCOMMANDS)


@pytest.mark.parametrize("argv", [["--help"], *([command, "--help"]
                                                 for command in ("segment", "models", "batch", "serve", "web"))])
def test_sdseg_slicer_help(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        headless.main(argv)
    assert exit_info.value.code == 0
    assert "usage:" in capsys.readouterr().out
