"""The `lwm` console script: every subcommand's --help works; errors are one line, exit 2."""

from __future__ import annotations

import subprocess
import sys

import pytest

from lwm.cli.main import build_parser, main


def _subcommands():
    parser = build_parser()
    action = next(a for a in parser._actions if a.dest == "command")
    return sorted(action.choices)


def test_console_script_help():
    out = subprocess.run(
        [sys.executable, "-m", "lwm.cli.main", "--help"], capture_output=True, text=True, check=True
    )
    for name in ("convert", "info", "demo"):
        assert name in out.stdout


@pytest.mark.parametrize("name", _subcommands())
def test_subcommand_help(name, capsys):
    with pytest.raises(SystemExit) as e:
        main([name, "--help"])
    assert e.value.code == 0
    assert "usage: lwm " + name in capsys.readouterr().out


def test_info_prints_param_count(capsys):
    assert main(["info", "--config", "debug", "--config.model.num_layers=3"]) == 0
    out = capsys.readouterr().out
    assert "parameters" in out and "layers=3" in out


def test_bad_config_is_one_line_error(capsys):
    assert main(["info", "--config", "debug", "--config.model.nope=1"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no such field" in err
