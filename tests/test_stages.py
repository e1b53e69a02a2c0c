"""Stage fingerprints: ``demo`` (and ``reproduce``, see test_reproduce.py) reuse a finished
stage only when it was made with the settings (and inputs) asked for now; otherwise they refuse,
listing the differences, until ``--redo STAGE|all``."""

from __future__ import annotations

from pathlib import Path

from flowprox.cli.main import main
from flowprox.utils.stages import differences, file_identity


def marks(out: Path) -> dict[str, str]:
    return {p.name: p.read_text() for p in sorted((out / "stages").glob("*.json"))}


def test_differences_list_changed_settings_in_order_and_flatten_the_config() -> None:
    old = {"preset": "tiny", "config": {"model": {"hidden": 16, "levels": 2}, "seed": 0}}
    new = {"preset": "small", "config": {"model": {"hidden": 96, "levels": 2}, "seed": 0}}
    assert differences(old, new) == ["preset 'tiny' -> 'small'", "model.hidden 16 -> 96"]
    assert differences(old, old) == []


def test_a_setting_added_since_a_stage_finished_matches_at_its_default_only() -> None:
    old = {"config": {"train": {"lr": 0.1}}}
    defaults = {"config": {"train": {"lr": 1e-5, "likelihood_weight": 0.0}}}
    at_default = {"config": {"train": {"lr": 0.1, "likelihood_weight": 0.0}}}
    assert differences(old, at_default, "", defaults) == []
    changed = {"config": {"train": {"lr": 0.1, "likelihood_weight": 0.5}}}
    assert differences(old, changed, "", defaults) == ["train.likelihood_weight 'missing' -> 0.5"]
    assert differences(old, at_default) == ["train.likelihood_weight 'missing' -> 0.0"]
    # a recorded setting is compared as before, whatever the defaults
    assert differences({"a": 1}, {"a": 2}, "", {"a": 2}) == ["a 1 -> 2"]


def test_file_identity_is_the_content_hash(tmp_path: Path) -> None:
    a, b = tmp_path / "a.pt", tmp_path / "b.pt"
    a.write_bytes(b"weights")
    b.write_bytes(b"weights")
    assert file_identity(a) == file_identity(b) != file_identity(tmp_path / "none.pt")
    b.write_bytes(b"other weights")
    assert file_identity(a) != file_identity(b)


def test_demo_rerun_with_other_minutes_is_refused_until_redo(tmp_path: Path, capsys) -> None:
    arguments = ["demo", "--out", str(tmp_path), "--minutes", "0.02"]
    assert main(arguments) == 0
    before = marks(tmp_path)
    assert set(before) == {"prior.json", "train.json"}
    capsys.readouterr()
    assert main(["demo", "--out", str(tmp_path), "--minutes", "0.03"]) == 2
    err = capsys.readouterr().err
    assert "prior: train.time_limit_minutes 0.02 -> 0.03" in err
    assert "train: train.time_limit_minutes 0.02 -> 0.03" in err and "--redo" in err
    assert marks(tmp_path) == before
    # --redo train: the prior, made with these settings, is reused; the network trained again.
    assert main([*arguments, "--redo", "train"]) == 0
    after = marks(tmp_path)
    assert after["prior.json"] == before["prior.json"]
    assert after["train.json"] != before["train.json"]
