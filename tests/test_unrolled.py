"""The unrolled proximal gradient network and its flow prox."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from conftest import make_glow, perturb_parameters_, smooth_images
from torch import nn

from flowprox.config import (
    DataConfig,
    UnrolledExperiment,
    UnrolledModelConfig,
    UnrolledTrainConfig,
)
from flowprox.flows import TopStandardize
from flowprox.flows.memory import activation_bytes
from flowprox.models.unrolled import uses_memory_saving
from flowprox.optim.prox import (
    FlowProx,
    IdentityProx,
    NetworkProx,
    gaussian_shrinkage,
    laplace_shrinkage,
)
from flowprox.optim.unrolled import (
    UnrolledProximalGradient,
    flow_unrolled_network,
    step_size_from_operator,
)
from flowprox.physics.noise import measure
from flowprox.physics.operators import GaussianBlur, Identity, LinearOperator, Mask
from flowprox.training.task import make_unrolled_optimizer


def measurement(op, size: int = 8, sigma: float = 0.05, seed: int = 0):
    x = smooth_images(2, 3, size, seed=seed).double()
    y = measure(op, x, sigma, torch.Generator().manual_seed(seed))
    return x, y


class Double(LinearOperator):
    """``A x = 2 x``: a forward model whose gradient steps are easy to work out by hand."""

    def _A(self, x: torch.Tensor) -> torch.Tensor:
        return 2.0 * x

    def _A_adjoint(self, y: torch.Tensor) -> torch.Tensor:
        return 2.0 * y


@pytest.mark.parametrize(
    ("initial", "expected"),
    [
        # y = 1, mu = 0.1: x <- x - 0.1 * 2 (2 x - 1) = 0.6 x + 0.2
        ("adjoint", [2.0, 1.4, 1.04, 0.824]),  # x_0 = A^T y = 2
        ("zeros", [0.0, 0.2, 0.32, 0.392]),
    ],
)
def test_identity_prox_network_is_plain_gradient_descent(
    initial: str, expected: list[float]
) -> None:
    y = torch.ones(1, 1, 1, 1, dtype=torch.float64)
    proxes = [NetworkProx(nn.Identity()) for _ in range(3)]
    model = UnrolledProximalGradient(proxes, mu_init=0.1, initial_estimate=initial).double()
    with torch.no_grad():
        _, iterates = model(y, Double(), return_all=True)
    assert [float(x) for x in iterates] == pytest.approx(expected, abs=1e-6)
    assert model.lambda_raw is None  # a CNN prox has no shrinkage weight


def test_flow_prox_without_shrinkage_is_the_identity() -> None:
    prox = FlowProx(make_glow(), memory_saving=False)
    v = smooth_images(2, 3, 8, seed=1).double()
    assert torch.allclose(prox(v, lambda_=torch.tensor(0.0, dtype=torch.float64)), v, atol=1e-10)
    assert torch.allclose(prox(v, lambda_=None), v, atol=1e-10)


def test_a_fold_with_zero_lambda_is_exactly_the_gradient_step() -> None:
    op = Mask.center_square(8, 8, 3)
    observed = op.mask.bool().expand(1, 3, 8, 8)
    y = op.A(torch.ones(1, 3, 8, 8, dtype=torch.float64))  # 1 where observed, 0 elsewhere
    x = torch.full((1, 3, 8, 8), 0.2, dtype=torch.float64)
    model = flow_unrolled_network(make_glow(), num_folds=2, mu_init=0.9).double()
    # x - 0.9 m (m x - y): 0.2 - 0.9 (0.2 - 1) = 0.92 where observed, 0.2 where missing
    step = torch.where(observed, 0.92, 0.2).double()
    with torch.no_grad():
        model.lambda_raw.fill_(-60.0)  # softplus(-60) ~ 1e-26: lambda = 0 to double precision
        assert torch.allclose(model.fold(0, x, y, op), step, atol=1e-6)
        # the last fold never shrinks (paper eq. 12), whatever lambda is
        model.lambda_raw.fill_(3.0)
        assert torch.allclose(model.fold(1, x, y, op), step, atol=1e-6)


def test_shrinkages() -> None:
    z = torch.tensor([-2.0, -0.05, 0.0, 0.3, 1.5])
    assert torch.allclose(
        gaussian_shrinkage(z, 0.5), torch.tensor([-4 / 3, -1 / 30, 0.0, 0.2, 1.0])
    )
    assert torch.allclose(laplace_shrinkage(z, 0.1), torch.tensor([-1.9, 0.0, 0.0, 0.2, 1.4]))
    with pytest.raises(ValueError, match="unknown shrinkage"):
        FlowProx(make_glow(), shrinkage="cauchy")


def test_initial_estimate_is_the_prior_mode() -> None:
    prior = make_glow()
    model = flow_unrolled_network(prior, num_folds=2)
    _, y = measurement(Identity())
    x0 = model.initial(y, Identity())
    assert x0.shape == y.shape and torch.equal(x0[0], x0[1])
    # the mode of the prior is the image whose latent is 0
    z, _ = prior.eval()(x0)
    assert z.abs().max() < 1e-8


def test_data_fidelity_decreases_over_the_folds() -> None:
    op = GaussianBlur(1.5)
    mu = step_size_from_operator(op, (3, 8, 8))
    model = flow_unrolled_network(make_glow(), num_folds=4, mu_init=mu, lambda_init=0.01).double()
    _, y = measurement(op, sigma=0.0)
    with torch.no_grad():
        _, iterates = model(y, op, return_all=True)
    fidelity = [float((op.A(x) - y).square().sum()) for x in iterates]
    assert all(b < a for a, b in zip(fidelity, fidelity[1:], strict=False)), fidelity


def test_step_size_from_operator_is_inverse_squared_norm() -> None:
    assert step_size_from_operator(Identity(), (3, 8, 8)) == pytest.approx(1.0, rel=1e-6)
    assert step_size_from_operator(Mask.center_square(8, 8, 2), (3, 8, 8)) == pytest.approx(1.0)


def _cancelling_parameters(model: nn.Module) -> set[int]:
    """Parameters whose gradient is exactly zero under Gaussian shrinkage.

    The top level's per-channel scale ``s`` cancels in ``g(f(v) / (1 + lambda))``:
    ``((v - m) / s) / (1 + lambda) * s + m`` does not depend on ``s``.
    """
    return {id(m.log_sd) for m in model.modules() if isinstance(m, TopStandardize)}


def _assert_every_trainable_parameter_has_a_gradient(model: nn.Module) -> None:
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    for name, param in params:
        assert param.grad is not None, f"{name} received no gradient"
        assert torch.isfinite(param.grad).all(), name
    scale = torch.sqrt(sum(p.grad.square().sum() for _, p in params))
    cancelling = _cancelling_parameters(model)
    for name, param in params:
        if id(param) not in cancelling:
            assert param.grad.norm() > 1e-8 * scale, f"{name} has a vanishing gradient"


@pytest.mark.parametrize("tied", [False, True])
@pytest.mark.parametrize("shrink_last_fold", [False, True])
def test_every_parameter_of_the_flow_network_receives_a_gradient(
    tied: bool, shrink_last_fold: bool
) -> None:
    op = GaussianBlur(1.0)
    x, y = measurement(op)
    model = flow_unrolled_network(
        make_glow(), num_folds=3, tied=tied, shrink_last_fold=shrink_last_fold
    ).double()
    perturb_parameters_(model, 0.01, seed=5)  # move mu, lambda and zero-init convs off zero
    nn.functional.mse_loss(model(y, op), x).backward()
    _assert_every_trainable_parameter_has_a_gradient(model)
    assert model.mu.shape == (3,)
    assert model.lambda_.shape == ((3,) if shrink_last_fold else (2,))


def test_the_last_fold_without_shrinkage_is_the_gradient_step_and_holds_no_flow() -> None:
    _, y = measurement(Identity())
    model = flow_unrolled_network(make_glow(), num_folds=3).double()
    assert isinstance(model.proxes[-1], IdentityProx)
    assert all(isinstance(p, FlowProx) for p in model.proxes[:-1])
    with torch.no_grad():
        model.mu_raw[-1] = math.log(math.e - 1)  # mu_K = softplus(log(e - 1)) = 1
        _, iterates = model(y, Identity(), return_all=True)
    # with A = I and mu = 1 the gradient step lands on y: x - 1 (x - y) = y
    assert not torch.allclose(iterates[-2], y, atol=1e-3)
    assert torch.allclose(iterates[-1], y, atol=1e-12)


def test_folds_are_untied_copies_and_the_prior_is_untouched() -> None:
    prior = make_glow()
    before = copy.deepcopy(prior.state_dict())
    model = flow_unrolled_network(prior, num_folds=3, shrink_last_fold=True)
    flows = [prox.flow for prox in model.proxes]
    assert len({id(f) for f in flows}) == 3
    with torch.no_grad():
        next(flows[0].parameters()).add_(1.0)
    assert not torch.equal(next(flows[0].parameters()), next(flows[1].parameters()))
    for key, value in prior.state_dict().items():
        assert torch.equal(value, before[key])


def test_plug_and_play_trains_only_mu_and_lambda() -> None:
    op = Mask.center_square(8, 8, 3)
    x, y = measurement(op)
    model = flow_unrolled_network(make_glow(), num_folds=3, freeze_flow=True).double()
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"mu_raw", "lambda_raw"}
    nn.functional.mse_loss(model(y, op), x).backward()
    _assert_every_trainable_parameter_has_a_gradient(model)


def test_cnn_prox_network_parameters_receive_gradients() -> None:
    op = Identity()
    x, y = measurement(op)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 3, 3, padding=1))
    proxes = [NetworkProx(copy.deepcopy(net)) for _ in range(2)]
    # mu = 1 with A = I would overwrite fold 1 by y exactly: keep the step partial
    model = UnrolledProximalGradient(proxes, mu_init=0.5).double()
    nn.functional.mse_loss(model(y, op), x).backward()
    _assert_every_trainable_parameter_has_a_gradient(model)


@pytest.mark.parametrize("shrink_last_fold", [False, True])
def test_memory_saving_gradients_equal_autograd(shrink_last_fold: bool) -> None:
    """Float64, 2 folds, small Glow: every parameter's gradient to 1e-8 relative."""
    op = GaussianBlur(1.0)
    x, y = measurement(op)
    prior = make_glow(levels=2, steps=2, size=8)
    grads = {}
    for memory_saving in (False, True):
        model = flow_unrolled_network(
            prior, num_folds=2, memory_saving=memory_saving, shrink_last_fold=shrink_last_fold
        ).double()
        perturb_parameters_(model, 0.01, seed=9)
        model.train()
        nn.functional.mse_loss(model(y, op), x).backward()
        grads[memory_saving] = {n: p.grad.clone() for n, p in model.named_parameters()}
    assert grads[True].keys() == grads[False].keys()
    # a gradient that is zero in exact arithmetic (the top level's scale, see
    # _cancelling_parameters) is compared on the scale of the whole gradient
    scale = torch.sqrt(sum(g.square().sum() for g in grads[False].values()))
    for name, reference in grads[False].items():
        error = (grads[True][name] - reference).norm() / max(reference.norm(), 1e-6 * scale)
        assert error < 1e-8, f"{name}: relative error {error:.2e}"


