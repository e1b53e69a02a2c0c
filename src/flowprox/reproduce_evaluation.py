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
from typing import TYPE_CHECKING, Any

import torch

from flowprox.evaluate import (
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
from flowprox.figures import comparison_figure
from flowprox.models import load_unrolled
from flowprox.tasks import task_label
from flowprox.train import load_prior

if TYPE_CHECKING:
    from flowprox.reproduce import Pipeline

BATCH = 50
#: the task whose GLOW prox restorations calibrate and demonstrate the typicality warning:
#: inpainting keeps 90% of the pixels, so its restorations carry the input's own statistics
TYPICALITY_TASK = "inpaint"
#: false-alarm rates at which the typicality warning is calibrated and reported
FALSE_ALARM_RATES = (0.01, 0.05)


def evaluate_task(pipeline: Pipeline, task: str) -> dict[str, Any]:
    """Evaluate ``task`` in every setting; writes ``eval/TASK/SETTING.{json,csv}`` and figures."""
    from flowprox.reproduce import methods_for

    budget = pipeline.budget
    out = pipeline.out / "eval" / task
    device = torch.device(pipeline.device)
    methods = methods_for(task)
    networks = {}
    for method in methods:
        path = pipeline.run_dir(task, method.key) / "checkpoints" / "best.pt"
        if not path.is_file():
            continue  # its training failed (recorded in its stage mark and in results.md)
        network, config = load_unrolled(path, map_location=device)
        networks[method.key] = (method, network, config)
    if not networks:
        raise RuntimeError(f"no method of task {task} finished training; see stages/*.json.")
    config = next(iter(networks.values()))[2]
    resolution, seed = config.data.resolution, config.train.measurement_seed
    flow, prior_config = load_prior(pipeline.prior_checkpoint)
    flow.to(device)

    validation = load_evaluation_set(
        config.task, "in-distribution", pipeline.data, resolution, 64, seed=seed, split="val"
    )
    classical_parameter, classical_val = tune_classical(validation)
    latent_validation = load_evaluation_set(
        config.task, "in-distribution", pipeline.data, resolution, budget.latent_val_images,
        seed=seed, split="val",
    )  # fmt: skip
    gamma, latent_lr, latent_val = tune_latent(
        flow, latent_validation, budget.latent_steps, gammas=(0.01, 0.1, 1.0), lrs=(0.05,)
    )
    tuned = {
        "classical_parameter": classical_parameter,
        "classical_val_psnr": classical_val,
        "latent_gamma": gamma,
        "latent_lr": latent_lr,
        "latent_val_psnr": latent_val,
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "tuned.json").write_text(json.dumps(tuned, indent=2) + "\n")

    settings = [("in-distribution", budget.eval_images)]
    if task != "deblur-small-support":
        settings += [("ood-measurement", budget.eval_images), ("ood-images", budget.anime_images)]
        if budget.anime_all:
            settings.append(("ood-images-all", 0))
    rows = budget.figure_rows
    for setting, count in settings:
        base_setting = "ood-images" if setting == "ood-images-all" else setting
        evaluation = load_evaluation_set(config.task, base_setting, pipeline.data, resolution,
                                         count)  # fmt: skip
        results = []
        if setting != "ood-images-all":
            results.append(run_method("measurement", measurement_reconstructor, evaluation,
                                      BATCH, keep=rows))  # fmt: skip
            results.append(
                run_method(
                    classical_method_name(evaluation.op),
                    classical_reconstructor(classical_parameter),
                    evaluation,
                    BATCH,
                    details={
                        "parameter": "" if classical_parameter is None else classical_parameter
                    },
                    keep=rows,
                )
            )
        if setting == "in-distribution":
            results.append(
                run_method(
                    f"latent optimisation (T={budget.latent_steps})",
                    latent_reconstructor(flow, budget.latent_steps, gamma, latent_lr),
                    evaluation,
                    BATCH,
                    device,
                    details={"gamma": gamma, "lr": latent_lr},
                    keep=rows,
                )
            )
        for key, (method, network, _) in networks.items():
            if setting == "ood-images-all" and key not in ("resnet", "unet", "glow"):
                continue
            results.append(run_method(method.label, network, evaluation, BATCH, device,
                                      details={"key": key}, keep=rows))  # fmt: skip
        write_results(results, evaluation, out, setting)
        if setting != "ood-images-all":
            columns = [(_short(r.method), r.examples) for r in results if r.examples is not None]
            comparison_figure(
                evaluation.x[:rows],
                columns,
                pipeline.out / "figures" / f"{task}-{setting}.png",
                title=f"{setting}: {task_label(evaluation.task)}",
            )
    if task == TYPICALITY_TASK and "glow" in networks:
        typicality = typicality_check(
            pipeline, networks["glow"][1], config, flow, prior_config["train"]["n_bits"]
        )
        (out / "typicality.json").write_text(json.dumps(typicality, indent=2) + "\n")
    return {"settings": [s for s, _ in settings], **tuned}


def typicality_check(
    pipeline: Pipeline, network: torch.nn.Module, config: Any, flow: torch.nn.Module, n_bits: int
) -> dict[str, Any]:
    """Calibrate ``flowprox restore``'s typicality warning on val; how often it fires on the
    CelebA test images and on the anime faces (restored by the GLOW prox network), at false-alarm
    rates of 1% and 5%, and the AUROC of bits/dim between the two."""
    from flowprox.restore import restored_bits_per_dim, restored_val_bits_per_dim
    from flowprox.typicality import auroc, calibrate

    val_bpd = restored_val_bits_per_dim(network, config, flow, pipeline.data, n_bits,
                                        batch_size=BATCH)  # fmt: skip
    thresholds = {rate: calibrate(val_bpd, rate) for rate in FALSE_ALARM_RATES}
    result: dict[str, Any] = {
        "calibration": f"{len(val_bpd)} restored val images",
        "thresholds": {f"{rate:g}": t.high for rate, t in thresholds.items()},
    }
    count = pipeline.budget.eval_images
    scores = {}
    for name, setting, images in (
        ("celeba_test", "in-distribution", count),
        ("anime", "ood-images", 0 if pipeline.budget.anime_all else pipeline.budget.anime_images),
    ):
        evaluation = load_evaluation_set(
            config.task, setting, pipeline.data, config.data.resolution, images
        )
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
