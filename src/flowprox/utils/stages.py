"""Resumable stages whose results are reused only when they were made the same way.

A multi-stage command (``flowprox reproduce``, ``flowprox demo``) runs its stages in order; a
finished stage leaves ``ROOT/stages/NAME.json`` with what it returned, when it finished, the
settings it was run with and a **fingerprint**: its resolved settings (the run's config, the
preset) and the identity (sha256) of every input file (e.g. the prior's ``best.pt``).

On a rerun a finished stage is skipped only if its fingerprint is unchanged. A stage whose
*settings* differ is never reused: the whole command stops before running anything, listing the
differences stage by stage, until the user either goes back to the old settings or asks for the
stage to be made again with ``--redo STAGE`` (``all``, a stage's name, or a prefix such as
``train``), which also redoes every stage that uses its results. A stage whose *inputs*
changed (an earlier stage was redone, a checkpoint replaced) is refused the same way, unless it
is ``derived`` (evaluation, a report): such a stage is simply run again.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from tqdm import tqdm

MISSING = "missing"
_MAX_LISTED = 8  # differences listed per stage

#: sha256 of files already hashed, by (path, size, mtime): checkpoints are hashed once per run
_DIGESTS: dict[tuple[str, int, int], str] = {}


def file_identity(path: str | Path) -> str:
    """``sha256:HEX`` of the file at ``path``, or ``"missing"``."""
    path = Path(path)
    try:
        stat = path.stat()
    except OSError:
        return MISSING
    if not path.is_file():
        return MISSING
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _DIGESTS:
        digest = hashlib.sha256()
        with path.open("rb") as file:
            for block in iter(lambda: file.read(1 << 20), b""):
                digest.update(block)
        _DIGESTS[key] = f"sha256:{digest.hexdigest()}"
    return _DIGESTS[key]


def plain(value: Any) -> Any:
    """``value`` as JSON gives it back (tuples become lists), for exact comparisons."""
    return json.loads(json.dumps(value))


def differences(old: Any, new: Any, prefix: str = "", defaults: Any = None) -> list[str]:
    """Lines ``KEY OLD -> NEW`` for every leaf that differs between two nested dicts, in the
    order of ``new`` (then keys only ``old`` has). A top-level ``config`` table is flattened
    (``model.hidden``, not ``config.model.hidden``). A key ``old`` lacks whose value in ``new``
    equals its value in ``defaults`` (same nesting) is no difference: ``old`` was recorded
    before that setting existed, and a new setting's default keeps the former behaviour."""
    if not (isinstance(old, dict) and isinstance(new, dict)):
        return [] if old == new else [f"{prefix or 'value'} {old!r} -> {new!r}"]
    defaults = defaults if isinstance(defaults, dict) else {}
    lines = []
    for key in [*new, *(k for k in old if k not in new)]:
        label = "" if not prefix and key == "config" else f"{prefix}{key}"
        a, b = old.get(key, MISSING), new.get(key, MISSING)
        if isinstance(a, dict) and isinstance(b, dict):
            lines += differences(a, b, f"{label}." if label else "", defaults.get(key))
        elif a is MISSING and key in defaults and plain(defaults[key]) == b:
            continue
        elif a != b:
            lines.append(f"{label} {_short(a)} -> {_short(b)}")
    return lines


def _short(value: Any) -> str:
    if isinstance(value, str) and value.startswith("sha256:"):
        return value[:19] + "…"
    return repr(value)


@dataclass
class Stage:
    """One stage of a multi-stage command.

    Args:
        name: its name (``prior``, ``train-inpaint-glow``, ...): the mark's file name.
        run: runs it; returns what its mark records (a dict, or None).
        settings: its resolved settings (plain values); a change refuses reuse.
        inputs: the files it reads, by label; a change refuses reuse (reruns it if ``derived``).
        after: the stages whose results it reads (``--redo`` of those redoes it too).
        outputs: what ``--redo`` removes before running it again.
        derived: computed from its inputs alone (evaluation, report): rerun when they change.
        every_rank: runs on every ``torchrun`` rank (training); other stages on rank 0 alone.
        defaults: the settings' defaults, nested as ``settings``: a setting a finished stage
            did not record (it did not exist yet) matches when it is at its default now.
    """

    name: str
    run: Callable[[], dict[str, Any] | None]
    settings: Callable[[], dict[str, Any]] = dict
    inputs: Callable[[], dict[str, Path]] = dict
    after: tuple[str, ...] = ()
    outputs: Callable[[], list[Path]] = list
    derived: bool = False
    every_rank: bool = False
    defaults: Callable[[], dict[str, Any]] = dict


