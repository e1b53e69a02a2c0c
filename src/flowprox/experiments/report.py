"""``results.md`` of a reproduction: Tables I-IV in the paper's layout, ours beside the paper's."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

from flowprox.evaluation.evaluate import SETTINGS
from flowprox.evaluation.figures import curves_figure
from flowprox.experiments.curves import FLAT_GAIN_DB, FLAT_SHARE, late_gain, val_curve
from flowprox.experiments.layout import Reproduction
from flowprox.experiments.plan import (
    ALL_ANIME,
    ALL_ANIME_METHODS,
    ALL_TASKS,
    BEYOND_TASKS,
    METHODS,
    PAPER_TASKS,
    TASK_GROUPS,
    machine_description,
    methods_for,
)

#: the paper's mean PSNR (dB), Wei et al. 2022, Tables I-IV
PAPER = {
    "I": {
        "resnet": (27.054, 34.010, 35.554),
        "resnet-denoiser": (None, 33.216, 35.703),
        "unet": (28.180, 35.157, 38.662),
        "unet-denoiser": (None, 35.337, 38.046),
        "glow": (28.236, 35.927, 40.549),
    },
    "II": {"pnp-glow": (8.112, 18.960, 23.141), "glow": (28.236, 35.927, 40.549)},
    "III": {
        "resnet": (25.489, 34.644, 35.358),
        "unet": (25.770, 35.917, 38.034),
        "glow": (26.633, 36.634, 39.461),
    },
    "IV": {
        "resnet": (21.746, 23.705, 25.007),
        "unet": (22.587, 24.015, 26.224),
        "glow": (22.102, 23.472, 27.419),
    },
}
LABELS = {method.key: method.label for method in METHODS}
TASK_COLUMNS = ("denoise", "inpaint", "deblur")


def _load(reproduction: Reproduction, task: str, setting: str) -> dict[str, Any] | None:
    path = reproduction.out / "eval" / task / f"{setting}.json"
    return json.loads(path.read_text()) if path.is_file() else None


def _by_key(summary: dict[str, Any] | None) -> dict[str, dict[str, Any]]:
    """Methods of one evaluation by key (learned methods) or by name (references)."""
    if summary is None:
        return {}
    result = {}
    for method in summary["methods"]:
        result[method.get("key") or method["method"]] = method
    return result


def non_finite(method: dict[str, Any]) -> int:
    """How many of a method's outputs were not finite (and were scored as grey images)."""
    return int(method.get("failed_images", 0))


def _cell(method: dict[str, Any] | None, paper: float | None = None) -> str:
    ours = "—" if method is None else f"{method['psnr_mean']:.2f} ± {method['psnr_std']:.2f}"
    if method is not None and non_finite(method):
        ours += f" [{non_finite(method)}/{method['images']} non-finite, scored grey]"
    return ours if paper is None else f"{ours} ({paper:.2f})"


def _headers(reproduction: Reproduction, setting: str) -> list[str]:
    headers = []
    for task in TASK_COLUMNS:
        summary = _load(reproduction, task, setting)
        headers.append(summary["task_label"] if summary else task)
    return headers


