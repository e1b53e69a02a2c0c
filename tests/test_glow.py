"""The multi-scale Glow: round trips, log-determinant, sampling, bits/dim and bad input."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import make_glow, smooth_images

from flowprox.flows import Glow, dequantize, quantize


@pytest.mark.parametrize(("dtype", "tol"), [(torch.float32, 1e-5), (torch.float64, 1e-10)])
@pytest.mark.parametrize("lambda_", [0.0, 0.1, 1.0])
def test_glow_round_trip_including_shrunk_latents(dtype, tol, lambda_) -> None:
    glow = make_glow(levels=3, steps=2, size=16, dtype=dtype).eval()
    x = smooth_images(4, 3, 16, seed=7).to(dtype)
    z, _ = glow(x)
    assert z.shape == (4, 3 * 16 * 16)
    assert torch.allclose(glow.inverse(z), x, atol=tol, rtol=0)
    z_shrunk = z / (1.0 + lambda_)
    assert torch.allclose(glow(glow.inverse(z_shrunk))[0], z_shrunk, atol=tol * 10, rtol=0)


def test_glow_round_trip_from_the_latent_side() -> None:
    glow = make_glow(levels=2, steps=3, size=8).eval()
    z = torch.randn(3, glow.latent_dim(), dtype=torch.float64)
    assert torch.allclose(glow(glow.inverse(z))[0], z, atol=1e-10, rtol=0)


def test_every_level_is_used_by_the_inverse() -> None:
    glow = make_glow(levels=3, steps=1, size=8).eval()
    z, _ = glow(smooth_images(2, 3, 8).double())
    parts = glow.split_latent(z)
    assert [tuple(p.shape[1:]) for p in parts] == [(6, 4, 4), (12, 2, 2), (48, 1, 1)]
    for index in range(3):
        changed = [p.clone() for p in parts]
        changed[index] = changed[index] + 0.1
        x_changed = glow.inverse(torch.cat([p.flatten(1) for p in changed], dim=1))
        assert not torch.allclose(x_changed, glow.inverse(z))


def test_glow_logdet_matches_float64_jacobian() -> None:
    glow = make_glow(channels=3, levels=2, steps=2, hidden=8, size=4).eval()
    x = smooth_images(1, 3, 4, seed=3).double()

    def flat(v: torch.Tensor) -> torch.Tensor:
        return glow(v.view_as(x))[0].flatten()

    jacobian = torch.func.jacrev(flat)(x.flatten())
    assert jacobian.shape == (48, 48)
    _, expected = torch.linalg.slogdet(jacobian)
    _, logdet = glow(x)
    assert torch.allclose(logdet, expected.reshape(1), atol=1e-8, rtol=1e-9)


def test_log_prob_is_standard_normal_density_plus_logdet() -> None:
    glow = make_glow().eval()
    x = smooth_images(3, 3, 8).double()
    z, logdet = glow(x)
    normal = torch.distributions.Normal(0.0, 1.0).log_prob(z).sum(dim=1)
    assert torch.allclose(glow.log_prob(x), normal + logdet)


def test_sample_at_temperature_zero_is_the_inverse_of_zero() -> None:
    glow = make_glow().eval()
    samples = glow.sample(2, temperature=0.0)
    mode = glow.inverse(torch.zeros(1, glow.latent_dim(), dtype=torch.float64))
    assert torch.allclose(samples, mode.expand_as(samples), atol=1e-12)
    generator = torch.Generator().manual_seed(0)
    hot = glow.sample(2, temperature=0.7, generator=generator)
    assert hot.shape == (2, 3, 8, 8) and not torch.allclose(hot[0], hot[1])


@pytest.mark.parametrize("n_bits", [8, 5])
def test_bits_per_dim_at_initialisation_is_that_of_the_gaussian_the_flow_models(
    n_bits: int,
) -> None:
    """A fresh Glow is affine, ``z = W x + c`` (every coupling network outputs 0), so it models
    the Gaussian ``p(x) = N(W x + c; 0, I) |det W|``. A bin of side ``2^-n`` around the midpoint
    ``x_mid`` has probability ``~ p(x_mid) 2^(-n D)``: ``n - log2 p(x_mid) / D`` bits/dim."""
    glow = Glow(3, 2, 2, 16, image_size=8).double()
    x = torch.round(smooth_images(8, 3, 8, seed=2).double() * 255) / 255  # 8-bit images
    glow.train()
    with torch.no_grad():
        glow(x)  # ActNorm's data-dependent initialisation
    glow.eval()
    bins = torch.floor(torch.round(x * 255) / 2 ** (8 - n_bits))  # the n-bit bin of each value
    x_mid = (bins + 0.5) / 2**n_bits
    d = x[0].numel()

    def flow(v: torch.Tensor) -> torch.Tensor:
        return glow(v.view(1, 3, 8, 8))[0].flatten()

    W = torch.autograd.functional.jacobian(flow, x_mid[0].flatten())
    assert torch.allclose(
        torch.autograd.functional.jacobian(flow, x_mid[1].flatten()), W, atol=1e-12
    )  # affine: the same Jacobian everywhere
    with torch.no_grad():
        z, _ = glow(x_mid)
        log_density = (
            -0.5 * z.square().sum(dim=1)
            - 0.5 * d * math.log(2 * math.pi)
            + torch.linalg.slogdet(W).logabsdet
        )
        expected = n_bits - log_density / (d * math.log(2))
        bpd = glow.bits_per_dim(x, n_bits=n_bits, dequantize_noise=False)
    assert torch.allclose(bpd, expected, rtol=0, atol=1e-9)


def test_quantize_and_dequantize_bins() -> None:
    x = torch.tensor([0.0, 1.0 / 255, 128 / 255, 1.0]).view(1, 1, 2, 2)
    assert quantize(x, 8).flatten().tolist() == [0.0, 1.0, 128.0, 255.0]
    assert quantize(x, 5).flatten().tolist() == [0.0, 0.0, 16.0, 31.0]
    deq = dequantize(x, 5, noise=True, generator=torch.Generator().manual_seed(0))
    k = quantize(x, 5)
    assert torch.all(deq >= k / 32) and torch.all(deq < (k + 1) / 32)
    with pytest.raises(ValueError, match="n_bits"):
        quantize(x, 9)


def test_memory_saving_glow_matches_autograd_in_both_directions() -> None:
    reference = make_glow(levels=2, steps=2, size=8).train()
    saving = make_glow(levels=2, steps=2, size=8).train()
    x = smooth_images(2, 3, 8, seed=4).double().requires_grad_(True)
    for glow, memory_saving in ((reference, False), (saving, True)):
        z, logdet = glow(x, memory_saving=memory_saving)
        x_back = glow.inverse(z * 0.8, memory_saving=memory_saving)
        loss = x_back.square().sum() + 0.01 * logdet.sum()
        loss.backward()
    for (name, p_ref), (_, p_save) in zip(
        reference.named_parameters(), saving.named_parameters(), strict=True
    ):
        assert torch.allclose(p_save.grad, p_ref.grad, rtol=1e-8, atol=1e-12), name


@pytest.mark.parametrize(
    ("x", "match"),
    [
        (torch.rand(3, 8, 8), r"4-D, got shape \(3, 8, 8\)"),
        (torch.rand(1, 1, 8, 8), "channels"),
        (torch.rand(1, 3, 10, 8), "divisible by 4"),
        (torch.full((1, 3, 8, 8), float("nan")), "NaN"),
    ],
)
def test_glow_rejects_bad_input(x: torch.Tensor, match: str) -> None:
    glow = Glow(3, 2, 1, 8, image_size=8)
    with pytest.raises(ValueError, match=match):
        glow(x)


def test_glow_rejects_bad_configuration() -> None:
    with pytest.raises(ValueError, match="multiples of 2\\*\\*levels"):
        Glow(3, 3, 1, 8, image_size=12)
    with pytest.raises(ValueError, match="levels must be a positive integer"):
        Glow(3, 0, 1, 8)
    glow = Glow(3, 2, 1, 8, image_size=8)
    with pytest.raises(ValueError, match="latent z must have shape"):
        glow.inverse(torch.zeros(1, 10))
