"""The evaluation stage of ``flowprox reproduce``: one task, every setting, every method.

In distribution: every trained method, the classical reference (its parameter tuned on val),
latent optimisation with the pre-trained prior (gamma tuned on val, ``T`` from the preset) and
the measurement itself. Out-of-distribution measurements and images: the trained methods and
the classical reference with the same (in-distribution) parameters, as the paper reuses the
models of Table I. The ``ood-images-all`` setting evaluates GLOW, ResNet and U-Net prox on
every anime image. Figures show the first test images of each setting.
"""

from __future__ import annotations

import json
from typing import Any

import torch

from flowprox.config import UnrolledExperiment
from flowprox.evaluation.evaluate import (
    EvaluationSet,
    MethodResult,
    classical_method_name,
    classical_reconstructor,
    latent_reconstructor,
    load_evaluation_set,
    measurement_reconstructor,
    run_method,
    tune_classical,
    tune_latent,
    write_results,
)
from flowprox.evaluation.figures import comparison_figure
from flowprox.evaluation.restored import restored_bits_per_dim, restored_val_bits_per_dim
from flowprox.experiments.layout import Reproduction
from flowprox.experiments.plan import EvaluationStage, Method, evaluation_stages, methods_for
from flowprox.metrics.typicality import auroc, calibrate
from flowprox.models.prior import load_prior
from flowprox.models.unrolled import load_unrolled
from flowprox.physics.tasks import task_label

BATCH = 50
#: the task whose GLOW prox restorations calibrate and demonstrate the typicality warning:
#: inpainting keeps 90% of the pixels, so its restorations carry the input's own statistics
TYPICALITY_TASK = "inpaint"
#: false-alarm rates at which the typicality warning is calibrated and reported
FALSE_ALARM_RATES = (0.01, 0.05)


def evaluate_task(reproduction: Reproduction, task: str) -> dict[str, Any]:
    """Evaluate ``task`` in every setting; writes ``eval/TASK/SETTING.{json,csv}`` and figures."""
    device = torch.device(reproduction.device)
    networks = _trained_networks(reproduction, task, device)
    config = next(iter(networks.values()))[2]
    flow, prior_config = load_prior(reproduction.prior_checkpoint)
    flow.to(device)
    out = reproduction.out / "eval" / task
    tuned = _tune_references(reproduction, config, flow)
    out.mkdir(parents=True, exist_ok=True)
    (out / "tuned.json").write_text(json.dumps(tuned, indent=2) + "\n")
    stages = evaluation_stages(task, reproduction.settings.evaluation)
    for stage in stages:
        evaluation = load_evaluation_set(
            config.task, stage.setting, reproduction.data, config.data.resolution, stage.images,
            reproduction.ood_data, strict=reproduction.strict,
        )  # fmt: skip
        results = _reference_results(reproduction, stage, evaluation, tuned, flow, device)
        results += _method_results(reproduction, stage, evaluation, networks, device)
        write_results(results, evaluation, out, stage.name)
        if stage.figure:
            _write_figure(reproduction, task, stage, evaluation, results)
    if task == TYPICALITY_TASK and "glow" in networks:
        n_bits = prior_config["train"]["n_bits"]
        typicality = typicality_check(reproduction, networks["glow"][1], config, flow, n_bits)
        (out / "typicality.json").write_text(json.dumps(typicality, indent=2) + "\n")
    return {"settings": [stage.name for stage in stages], **tuned}


Networks = dict[str, tuple[Method, torch.nn.Module, UnrolledExperiment]]


def _trained_networks(reproduction: Reproduction, task: str, device: torch.device) -> Networks:
    """Every method of ``task`` whose training left a best checkpoint, loaded on ``device``."""
    networks: Networks = {}
    for method in methods_for(task):
        path = reproduction.run_dir(task, method.key) / "checkpoints" / "best.pt"
        if not path.is_file():
            continue  # its training failed (recorded in its stage mark and in results.md)
        network, config = load_unrolled(path, map_location=device)
        networks[method.key] = (method, network, config)
    if not networks:
        raise RuntimeError(f"no method of task {task} finished training; see stages/*.json.")
    return networks


def _tune_references(
    reproduction: Reproduction, config: UnrolledExperiment, flow: torch.nn.Module
) -> dict[str, Any]:
    """The classical reference's parameter and latent optimisation's gamma and rate, on val."""
    budget = reproduction.settings.evaluation
    resolution, seed = config.data.resolution, config.train.measurement_seed
    validation = load_evaluation_set(
        config.task, "in-distribution", reproduction.data, resolution, 64, seed=seed, split="val",
        strict=reproduction.strict,
    )  # fmt: skip
    classical_parameter, classical_val = tune_classical(validation)
    latent_validation = load_evaluation_set(
        config.task, "in-distribution", reproduction.data, resolution, budget.latent_val_images,
        seed=seed, split="val", strict=reproduction.strict,
    )  # fmt: skip
    gamma, latent_lr, latent_val = tune_latent(
        flow, latent_validation, budget.latent_steps, gammas=(0.01, 0.1, 1.0), lrs=(0.05,)
    )
    return {
        "classical_parameter": classical_parameter,
        "classical_val_psnr": classical_val,
        "latent_gamma": gamma,
        "latent_lr": latent_lr,
        "latent_val_psnr": latent_val,
    }