def _table(
    reproduction: Reproduction, table: str, setting: str, keys: list[str], extra: bool
) -> str:
    results = {task: _by_key(_load(reproduction, task, setting)) for task in TASK_COLUMNS}
    headers = _headers(reproduction, setting)
    lines = ["| method | " + " | ".join(headers) + " |", "| --- |" + " ---: |" * len(headers)]
    for key in keys:
        paper = PAPER[table].get(key, (None, None, None))
        cells = [_cell(results[t].get(key), paper[i]) for i, t in enumerate(TASK_COLUMNS)]
        lines.append(f"| {LABELS[key]} | " + " | ".join(cells) + " |")
    if extra:
        names: list[str] = []
        for task in TASK_COLUMNS:
            for name in results[task]:
                if name not in LABELS and name not in names and not name.startswith("classical"):
                    names.append(name)
        rows = ["classical reference", *names]
        for name in rows:
            cells = []
            for task in TASK_COLUMNS:
                if name == "classical reference":
                    found = next(
                        (v for k, v in results[task].items() if k.startswith("classical")), None
                    )
                    label = found["method"].removeprefix("classical: ") if found else ""
                    cells.append(_cell(found) + (f" ({label})" if label else ""))
                else:
                    cells.append(_cell(results[task].get(name)))
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _costs(reproduction: Reproduction) -> str:
    lines = [
        "| task | method | PSNR | SSIM | time / image | peak memory (inference) |",
        "| --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for task in (*TASK_COLUMNS, "deblur-small-support", *BEYOND_TASKS):
        summary = _load(reproduction, task, "in-distribution")
        if summary is None:
            continue
        for m in summary["methods"]:
            lines.append(
                f"| {summary['task_label']} | {m['method']} | {m['psnr_mean']:.2f} ± "
                f"{m['psnr_std']:.2f} | {m['ssim_mean']:.3f} ± {m['ssim_std']:.3f} | "
                f"{1000 * m['seconds_per_image']:.1f} ms | {m['peak_memory_mib']:.0f} MiB |"
            )
    return "\n".join(lines)


def _small_support(reproduction: Reproduction) -> str:
    full = _by_key(_load(reproduction, "deblur", "in-distribution"))
    small = _load(reproduction, "deblur-small-support", "in-distribution")
    if small is None:
        return "(not run)"
    small_results = _by_key(small)
    lines = [
        f"| method | {_headers(reproduction, 'in-distribution')[2]} (full support) | "
        f"{small['task_label']} |",
        "| --- | ---: | ---: |",
    ]
    for name, method in small_results.items():
        label = LABELS.get(name, name)
        lines.append(f"| {label} | {_cell(full.get(name))} | {_cell(method)} |")
    return "\n".join(lines)


def _training_summary(reproduction: Reproduction) -> str:
    """Every training run: its steps, why it stopped, the steps skipped for a non-finite loss or
    gradient, and its best val PSNR (a run that hit the safety time cap is marked)."""
    lines = [
        f"A run has flattened when its best val PSNR gained less than {FLAT_GAIN_DB} dB over "
        f"its last {FLAT_SHARE:.0%} of steps (curves: `figures/curves.png`); a run stopped by "
        "`flattened` ended there, before its step budget.",
        "",
        "| task | method | steps | stopped by | skipped steps | minutes | best val PSNR "
        "| late gain (dB) | flattened |",
        "| --- | --- | ---: | --- | ---: | ---: | ---: | ---: | --- |",
    ]
    for task in reproduction.tasks:
        for method in methods_for(task):
            run = reproduction.run_dir(task, method.key)
            if not (run / "metrics.csv").is_file():
                continue
            with open(run / "metrics.csv") as file:
                rows = list(csv.DictReader(file))
            val = [float(r["val_psnr"]) for r in rows if r.get("val_psnr")]
            last = rows[-1] if rows else {}
            summary_path = run / "summary.json"
            summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
            steps = summary.get("steps", last.get("step", ""))
            reason = summary.get("stop_reason", "?")
            if reason == "time limit":
                reason = "**time cap** (budget not reached)"
            minutes = float(summary.get("elapsed_s", last.get("elapsed_s") or 0)) / 60
            best = f"{max(val):.2f}" if val else "—"
            gain = late_gain(val_curve(run))
            flat = "—" if gain is None else ("yes" if gain < FLAT_GAIN_DB else "**no**")
            shown_gain = "—" if gain is None else f"{gain:+.2f}"
            lines.append(
                f"| {task} | {method.label} | {steps} | {reason} | "
                f"{summary.get('bad_steps', '?')} | {minutes:.1f} | {best} | {shown_gain} "
                f"| {flat} |"
            )
    return "\n".join(lines)


def write_report(reproduction: Reproduction) -> Path:
    """Write ``results.md`` (and ``tables.csv``) from the evaluation stage's JSON files."""
    sections = [
        *_header(reproduction),
        *_paper_tables(reproduction),
        *_beyond_tables(reproduction),
        *_typicality(reproduction),
        *_failed_runs(reproduction),
        *_extras(reproduction),
        *_figures(reproduction),
    ]
    _write_curves(reproduction)
    path = reproduction.out / "results.md"
    path.write_text("\n".join(sections) + "\n")
    _write_tables_csv(reproduction)
    return path


def made_with(reproduction: Reproduction) -> dict[str, dict[str, Any]]:
    """What each finished stage was made with (preset, ``--set``, data), from its mark."""
    found = {}
    for path in sorted((reproduction.out / "stages").glob("*.json")):
        try:
            mark = json.loads(path.read_text())
        except ValueError:
            continue
        if isinstance(mark, dict) and isinstance(mark.get("made_with"), dict):
            found[path.stem] = mark["made_with"]
    return found


def _tasks_option(tasks: list[str] | None) -> str | None:
    """``--tasks`` as the command line gave it: None for the default (the paper's tasks), a
    group's name where the tasks are one group, else the task names."""
    if not tasks or tuple(tasks) == PAPER_TASKS:
        return None
    group = next((name for name, group in TASK_GROUPS.items() if tuple(tasks) == group), None)
    return group or ",".join(tasks)


def _command(settings: dict[str, Any]) -> str:
    parts = [f"flowprox reproduce --preset {settings.get('preset')} --data DATA --out RUN"]
    tasks = _tasks_option(settings.get("tasks"))
    if tasks:
        parts.append(f"--tasks {tasks}")
    if settings.get("ood_data"):
        parts.append("--ood-data OOD")
    if settings.get("budget_scale", 1.0) != 1.0:
        parts.append(f"--budget-scale {settings['budget_scale']:g}")
    parts += [f"--set {override}" for override in settings.get("overrides") or []]
    return " ".join(parts)


def _marks(reproduction: Reproduction) -> list[Path]:
    return sorted((reproduction.out / "stages").glob("*.json"))


def _stage_seconds(reproduction: Reproduction, mark: Path) -> float:
    """A stage's time: its mark's seconds (the call that finished it), or for a training stage
    resumed after a stop, its run's own clock over every call (``summary.json``) when longer."""
    seconds = float(json.loads(mark.read_text()).get("seconds", 0))
    name = mark.stem
    if name == "prior":
        run = reproduction.prior_run
    elif name.startswith("train-"):
        task = next((t for t in sorted(ALL_TASKS, key=len, reverse=True)
                     if name.startswith(f"train-{t}-")), None)  # fmt: skip
        if task is None:
            return seconds
        run = reproduction.run_dir(task, name.removeprefix(f"train-{task}-"))
    else:
        return seconds
    summary = run / "summary.json"
    if summary.is_file():
        seconds = max(seconds, float(json.loads(summary.read_text()).get("elapsed_s", 0)))
    return seconds


def _header(reproduction: Reproduction) -> list[str]:
    """Title, machine, total stage time, the settings the stages were made with (read from
    their marks, not from the command that writes the report) and how to read the tables."""
    seconds = sum(_stage_seconds(reproduction, path) for path in _marks(reproduction))
    commands = {name: _command(settings) for name, settings in made_with(reproduction).items()}
    presets = {name: settings.get("preset") for name, settings in made_with(reproduction).items()}
    distinct = list(dict.fromkeys(commands.values()))
    if len(distinct) == 1:
        preset = f"`{next(iter(presets.values()))}`"
        command = f"Command: `{distinct[0]}` (the settings of every stage, from `stages/`)."
    elif distinct:
        preset = "mixed: " + ", ".join(f"`{p}`" for p in dict.fromkeys(presets.values()))
        command = "The stages were made with different settings:\n\n" + "\n".join(
            f"- `{text}`: " + ", ".join(name for name, c in commands.items() if c == text)
            for text in distinct
        )
    else:
        preset = "unknown (stage marks without settings)"
        command = "The stages did not record their settings (made by an older flowprox)."
    return [
        f"# Reproduction of Wei et al. 2022 — preset {preset}",
        "",
        f"Machine: {machine_description()}. Stage time in all: {seconds / 60:.1f} min (a "
        "training stage resumed after a stop counts its run's own clock over every call).",
        command,
        "Mean PSNR ± standard deviation over the test images (dB, peak 1, outputs clamped to "
        "[0, 1]); the paper's number in parentheses. SSIM, per-image values, timings and "
        "memory are in `eval/TASK/SETTING.{json,csv}`.",
        "",
    ]


def _ran_paper_tasks(reproduction: Reproduction) -> bool:
    """Whether any of the paper's tasks was evaluated (a ``--tasks beyond`` run has none)."""
    return any(any((reproduction.out / "eval" / task).glob("*.json")) for task in PAPER_TASKS)


def _paper_tables(reproduction: Reproduction) -> list[str]:
    """Tables I-IV in the paper's layout; nothing when none of the paper's tasks was evaluated."""
    if not _ran_paper_tasks(reproduction):
        return []
    anime = _load(reproduction, "denoise", "ood-images")
    anime_count = anime["images"] if anime else 0
    anime_all = _load(reproduction, "denoise", ALL_ANIME)
    sections = [
        "## Table I: in distribution (CelebA test split)",
        "",
        _table(reproduction, "I", "in-distribution",
               ["resnet", "resnet-denoiser", "unet", "unet-denoiser", "glow"], True),
        "",
        "## Table II: plug-and-play GLOW against the trained GLOW prox",
        "",
        _table(reproduction, "II", "in-distribution", ["pnp-glow", "glow"], False),
        "",
        "## Table III: out-of-distribution measurements (models of Table I)",
        "",
        _table(reproduction, "III", "ood-measurement", ["resnet", "unet", "glow"], False),
        "",
        f"## Table IV: out-of-distribution images ({anime_count} random anime faces)",
        "",
        _table(reproduction, "IV", "ood-images", ["resnet", "unet", "glow"], False),
        "",
    ]  # fmt: skip
    if anime_all:
        sections += [
            f"All {anime_all['images']} anime faces:",
            "",
            _table(reproduction, "IV", ALL_ANIME, list(ALL_ANIME_METHODS), False),
            "",
        ]
    return sections


def _beyond_table(reproduction: Reproduction, tasks: list[str], setting: str) -> str:
    """One table of the tasks beyond the paper: a column per task, a row per method (the
    zero-filled ``A^+ y``, the tuned TV reconstruction, latent optimisation, the proxes)."""
    results = {task: _by_key(_load(reproduction, task, setting)) for task in tasks}
    headers = [(_load(reproduction, task, setting) or {}).get("task_label", task) for task in tasks]
    lines = ["| method | " + " | ".join(headers) + " |", "| --- |" + " ---: |" * len(headers)]
    rows = [
        ("zero-filled (A^+ y)", lambda name: name == "measurement"),
        ("TV-regularised reconstruction", lambda name: name.startswith("classical")),
        ("latent optimisation", lambda name: name.startswith("latent")),
        (LABELS["unet"], lambda name: name == "unet"),
        (LABELS["glow"], lambda name: name == "glow"),
    ]
    for label, matches in rows:
        found = [next((v for k, v in results[t].items() if matches(k)), None) for t in tasks]
        if any(found):
            lines.append(f"| {label} | " + " | ".join(_cell(m) for m in found) + " |")
    return "\n".join(lines)


def _beyond_tables(reproduction: Reproduction) -> list[str]:
    """The forward models beyond the paper (``--tasks beyond``), in distribution and with the
    out-of-distribution operator; nothing when none was evaluated."""
    tasks = [t for t in BEYOND_TASKS if _load(reproduction, t, "in-distribution") is not None]
    if not tasks:
        return []
    return [
        "## Beyond the paper: super-resolution, compressed sensing, MRI (CelebA test split)",
        "",
        "The same frame and budgets as Table I. References: the zero-filled pseudo-inverse "
        "`A^+ y` and TV-regularised reconstruction (primal-dual, its weight tuned on val).",
        "",
        _beyond_table(reproduction, tasks, "in-distribution"),
        "",
        "Out-of-distribution measurements (a higher factor, a lower ratio, a higher "
        "acceleration; models and parameters of the table above):",
        "",
        _beyond_table(reproduction, tasks, "ood-measurement"),
        "",
    ]


def _typicality(reproduction: Reproduction) -> list[str]:
    """How often the typicality warning fires on CelebA test and on anime faces."""
    typicality_path = reproduction.out / "eval" / "inpaint" / "typicality.json"
    if not typicality_path.is_file():
        return []
    t = json.loads(typicality_path.read_text())
    rates = list(t["thresholds"])
    return [
        "## Typicality warning of `flowprox restore`",
        "",
        f"Bits/dim under the prior of the GLOW prox's inpainted images. The warning fires "
        f"above a threshold calibrated on {t['calibration']} so that it flags a chosen "
        f"fraction of them (the false-alarm rate; `restore --false-alarm`, default 0.05). "
        f"Thresholds: "
        + ", ".join(f"{t['thresholds'][r]:.3f} at {100 * float(r):g}%" for r in rates)
        + f". AUROC of bits/dim, CelebA test against anime: {t['auroc']:.3f}.",
        "",
        "| images | count | median bits/dim | "
        + " | ".join(f"fires at {100 * float(r):g}% false alarm" for r in rates)
        + " |",
        "| --- | ---: | ---: | " + " | ".join("---:" for _ in rates) + " |",
        *[
            f"| {label} | {t[key]['images']} | {t[key]['median_bits_per_dim']:.3f} | "
            + " | ".join(f"{100 * t[key]['flagged_fraction'][r]:.1f}%" for r in rates)
            + " |"
            for key, label in (("celeba_test", "CelebA test"), ("anime", "anime faces"))
        ],
        "",
    ]


def _failed_runs(reproduction: Reproduction) -> list[str]:
    """The training runs that diverged, and why."""
    failures = reproduction.failures()
    if not failures:
        return []
    return [
        "## Runs that failed",
        "",
        "Cells shown as — belong to these training runs, which diverged (their forward pass "
        "gave NaN/Inf at every step until the trainer gave up):",
        "",
        *[f"- `{name}`: {reason}" for name, reason in failures.items()],
        "",
    ]


def _extras(reproduction: Reproduction) -> list[str]:
    """The small-support deblurring column (when a paper task ran), the cost of inference and
    the training runs."""
    return [
        *(_small_support_section(reproduction) if _ran_paper_tasks(reproduction) else []),
        "## Cost of inference (in distribution)",
        "",
        _costs(reproduction),
        "",
        "## Training runs",
        "",
        _training_summary(reproduction),
        "",
    ]


def _small_support_section(reproduction: Reproduction) -> list[str]:
    """The full kernel support against a small one, with why it matters."""
    return [
        "## Deblurring: full kernel support against a small support",
        "",
        "The paper does not give the blur kernel's support. Our default is the full "
        "`2 ceil(3 sigma_b) + 1` support (31x31 at sigma_b = 5); a small support cuts most of "
        "the Gaussian away, leaving a much milder blur that even a plain Wiener filter nearly "
        "inverts, which is one way to read the paper's high deblurring PSNRs.",
        "",
        _small_support(reproduction),
        "",
    ]


def _write_curves(reproduction: Reproduction) -> None:
    """``figures/curves.png``: val PSNR against step, one panel per task, one line per method."""
    panels = {
        task: {
            method.label: val_curve(reproduction.run_dir(task, method.key))
            for method in methods_for(task)
        }
        for task in reproduction.tasks
    }
    if any(curve for lines in panels.values() for curve in lines.values()):
        curves_figure(panels, reproduction.out / "figures" / "curves.png")


def _figures(reproduction: Reproduction) -> list[str]:
    """Links to every figure of the reproduction."""
    figures = sorted((reproduction.out / "figures").glob("*.png"))
    return ["## Figures", "", *[f"![{f.stem}](figures/{f.name})" for f in figures]]


def _write_tables_csv(reproduction: Reproduction) -> None:
    rows = []
    for task in (*TASK_COLUMNS, "deblur-small-support", *BEYOND_TASKS):
        for setting in (*SETTINGS, ALL_ANIME):
            summary = _load(reproduction, task, setting)
            if summary is None:
                continue
            for m in summary["methods"]:
                rows.append([task, setting, summary["task_label"], m["method"], m["psnr_mean"],
                             m["psnr_std"], m["ssim_mean"], m["ssim_std"], m["images"],
                             non_finite(m), m["seconds_per_image"],
                             m["peak_memory_mib"]])  # fmt: skip
    with open(reproduction.out / "tables.csv", "w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["task", "setting", "task_label", "method", "psnr_mean", "psnr_std",
                         "ssim_mean", "ssim_std", "images", "non_finite", "seconds_per_image",
                         "peak_memory_mib"])  # fmt: skip
        writer.writerows(rows)