@dataclass
class StageRunner:
    """Runs ``stages`` in ``root``, reusing a finished stage only when its fingerprint matches.

    ``made_with`` (the preset, ``--set`` overrides, data...) is written into every mark, so a
    report can state the settings its stages were made with.
    """

    root: Path
    stages: list[Stage]
    what: str = "run"
    made_with: dict[str, Any] = field(default_factory=dict)
    rank: int = 0

    @property
    def marks(self) -> Path:
        return self.root / "stages"

    def mark_path(self, name: str) -> Path:
        return self.marks / f"{name}.json"

    def read_mark(self, name: str) -> dict[str, Any] | None:
        path = self.mark_path(name)
        if not path.is_file():
            return None
        try:
            mark = json.loads(path.read_text())
        except ValueError:
            return {}  # a damaged mark: its settings are unknown
        return mark if isinstance(mark, dict) else {}

    def fingerprint(self, stage: Stage) -> dict[str, Any]:
        """The stage's settings and the identity of its input files, now."""
        inputs = {}
        for label, path in stage.inputs().items():
            inputs[label] = file_identity(path)
        return plain({"settings": stage.settings(), "inputs": inputs})

    # ------------------------------------------------------------------------------ redo
    def redo_names(self, requested: Sequence[str]) -> list[str]:
        """The stages ``--redo`` names (``all``, names, prefixes), and every stage after them
        that reads their results, in plan order."""
        names = [stage.name for stage in self.stages]
        chosen: set[str] = set()
        for request in requested:
            if request == "all":
                chosen.update(names)
                continue
            matched = [n for n in names if n == request or n.startswith(f"{request}-")]
            if not matched:
                raise ValueError(
                    f"--redo {request}: no such stage; the stages are all, "
                    f"{', '.join(names)} (or a prefix such as train)."
                )
            chosen.update(matched)
        changed = True
        while changed:
            changed = False
            for stage in self.stages:
                if stage.name not in chosen and chosen.intersection(stage.after):
                    chosen.add(stage.name)
                    changed = True
        return [n for n in names if n in chosen]

    def remove(self, names: Sequence[str]) -> None:
        """Delete the marks and outputs of ``names`` (rank 0; other ranks only those of stages
        every rank runs, which no rank writes before all have joined)."""
        for stage in self.stages:
            if stage.name not in names or (self.rank != 0 and not stage.every_rank):
                continue
            removed = []
            for path in stage.outputs():
                if path.is_dir() and not path.is_symlink():
                    shutil.rmtree(path, ignore_errors=True)
                    removed.append(path)
                elif path.exists() or path.is_symlink():
                    path.unlink(missing_ok=True)
                    removed.append(path)
            self.mark_path(stage.name).unlink(missing_ok=True)
            if self.rank == 0:
                shown = ", ".join(str(p) for p in removed) or "nothing to remove"
                print(f"redo {stage.name}: removed {shown}")

    # ----------------------------------------------------------------------------- check
    def problems(self, stage: Stage, mark: dict[str, Any]) -> tuple[list[str], bool]:
        """``(differences, refuse)`` between a finished stage and what is asked for now."""
        saved = mark.get("fingerprint")
        if not isinstance(saved, dict):
            return ["finished without a record of its settings (older flowprox)"], True
        now = self.fingerprint(stage)
        setting_lines = differences(
            saved.get("settings", {}), now["settings"], "", stage.defaults()
        )
        input_lines = [
            f"input {line}" for line in differences(saved.get("inputs", {}), now["inputs"])
        ]
        refuse = bool(setting_lines) or (bool(input_lines) and not stage.derived)
        return setting_lines + input_lines, refuse

    def check(self, skip: Sequence[str] = ()) -> None:
        """Refuse (a ValueError listing every difference) if a finished stage not in ``skip``
        was made with other settings, or from other inputs and is not derived."""
        lines = []
        for stage in self.stages:
            mark = None if stage.name in skip else self.read_mark(stage.name)
            if mark is None:
                continue
            found, refuse = self.problems(stage, mark)
            if refuse:
                lines.append(self._line(stage.name, found))
        if lines:
            raise ValueError(self._refusal(lines))

    def _line(self, name: str, found: list[str]) -> str:
        listed = "; ".join(found[:_MAX_LISTED])
        more = f"; and {len(found) - _MAX_LISTED} more" if len(found) > _MAX_LISTED else ""
        return f"  {name}: {listed}{more}"

    def _refusal(self, lines: list[str]) -> str:
        return (
            f"{self.root} holds finished {self.what} stages made with other settings or inputs "
            "than asked for now (finished -> now); they are not reused:\n"
            + "\n".join(lines)
            + "\nRun again with the settings they were made with, or pass --redo STAGE (that "
            "stage and the stages that use it) or --redo all to make them again with these "
            "settings (their results are replaced)."
        )

    # ------------------------------------------------------------------------------- run
    def run(self, desc: str) -> None:
        """Run every stage not finished with the same fingerprint, in order."""
        self.marks.mkdir(parents=True, exist_ok=True)
        bar = tqdm(self.stages, desc=desc, unit="stage", position=0, disable=self.rank != 0)
        for stage in bar:
            if self.rank != 0 and not stage.every_rank:
                continue
            mark = self.read_mark(stage.name)
            if mark is not None:
                found, refuse = self.problems(stage, mark)
                if not found:
                    continue
                if refuse:
                    raise ValueError(self._refusal([self._line(stage.name, found)]))
                tqdm.write(f"\n{stage.name}: its inputs changed ({'; '.join(found)}): again")
            bar.set_postfix_str(stage.name)
            tqdm.write(f"\n=== stage {stage.name} ===")
            fingerprint = self.fingerprint(stage)
            started = time.monotonic()
            info = stage.run() or {}
            info["seconds"] = round(time.monotonic() - started, 1)
            info["finished"] = datetime.now().isoformat(timespec="milliseconds")
            info["made_with"] = self.made_with
            info["fingerprint"] = fingerprint
            if self.rank == 0:
                self.mark_path(stage.name).write_text(json.dumps(plain(info), indent=2) + "\n")
        bar.close()
