"""Self-describing, atomic checkpoints and the random-number-generator state they carry.

A checkpoint is a dict saved with ``torch.save``: ``kind`` (e.g. ``"prior"``), ``config`` (the
resolved experiment config as plain values), ``model`` / ``optimizer`` / ``scheduler`` state
dicts, ``step``, ``epoch``, ``best_score``, ``rng`` (Python, NumPy, torch CPU and CUDA states) and
``version`` (flowprox and torch). Writes go to a temporary file in the same folder that is then
renamed over the target, so a crash never leaves a truncated checkpoint behind; the file gets
the permissions of any file the user creates (``0666`` less the umask).
"""

from __future__ import annotations

import os
import random
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from flowprox._version import __version__


def versions() -> dict[str, str]:
    """The package versions recorded in every checkpoint."""
    return {"flowprox": __version__, "torch": torch.__version__}


def current_umask() -> int:
    """This process's umask (read without changing it where ``/proc`` allows)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)  # elsewhere: set and restore at once
    os.umask(mask)
    return mask


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> None:
    """Write ``payload`` to ``path`` atomically (temporary file, fsync, rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {**payload, "version": versions()}
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        if hasattr(os, "fchmod"):  # mkstemp makes it 0600: give it the mode open() would
            os.fchmod(handle, 0o666 & ~current_umask())
        with os.fdopen(handle, "wb") as file:
            torch.save(payload, file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def load_checkpoint(path: str | Path, kind: str | None = None) -> dict[str, Any]:
    """Read a checkpoint onto the CPU, checking it is a flowprox checkpoint of ``kind``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"checkpoint {path} not found; pass the best.pt or last.pt of a run directory "
            "(e.g. runs/prior-small/checkpoints/best.pt)."
        )
    try:
        payload = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as error:  # noqa: BLE001 - any unpickling failure means the same thing
        raise ValueError(
            f"checkpoint {path} could not be read ({error}); it is truncated or not a "
            "flowprox checkpoint: use another one or retrain."
        ) from error
    if not isinstance(payload, dict) or "config" not in payload or "model" not in payload:
        raise ValueError(f"{path} is not a flowprox checkpoint (no config/model entries).")
    if kind is not None and payload.get("kind") != kind:
        raise ValueError(
            f"{path} holds a {payload.get('kind')!r} checkpoint but a {kind!r} one is needed; "
            "pass the checkpoint of the right kind of run."
        )
    return payload


def capture_rng_state() -> dict[str, Any]:
    """The state of every global random-number generator."""
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Restore the generators saved by ``capture_rng_state``."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def config_differences(
    saved: dict[str, Any], current: dict[str, Any], prefix: str = "", defaults: Any = None
) -> list[str]:
    """Lines ``key: saved -> current`` for every value that differs between two nested dicts.

    A key the checkpoint lacks whose requested value equals its value in ``defaults`` (same
    nesting) is no difference: the checkpoint was written before that setting existed, and a
    new setting's default keeps the former behaviour."""
    defaults = defaults if isinstance(defaults, dict) else {}
    lines = []
    for key in sorted(set(saved) | set(current)):
        a, b = saved.get(key, "<absent>"), current.get(key, "<absent>")
        label = f"{prefix}{key}"
        if isinstance(a, dict) and isinstance(b, dict):
            lines += config_differences(a, b, f"{label}.", defaults.get(key))
        elif key not in saved and key in defaults and defaults[key] == b:
            continue
        elif a != b:
            lines.append(f"{label}: checkpoint {a!r} vs requested {b!r}")
    return lines


def check_same_config(
    saved: dict[str, Any],
    current: dict[str, Any],
    what: str,
    source: str | Path,
    defaults: dict[str, Any] | None = None,
) -> None:
    """Raise a ValueError naming both configurations if ``saved`` and ``current`` differ
    (a setting absent from ``saved`` matches at its value in ``defaults``)."""
    differences = config_differences(saved, current, defaults=defaults)
    if differences:
        raise ValueError(
            f"{source} was made for a different {what} configuration:\n  "
            + "\n  ".join(differences)
            + f"\ncheckpoint {what}: {saved}\nrequested {what}: {current}\n"
            "Use the checkpoint's configuration (or a matching checkpoint)."
        )
