"""The command line: help lists the subcommands, each runs, bad input gives a clear error."""

from __future__ import annotations

import subprocess
import sys

import pytest

from flowprox.cli.main import main


def test_help_lists_the_subcommands() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "flowprox", "--help"], capture_output=True, text=True, check=True
    )
    for command in ("info", "glow-summary", "check-operator"):
        assert command in result.stdout


@pytest.mark.parametrize(
    "argv",
    [
        ["check-operator", "--operator", "blur", "--size", "17", "--boundary", "zero"],
        ["check-operator", "--operator", "center-mask", "--size", "16", "--window", "5"],
        ["check-operator", "--operator", "random-mask", "--size", "9"],
        ["check-operator", "--operator", "identity", "--size", "8"],
    ],
)
def test_check_operator_passes_for_every_operator(argv, capsys) -> None:
    assert main(argv) == 0
    assert "adjoint test: passed" in capsys.readouterr().out


def test_glow_summary_counts_parameters(capsys) -> None:
    assert (
        main(["glow-summary", "--levels", "2", "--steps", "1", "--hidden", "8", "--size", "8"]) == 0
    )
    out = capsys.readouterr().out
    assert "parameters per flow" in out and "latent dimension D = 192" in out


def test_bad_operator_setting_is_a_clear_error(capsys) -> None:
    assert main(["check-operator", "--sigma-b", "-1"]) == 2
    assert "sigma_b must be positive" in capsys.readouterr().err
