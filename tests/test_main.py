"""``python -m trl_ipo`` (trl_ipo/__main__.py): the module entry point exits with the dispatcher's status and output."""

import runpy

import pytest

from trl_ipo.cli import SUBCOMMANDS


def run_module(monkeypatch, *args):
    """Run ``python -m trl_ipo ARGS`` in this process: the exit status it raises."""
    monkeypatch.setattr("sys.argv", ["trl_ipo", *args])
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_module("trl_ipo", run_name="__main__")
    return exit_info.value.code


def test_unknown_command_exits_2_with_one_line(monkeypatch, capsys):
    assert run_module(monkeypatch, "trian") == 2
    out, err = capsys.readouterr()
    commands = ", ".join(SUBCOMMANDS)
    assert out == ""
    assert err == f"trl-ipo: error: unknown command 'trian' (did you mean train?); the commands are {commands}\n"


def test_help_exits_0_and_lists_every_command(monkeypatch, capsys):
    assert run_module(monkeypatch, "--help") == 0
    out, err = capsys.readouterr()
    assert err == ""
    lines = out.splitlines()
    assert lines[0] == "usage: trl-ipo <command> [options]"
    for name, (_, summary) in SUBCOMMANDS.items():
        assert f"  {name:<10} {summary}" in lines
    assert "  --beta" in out  # the IPO flags follow the commands