def test_unrolled_network_rejects_bad_input() -> None:
    model = flow_unrolled_network(make_glow(), num_folds=2)
    with pytest.raises(ValueError, match="NaN"):
        model(torch.full((1, 3, 8, 8), float("nan"), dtype=torch.float64), Identity())
    with pytest.raises(ValueError, match="resize the images"):
        model(torch.rand(1, 3, 16, 16, dtype=torch.float64), Identity())
    with pytest.raises(ValueError, match="prior_mode"):
        UnrolledProximalGradient([NetworkProx(nn.Identity())], initial_estimate="prior_mode")
    with pytest.raises(ValueError, match="num_folds"):
        flow_unrolled_network(make_glow(), num_folds=0)


def _bytes_saved_for_backward(
    steps_per_level: int, memory_saving: bool, count_weights: bool = True
) -> tuple[int, int]:
    """Bytes autograd keeps for backward over a forward pass and loss of a 2-fold flow network
    (both folds shrink), with or without the weights it saves, and the bytes of one image
    batch."""
    op = GaussianBlur(1.0)
    x, y = measurement(op)
    prior = make_glow(levels=2, steps=steps_per_level, size=8)
    model = flow_unrolled_network(
        prior, num_folds=2, memory_saving=memory_saving, shrink_last_fold=True
    ).double()
    model.train()
    weights = {t.data_ptr() for t in (*model.parameters(), *model.buffers())}
    saved = 0

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        nonlocal saved
        if count_weights or tensor.data_ptr() not in weights:
            saved += tensor.numel() * tensor.element_size()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        loss = nn.functional.mse_loss(model(y, op), x)
    loss.backward()
    return saved, x.numel() * x.element_size()