def _reference_results(
    reproduction: Reproduction,
    stage: EvaluationStage,
    evaluation: EvaluationSet,
    tuned: dict[str, Any],
    flow: torch.nn.Module,
    device: torch.device,
) -> list[MethodResult]:
    """The measurement, the classical reference and (in distribution) latent optimisation."""
    if not stage.references:
        return []
    budget = reproduction.settings.evaluation
    rows = budget.figure_rows
    parameter = tuned["classical_parameter"]
    results = [
        run_method("measurement", measurement_reconstructor, evaluation, BATCH, keep=rows),
        run_method(
            classical_method_name(evaluation.op),
            classical_reconstructor(parameter),
            evaluation,
            BATCH,
            details={"parameter": "" if parameter is None else parameter},
            keep=rows,
        ),
    ]
    if stage.setting == "in-distribution":
        gamma, lr = tuned["latent_gamma"], tuned["latent_lr"]
        results.append(
            run_method(
                f"latent optimisation (T={budget.latent_steps})",
                latent_reconstructor(flow, budget.latent_steps, gamma, lr),  # type: ignore[arg-type]
                evaluation,
                BATCH,
                device,
                details={"gamma": gamma, "lr": lr},
                keep=rows,
            )
        )
    return results


def _method_results(
    reproduction: Reproduction,
    stage: EvaluationStage,
    evaluation: EvaluationSet,
    networks: Networks,
    device: torch.device,
) -> list[MethodResult]:
    """Every trained method this stage scores."""
    rows = reproduction.settings.evaluation.figure_rows
    return [
        run_method(
            method.label, network, evaluation, BATCH, device, details={"key": key}, keep=rows
        )  # fmt: skip
        for key, (method, network, _) in networks.items()
        if stage.includes(key)
    ]


def _write_figure(
    reproduction: Reproduction,
    task: str,
    stage: EvaluationStage,
    evaluation: EvaluationSet,
    results: list[MethodResult],
) -> None:
    """The first test images of the stage, restored by every method (the paper's Figs. 2-4)."""
    rows = reproduction.settings.evaluation.figure_rows
    columns = [(_short(r.method), r.examples) for r in results if r.examples is not None]
    comparison_figure(
        evaluation.x[:rows],
        columns,
        reproduction.out / "figures" / f"{task}-{stage.name}.png",
        title=f"{stage.name}: {task_label(evaluation.task)}",
    )


def typicality_check(
    reproduction: Reproduction,
    network: torch.nn.Module,
    config: Any,
    flow: torch.nn.Module,
    n_bits: int,
) -> dict[str, Any]:
    """Calibrate ``flowprox restore``'s typicality warning on val; how often it fires on the
    CelebA test images and on the anime faces (restored by the GLOW prox network), at false-alarm
    rates of 1% and 5%, and the AUROC of bits/dim between the two."""
    val_bpd = restored_val_bits_per_dim(network, config, flow, reproduction.data, n_bits,
                                        batch_size=BATCH)  # fmt: skip
    thresholds = {rate: calibrate(val_bpd, rate) for rate in FALSE_ALARM_RATES}
    result: dict[str, Any] = {
        "calibration": f"{len(val_bpd)} restored val images",
        "thresholds": {f"{rate:g}": t.high for rate, t in thresholds.items()},
    }
    budget = reproduction.settings.evaluation
    count = reproduction.settings.evaluation.eval_images
    scores = {}
    for name, setting, images in (
        ("celeba_test", "in-distribution", count),
        ("anime", "ood-images", 0 if budget.anime_all else budget.anime_images),
    ):
        evaluation = load_evaluation_set(
            config.task, setting, reproduction.data, config.data.resolution, images,
            reproduction.ood_data, strict=reproduction.strict,
        )  # fmt: skip
        bpd = restored_bits_per_dim(network, evaluation, flow, n_bits, BATCH)
        scores[name] = bpd
        result[name] = {
            "images": len(bpd),
            "median_bits_per_dim": float(bpd.median()),
            "flagged_fraction": {
                f"{rate:g}": float(t.flagged(bpd).double().mean()) for rate, t in thresholds.items()
            },
        }
    result["auroc"] = auroc(scores["celeba_test"], scores["anime"])
    return result


def _short(name: str) -> str:
    """Column titles for figures."""
    replacements = {
        "GLOW prox (proposed)": "GLOW prox",
        ", pre-trained as denoiser": " (den.)",
        "GLOW plug-and-play": "GLOW PnP",
        "classical: ": "",
        "TV denoising (Chambolle)": "TV",
        "biharmonic inpainting": "biharmonic",
        "Wiener deconvolution": "Wiener",
        "latent optimisation": "latent opt.",
    }
    for old, new in replacements.items():
        name = name.replace(old, new)
    return name
