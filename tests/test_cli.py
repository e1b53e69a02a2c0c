"""The command line: help lists the subcommands, each runs, bad input gives a clear error."""

from __future__ import annotations

import argparse
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from flowprox.cli.main import build_parser, main
from flowprox.utils.checkpoint import save_checkpoint


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


def _subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    (commands,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(commands.choices)


def test_every_flag_of_every_subcommand_has_help_and_shows_its_default() -> None:
    missing = []
    for name, sub in _subcommands().items():
        assert issubclass(sub.formatter_class, argparse.ArgumentDefaultsHelpFormatter), name
        text = sub.format_help()
        for action in sub._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            if not action.help or action.help == argparse.SUPPRESS:
                missing.append(f"{name} {'/'.join(action.option_strings) or action.dest}")
        assert "(default:" in text or name == "info", name
    assert not missing, f"flags without help: {missing}"
    check = _subcommands()["check-operator"].format_help()
    assert "(default: 64)" in " ".join(check.split())
    restore = " ".join(_subcommands()["restore"].format_help().split())
    assert "(default: None)" not in restore  # a flag not given has no default to show
    assert restore.count("(default: native)") == 1  # said once, not twice


def test_device_is_one_option_taking_cpu_cuda_and_cuda_n_everywhere() -> None:
    types = {}
    for name, sub in _subcommands().items():
        for action in sub._actions:
            if "--device" in action.option_strings:
                types[name] = action.type
    assert set(types) >= {"pretrain", "train", "evaluate", "solve-latent", "reproduce"}
    assert len(set(types.values())) == 1 and None not in types.values()
    (check,) = set(types.values())
    for good in ("cpu", "cuda", "cuda:0", "cuda:3"):
        assert check(good) == good
    for bad in ("gpu", "cuda:", "cuda:x", "cpu:0", "CUDA", ""):
        with pytest.raises(argparse.ArgumentTypeError, match="cpu, cuda or cuda:N"):
            check(bad)


def test_strict_is_offered_wherever_images_are_read() -> None:
    commands = _subcommands()
    for name in (
        "pretrain",
        "train",
        "evaluate",
        "solve-latent",
        "evaluate-prior",
        "reproduce",
        "restore",
    ):
        options = {o for a in commands[name]._actions for o in a.option_strings}
        assert "--strict" in options, name


def test_checkpoints_are_written_with_the_users_umask(tmp_path: Path) -> None:
    previous = os.umask(0o027)
    try:
        save_checkpoint(tmp_path / "a.pt", {"config": {}, "model": {}})
        os.umask(0o002)
        save_checkpoint(tmp_path / "b.pt", {"config": {}, "model": {}})
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "a.pt").stat().st_mode) == 0o666 & ~0o027
    assert stat.S_IMODE((tmp_path / "b.pt").stat().st_mode) == 0o666 & ~0o002