def test_memory_saving_keeps_a_few_images_for_backward_whatever_the_depth() -> None:
    """With memory saving each flow keeps only its outputs: a few image-sized tensors per fold,
    the same for 2 and 4 steps per level; plain autograd keeps every layer's activations."""
    saving = {steps: _bytes_saved_for_backward(steps, True) for steps in (2, 4)}
    plain = {steps: _bytes_saved_for_backward(steps, False) for steps in (2, 4)}
    image_bytes = saving[2][1]
    assert saving[4][0] == saving[2][0]
    assert saving[2][0] < 2 * 10 * image_bytes  # 2 folds, under 10 image batches each
    assert plain[4][0] > 1.5 * plain[2][0]
    assert plain[2][0] > 10 * saving[2][0]


def test_activation_estimate_matches_what_plain_autograd_keeps() -> None:
    """``activation_bytes`` x flows is what a plain-autograd step of the
    network keeps (the data steps and the loss add a few image batches, nothing more)."""
    plain, image_bytes = _bytes_saved_for_backward(2, memory_saving=False, count_weights=False)
    prior = make_glow(levels=2, steps=2, size=8)
    estimate = activation_bytes(prior, (8, 8), 2) * 2  # 2 flows
    assert estimate <= plain <= estimate + 10 * image_bytes


