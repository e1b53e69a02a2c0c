"""Run directories: resolved config, command line, metrics CSV, TensorBoard and checkpoints.

Layout of ``RUN/``::

    config.resolved.toml   the configuration after presets and --set overrides
    command.txt            the command line that started (or resumed) the run
    metrics.csv            one row per logged step (columns fixed by the trainer)
    tensorboard/           TensorBoard event files
    checkpoints/last.pt    the latest state (for --resume)
    checkpoints/best.pt    the state with the best validation score

Only the main process (rank 0) writes; other ranks get a RunDirectory that does nothing.

The main process holds the directory's lock (``utils.runlock``, ``RUN/.flowprox.lock``) from
the moment the RunDirectory is made until ``finish()`` (or the end of a ``with`` block): a
second run on the same directory fails at once, naming the first. A run that fails before its
first checkpoint removes what it wrote (and the directory, if it made it), so a bad input never
leaves a half-made run directory behind.
"""

from __future__ import annotations

import csv
import json
import shlex
import shutil
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

from flowprox.config import to_toml
from flowprox.utils.runlock import LOCK_NAME, RunLock


class RunDirectory:
    """Files of one training run.

    Use it as a context manager (``with RunDirectory(...) as run_dir:``): leaving the block
    releases the lock, and on an exception before the first checkpoint removes the run's files.

    Args:
        root: the run directory (created).
        enabled: False on non-main ranks (writes nothing, takes no lock).
        resume: continue an existing run; without it, a folder that already holds a run is an
            error (so nothing is overwritten by accident).

    Raises:
        RunLockedError: another process runs in ``root`` (a ValueError naming it).
        ValueError: ``root`` is a file, or holds a run and ``resume`` is False.
        FileNotFoundError: ``resume`` is True but ``root`` holds no run.
    """

    def __init__(self, root: str | Path, enabled: bool = True, resume: bool = False) -> None:
        self.root = Path(root)
        self.fields: list[str] = ["step"]
        self.enabled = enabled
        self._writer: Any = None
        self._lock: RunLock | None = None
        self._existing: set[str] = set()
        if enabled:
            self._lock = RunLock(self.root).acquire()
            self._existing = {p.name for p in self.root.iterdir()}
        try:
            if resume and not self.last_checkpoint.is_file():
                raise FileNotFoundError(
                    f"--resume given but {self.last_checkpoint} does not exist; start the run "
                    "without --resume, or point --out at the run to continue."
                )
            if not resume and self.last_checkpoint.is_file():
                raise ValueError(
                    f"{self.root} already holds a run ({self.last_checkpoint}); pass --resume to "
                    "continue it or choose another --out folder."
                )
            if enabled:
                self.checkpoints.mkdir(parents=True, exist_ok=True)
        except BaseException:
            self.finish(failed=True)
            raise

    def __enter__(self) -> RunDirectory:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.finish(failed=error is not None)

    def finish(self, failed: bool = False) -> None:
        """Close the logs and release the lock; after a failure before the first checkpoint,
        first remove what this run wrote (the directory too if the run made it)."""
        self.close()
        if self._lock is None:
            return
        try:
            if failed and not self.last_checkpoint.is_file():
                for path in self.root.iterdir():
                    if path.name in self._existing or path.name == LOCK_NAME:
                        continue
                    if path.is_dir() and not path.is_symlink():
                        shutil.rmtree(path, ignore_errors=True)
                    else:
                        path.unlink(missing_ok=True)
        finally:
            lock, self._lock = self._lock, None
            lock.release()

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def last_checkpoint(self) -> Path:
        return self.checkpoints / "last.pt"

    @property
    def best_checkpoint(self) -> Path:
        return self.checkpoints / "best.pt"

    @property
    def metrics_path(self) -> Path:
        return self.root / "metrics.csv"

    def write_config(self, values: dict[str, Any]) -> None:
        """Write ``config.resolved.toml``."""
        if self.enabled:
            (self.root / "config.resolved.toml").write_text(to_toml(values))

    def write_command(self, argv: Sequence[str] | None = None) -> None:
        """Append the command line to ``command.txt`` (one line per start or resume)."""
        if self.enabled:
            line = shlex.join(
                [Path(sys.executable).name, "-m", "flowprox", *(argv or sys.argv[1:])]
            )
            with (self.root / "command.txt").open("a") as file:
                file.write(line + "\n")

    def write_summary(self, values: dict[str, Any]) -> None:
        """``summary.json``: how the run ended (steps, why it stopped, skipped steps)."""
        if self.enabled:
            text = json.dumps(values, indent=2, allow_nan=True) + "\n"
            (self.root / "summary.json").write_text(text)

    def start_metrics(self, fields: Sequence[str], resume_step: int | None = None) -> None:
        """Create ``metrics.csv`` with columns ``step, *fields``; on resume keep the rows up to
        ``resume_step`` and drop those a killed run wrote after its last checkpoint."""
        self.fields = ["step", *fields]
        if not self.enabled:
            return
        rows: list[dict[str, str]] = []
        if resume_step is not None and self.metrics_path.is_file():
            with self.metrics_path.open(newline="") as file:
                rows = [r for r in csv.DictReader(file) if int(r["step"]) <= resume_step]
        with self.metrics_path.open("w", newline="") as file:
            writer = csv.DictWriter(file, fieldnames=self.fields)
            writer.writeheader()
            writer.writerows(rows)

    def log(self, step: int, values: dict[str, float]) -> None:
        """Append a metrics row and the same scalars to TensorBoard."""
        if not self.enabled:
            return
        unknown = set(values) - set(self.fields)
        if unknown:
            raise ValueError(f"metrics {sorted(unknown)} are not columns of {self.metrics_path}.")
        with self.metrics_path.open("a", newline="") as file:
            csv.DictWriter(file, fieldnames=self.fields).writerow({"step": step, **values})
        writer = self._tensorboard()
        if writer is not None:
            for name, value in values.items():
                writer.add_scalar(name, value, step)

    def _tensorboard(self) -> Any:
        if self._writer is None:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # pragma: no cover - tensorboard is a dependency
                warnings.warn("tensorboard is not installed: no TensorBoard logs.", stacklevel=2)
                self._writer = False
                return None
            self._writer = SummaryWriter(log_dir=str(self.root / "tensorboard"))
        return self._writer or None

    def close(self) -> None:
        """Flush and close the TensorBoard writer."""
        if self._writer:
            self._writer.close()
        self._writer = None


def open_run_directory(
    root: Path,
    config: dict[str, Any],
    argv: Sequence[str] | None,
    enabled: bool,
    resume: bool,
) -> RunDirectory:
    """The run directory ``root`` with the resolved ``config`` and the command line written."""
    run_dir = RunDirectory(root, enabled=enabled, resume=resume)
    run_dir.write_config(config)
    run_dir.write_command(argv)
    return run_dir