def test_memory_saving_auto_turns_on_above_the_budget() -> None:
    """``model.memory_saving``: "auto" follows the measured activations against the budget;
    "on"/"off" (and the older true/false) are obeyed; anything else is a clear error."""
    prior = make_glow(levels=2, steps=2, size=8, dtype=torch.float32)
    per_step = activation_bytes(prior, (8, 8), 16) * 4  # 4 flows
    budget_gb = per_step / 2**30

    def config(**model):
        return UnrolledExperiment(
            model=UnrolledModelConfig(**model),
            data=DataConfig(resolution=8),
            train=UnrolledTrainConfig(batch_size=16),
        )

    assert not uses_memory_saving(config(memory_budget_gb=1.01 * budget_gb), prior)
    assert uses_memory_saving(config(memory_budget_gb=0.99 * budget_gb), prior)
    assert uses_memory_saving(config(memory_saving="on", memory_budget_gb=1e3), prior)
    assert not uses_memory_saving(config(memory_saving="off", memory_budget_gb=1e-9), prior)
    assert config(memory_saving=True).model.memory_saving == "on"
    assert config(memory_saving=False).model.memory_saving == "off"
    with pytest.raises(ValueError, match="model.memory_saving must be one of"):
        config(memory_saving="sometimes")


def test_the_multi_tensor_optimizer_and_clip_train_exactly_like_the_per_tensor_loop() -> None:
    """``make_unrolled_optimizer`` (foreach Adam) and the trainer's foreach gradient clip give
    the same weights bit for bit as Adam and the clip looping over the tensors."""
    op = Mask.center_square(8, 8, 3)
    x, y = measurement(op)
    x, y = x.float(), y.float()
    config = UnrolledExperiment()
    fast = flow_unrolled_network(make_glow(), num_folds=3)
    slow = copy.deepcopy(fast)
    start = copy.deepcopy(fast)
    fast_optimizer = make_unrolled_optimizer(fast, config)
    slow_groups = [
        {"params": group["params"], "lr": group["lr"]}
        for group in make_unrolled_optimizer(slow, config).param_groups
    ]
    train = config.train
    slow_optimizer = torch.optim.Adam(slow_groups, betas=train.betas, eps=train.eps, foreach=False)
    assert fast_optimizer.defaults["foreach"] is True
    for model, optimizer, foreach in ((fast, fast_optimizer, True), (slow, slow_optimizer, False)):
        for _ in range(4):
            optimizer.zero_grad(set_to_none=True)
            nn.functional.mse_loss(model(y, op), x).backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1e-3, foreach=foreach)
            optimizer.step()
    moved = 0
    for (name, a), b, a0 in zip(
        fast.named_parameters(), slow.parameters(), start.parameters(), strict=True
    ):
        assert torch.equal(a, b), name
        moved += int(not torch.equal(a, a0))
    assert moved > 10  # the flows, mu and lambda all trained
