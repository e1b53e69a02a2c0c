"""Tests of the forward operators and measurement noise (flowprox.physics)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F

from flowprox.physics.noise import gaussian_noise, measure
from flowprox.physics.operators import GaussianBlur, Identity, LinearOperator, Mask, gaussian_kernel

Builder = Callable[[int, int, int], LinearOperator]


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# Each builder makes an operator for images with C channels and size H x W.
OPERATORS: dict[str, Builder] = {
    "identity": lambda C, H, W: Identity(),
    "mask_center": lambda C, H, W: Mask.center_square(H, W, max(1, min(H, W) // 3)),
    "mask_random": lambda C, H, W: Mask.random_pixels(H, W, 0.4, generator=_gen(1)),
    "mask_per_channel": lambda C, H, W: Mask.random_pixels(
        H, W, 0.3, generator=_gen(2), channels=C
    ),
    "blur_circular_s1": lambda C, H, W: GaussianBlur(1.0),
    "blur_circular_s2.5_k7": lambda C, H, W: GaussianBlur(2.5, kernel_size=7),
    "blur_circular_s8_large": lambda C, H, W: GaussianBlur(8.0),  # 49 taps > image
    "blur_zero_s1": lambda C, H, W: GaussianBlur(1.0, boundary="zero"),
    "blur_zero_s8_large": lambda C, H, W: GaussianBlur(8.0, boundary="zero"),
}
SHAPES = [(2, 1, 37, 31), (2, 3, 37, 31), (2, 3, 16, 16)]


def _make(name: str, shape: tuple[int, ...]) -> LinearOperator:
    _, C, H, W = shape
    return OPERATORS[name](C, H, W)


def _dense(fn: Callable[[torch.Tensor], torch.Tensor], shape: tuple[int, ...]) -> torch.Tensor:
    """Matrix of a linear map on tensors of the given shape, built column by column."""
    n = 1
    for s in shape:
        n *= s
    columns = []
    for i in range(n):
        e = torch.zeros(n, dtype=torch.float64)
        e[i] = 1.0
        columns.append(fn(e.reshape(shape)).reshape(-1))
    return torch.stack(columns, dim=1)


# --- adjointness ---------------------------------------------------------------------------


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("name", list(OPERATORS))
def test_adjoint_identity(name: str, shape: tuple[int, ...]) -> None:
    op = _make(name, shape)
    g = _gen(0)
    x = torch.randn(shape, generator=g, dtype=torch.float64)
    y = torch.randn(op.measurement_shape(shape), generator=g, dtype=torch.float64)
    lhs = torch.sum(op.A(x) * y)
    rhs = torch.sum(x * op.A_adjoint(y))
    scale = torch.linalg.vector_norm(x) * torch.linalg.vector_norm(y)
    assert abs(float(lhs - rhs)) <= 1e-10 * float(scale)


@pytest.mark.parametrize("name", list(OPERATORS))
def test_adjoint_equals_autograd_vjp(name: str) -> None:
    shape = (2, 3, 37, 31)
    op = _make(name, shape)
    g = _gen(3)
    x = torch.randn(shape, generator=g, dtype=torch.float64)
    v = torch.randn(shape, generator=g, dtype=torch.float64)
    _, vjp = torch.autograd.functional.vjp(op.A, x, v)
    torch.testing.assert_close(op.A_adjoint(v), vjp, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("shape", [(1, 1, 5, 4), (1, 2, 5, 5)], ids=["1x1x5x4", "1x2x5x5"])
@pytest.mark.parametrize("name", list(OPERATORS))
def test_dense_adjoint_is_transpose(name: str, shape: tuple[int, ...]) -> None:
    op = _make(name, shape)
    M = _dense(op.A, shape)
    M_adjoint = _dense(op.A_adjoint, shape)
    torch.testing.assert_close(M_adjoint, M.T, rtol=0.0, atol=1e-12)
    M_normal = _dense(op.normal, shape)
    torch.testing.assert_close(M_normal, M.T @ M, rtol=0.0, atol=1e-12)


# --- the operators compute what they claim -------------------------------------------------


def _circular_conv_reference(x: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """y[r, s] = sum_(di, dj) k[di, dj] x[(r - di) mod H, (s - dj) mod W], taps centred at 0."""
    k = kernel.shape[-1]
    y = torch.zeros_like(x)
    for i in range(k):
        for j in range(k):
            y = y + kernel[i, j] * torch.roll(x, shifts=(i - k // 2, j - k // 2), dims=(-2, -1))
    return y


def _zero_conv_reference(x: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """y[r, s] = sum_(di, dj) k[di, dj] x[r - di, s - dj], with x = 0 outside the image."""
    k = kernel.shape[-1]
    H, W = x.shape[-2:]
    padded = F.pad(x, (k, k, k, k))
    y = torch.zeros_like(x)
    for i in range(k):
        for j in range(k):
            di, dj = i - k // 2, j - k // 2
            y = y + kernel[i, j] * padded[..., k - di : k - di + H, k - dj : k - dj + W]
    return y


@pytest.mark.parametrize("sigma_b", [0.7, 8.0])  # 8.0: the kernel (49 taps) wraps around
@pytest.mark.parametrize("shape", [(2, 3, 9, 7), (1, 1, 6, 8)])
def test_circular_blur_matches_direct_convolution(sigma_b: float, shape: tuple[int, ...]) -> None:
    op = GaussianBlur(sigma_b)
    # An asymmetric x makes a flipped or shifted kernel visible.
    x = torch.randn(shape, generator=_gen(4), dtype=torch.float64)
    expected = _circular_conv_reference(x, op.kernel)
    torch.testing.assert_close(op.A(x), expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("sigma_b", [0.7, 3.0])
def test_zero_blur_matches_direct_convolution(sigma_b: float) -> None:
    op = GaussianBlur(sigma_b, boundary="zero")
    x = torch.randn(2, 2, 9, 7, generator=_gen(5), dtype=torch.float64)
    expected = _zero_conv_reference(x, op.kernel)
    torch.testing.assert_close(op.A(x), expected, rtol=1e-12, atol=1e-12)


def test_gaussian_kernel_properties() -> None:
    op = GaussianBlur(5.0)
    assert op.kernel.shape == (31, 31)  # 2 * ceil(3 * 5) + 1
    assert abs(float(op.kernel.sum()) - 1.0) < 1e-12
    torch.testing.assert_close(op.kernel, op.kernel.T)
    torch.testing.assert_close(op.kernel, torch.flip(op.kernel, dims=(0,)))
    assert int(op.kernel.argmax()) == 15 * 31 + 15
    assert gaussian_kernel(1.0, kernel_size=3).shape == (3, 3)
    assert GaussianBlur(0.4).kernel.shape == (5, 5)


def test_mask_and_identity_apply() -> None:
    x = torch.rand(2, 3, 6, 5, generator=_gen(6))
    torch.testing.assert_close(Identity().A(x), x)
    mask = torch.zeros(6, 5)
    mask[2:, 1:] = 1
    op = Mask(mask)
    torch.testing.assert_close(op.A(x), x * mask)
    torch.testing.assert_close(op(x), op.A(x))
    torch.testing.assert_close(op.normal(x), op.A(x))
    assert op.mask.shape == (1, 6, 5)
    assert "mask" in op.state_dict()
    assert Mask(mask.bool()).mask.dtype == torch.float32
    per_channel = Mask(torch.stack([mask, 1 - mask, torch.ones(6, 5)]))
    torch.testing.assert_close(per_channel.A(x)[:, 1], x[:, 1] * (1 - mask))
    assert op.measurement_shape(x.shape) == tuple(x.shape)


# --- operator norm -------------------------------------------------------------------------


def test_norm_identity() -> None:
    assert Identity().norm_squared((3, 37, 31)) == pytest.approx(1.0, rel=1e-10)


@pytest.mark.parametrize(
    "op",
    [
        Mask.center_square(37, 31, 11),
        Mask.random_pixels(37, 31, 0.9, generator=_gen(7), channels=3),
        Mask(torch.eye(37, 31)),
    ],
    ids=["center", "random_per_channel", "diagonal"],
)
def test_norm_mask_is_one(op: Mask) -> None:
    assert op.norm_squared((2, 3, 37, 31)) == pytest.approx(1.0, rel=1e-10)


def test_norm_fully_masked_is_zero() -> None:
    assert Mask(torch.zeros(5, 4)).norm_squared((1, 5, 4)) == 0.0


@pytest.mark.parametrize("sigma_b", [2.0, 8.0])
def test_norm_circular_blur_is_max_spectrum(sigma_b: float) -> None:
    op = GaussianBlur(sigma_b)
    H, W = 37, 31
    delta = torch.zeros(1, 1, H, W, dtype=torch.float64)
    delta[..., 0, 0] = 1.0
    spectrum = torch.fft.fft2(op.A(delta))  # the wrapped, centred kernel's spectrum
    expected = float(spectrum.abs().max() ** 2)
    assert expected == pytest.approx(1.0, rel=1e-12)  # normalised positive kernel
    assert op.norm_squared((1, H, W), n_iter=2000) == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("sigma_b", [1.0, 3.0])
def test_norm_zero_blur_is_largest_singular_value(sigma_b: float) -> None:
    op = GaussianBlur(sigma_b, boundary="zero")
    shape = (1, 1, 8, 7)
    expected = float(torch.linalg.matrix_norm(_dense(op.A, shape), ord=2) ** 2)
    assert expected < 1.0  # mass is lost at the zero border
    estimate = op.norm_squared(shape[1:], n_iter=5000, tol=1e-14)
    assert estimate == pytest.approx(expected, rel=1e-8)


def test_norm_is_reproducible_and_validates_shape() -> None:
    op = GaussianBlur(1.0, boundary="zero")
    a = op.norm_squared((1, 9, 9), n_iter=5)
    b = op.norm_squared((1, 9, 9), n_iter=5)
    assert a == b
    with pytest.raises(ValueError, match=r"\(C, H, W\) or \(B, C, H, W\)"):
        op.norm_squared((9, 9))


# --- dtypes and devices --------------------------------------------------------------------


@pytest.mark.parametrize("name", list(OPERATORS))
def test_float32_matches_float64(name: str) -> None:
    shape = (2, 3, 37, 31)
    op = _make(name, shape)
    x64 = torch.rand(shape, generator=_gen(8), dtype=torch.float64)
    x32 = x64.float()
    y32 = op.A(x32)
    assert y32.dtype == torch.float32
    assert op.A_adjoint(y32).dtype == torch.float32
    torch.testing.assert_close(y32.double(), op.A(x64), rtol=0.0, atol=1e-5)
    torch.testing.assert_close(op.A_adjoint(x32).double(), op.A_adjoint(x64), rtol=0, atol=1e-5)


@pytest.mark.parametrize("name", list(OPERATORS))
def test_float32_operator_accepts_float64_input(name: str) -> None:
    shape = (1, 3, 16, 16)
    op = _make(name, shape).to(torch.float32)
    reference = _make(name, shape)
    x = torch.rand(shape, generator=_gen(9), dtype=torch.float64)
    y = op.A(x)
    assert y.dtype == torch.float64
    torch.testing.assert_close(y, reference.A(x), rtol=0.0, atol=1e-6)
    # The (still float32) operator stays exactly adjoint in float64 up to its rounded buffers.
    v = torch.randn(shape, generator=_gen(10), dtype=torch.float64)
    lhs, rhs = torch.sum(y * v), torch.sum(x * op.A_adjoint(v))
    assert abs(float(lhs - rhs)) <= 1e-10 * float(x.norm() * v.norm())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA is not available on this machine")
@pytest.mark.parametrize("name", list(OPERATORS))
def test_cuda(name: str) -> None:
    shape = (2, 3, 37, 31)
    op = _make(name, shape)
    x = torch.rand(shape, generator=_gen(11), dtype=torch.float64)
    v = torch.randn(shape, generator=_gen(12), dtype=torch.float64)
    # Buffers on the CPU, inputs on the GPU: cast lazily; then moved with .to("cuda").
    for operator in (op, _make(name, shape).to("cuda")):
        y = operator.A(x.cuda())
        assert y.device.type == "cuda"
        torch.testing.assert_close(y.cpu(), op.A(x), rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(
            operator.A_adjoint(v.cuda()).cpu(), op.A_adjoint(v), rtol=1e-10, atol=1e-10
        )
        assert operator.A(x.float().cuda()).dtype == torch.float32
    moved = _make(name, shape).to("cuda")
    assert moved.norm_squared(shape, n_iter=50) == pytest.approx(
        op.norm_squared(shape, n_iter=50), rel=1e-6
    )
    g = torch.Generator(device="cuda").manual_seed(0)
    y1 = measure(moved, x.cuda(), 0.1, generator=g)
    y2 = measure(moved, x.cuda(), 0.1, generator=torch.Generator(device="cuda").manual_seed(0))
    torch.testing.assert_close(y1, y2, rtol=0.0, atol=0.0)
    with pytest.raises(ValueError, match="generator is on"):
        measure(moved, x.cuda(), 0.1, generator=_gen(0))


# --- input validation ----------------------------------------------------------------------


@pytest.mark.parametrize("name", ["identity", "mask_center", "blur_circular_s1", "blur_zero_s1"])
def test_rejects_bad_inputs(name: str) -> None:
    op = _make(name, (1, 3, 8, 8))
    with pytest.raises(ValueError, match=r"got shape \(3, 8, 8\).*x\.unsqueeze\(0\)"):
        op.A(torch.rand(3, 8, 8))
    with pytest.raises(ValueError, match="y must be 4-D"):
        op.A_adjoint(torch.rand(8, 8))
    bad = torch.rand(1, 3, 8, 8)
    bad[0, 1, 2, 3] = float("nan")
    with pytest.raises(ValueError, match="NaN or Inf.*check the data"):
        op.A(bad)
    bad[0, 1, 2, 3] = float("inf")
    with pytest.raises(ValueError, match="NaN or Inf"):
        op.normal(bad)
    with pytest.raises(ValueError, match="NaN or Inf"):
        op.A_adjoint(bad)
    with pytest.raises(ValueError, match="floating-point"):
        op.A(torch.ones(1, 3, 8, 8, dtype=torch.uint8))
    with pytest.raises(ValueError, match="torch.Tensor"):
        op.A([[1.0]])


def test_mask_rejects_bad_masks_and_mismatched_inputs() -> None:
    op = Mask.center_square(8, 8, 2)
    with pytest.raises(ValueError, match=r"spatial shape \(8, 8\).*\(9, 8\)"):
        op.A(torch.rand(1, 3, 9, 8))
    per_channel = Mask(torch.ones(3, 8, 8))
    with pytest.raises(ValueError, match="mask has 3 channels but the input has 2"):
        per_channel.A(torch.rand(1, 2, 8, 8))
    with pytest.raises(ValueError, match="0 \\(missing\\) or 1 \\(observed\\)"):
        Mask(torch.full((8, 8), 0.5))
    with pytest.raises(ValueError, match="0 \\(missing\\) or 1"):
        Mask(torch.full((8, 8), float("nan")))
    with pytest.raises(ValueError, match="mask must have shape"):
        Mask(torch.ones(8))
    with pytest.raises(ValueError, match="mask must have shape"):
        Mask(torch.ones(2, 3, 8, 8))


@pytest.mark.parametrize("sigma_b", [0.0, -1.0, float("nan"), float("inf")])
def test_blur_rejects_bad_sigma(sigma_b: float) -> None:
    with pytest.raises(ValueError, match="sigma_b must be positive, got"):
        GaussianBlur(sigma_b)


@pytest.mark.parametrize("kernel_size", [4, 0, -3, 5.0])
def test_blur_rejects_bad_kernel_size(kernel_size: int) -> None:
    with pytest.raises(ValueError, match="kernel_size must be a positive odd int"):
        GaussianBlur(1.0, kernel_size=kernel_size)


def test_blur_rejects_unknown_boundary() -> None:
    with pytest.raises(ValueError, match=r"boundary must be one of \('circular', 'zero'\)"):
        GaussianBlur(1.0, boundary="reflect")


@pytest.mark.parametrize("fraction", [1.0, -0.1, 1.5, float("nan")])
def test_random_mask_rejects_bad_fraction(fraction: float) -> None:
    with pytest.raises(ValueError, match=r"fraction_missing must be in \[0, 1\)"):
        Mask.random_pixels(8, 8, fraction, generator=_gen(0))


@pytest.mark.parametrize("window", [0, -2, 9])
def test_center_mask_rejects_bad_window(window: int) -> None:
    with pytest.raises(ValueError, match="window must satisfy"):
        Mask.center_square(9, 8, window)


# --- mask geometry -------------------------------------------------------------------------


def test_center_mask_geometry_paper_setting() -> None:
    mask = Mask.center_square(64, 64, 19).mask
    assert mask.shape == (1, 64, 64)
    assert int((mask == 0).sum()) == 19 * 19
    # 64 - 19 = 45 is odd: 22 rows/columns of margin above/left, 23 below/right.
    assert bool((mask[0, 22:41, 22:41] == 0).all())
    assert bool(mask[0, 21, 22:41].eq(1).all()) and bool(mask[0, 41, 22:41].eq(1).all())
    assert bool(mask[0, 22:41, 21].eq(1).all()) and bool(mask[0, 22:41, 41].eq(1).all())


@pytest.mark.parametrize(("H", "W", "window"), [(9, 9, 3), (10, 7, 3), (5, 4, 4), (6, 6, 6)])
def test_center_mask_is_centred(H: int, W: int, window: int) -> None:
    mask = Mask.center_square(H, W, window).mask[0]
    assert int((mask == 0).sum()) == window * window
    rows = torch.nonzero((mask == 0).any(dim=1)).flatten()
    cols = torch.nonzero((mask == 0).any(dim=0)).flatten()
    top, bottom = int(rows[0]), H - 1 - int(rows[-1])
    left, right = int(cols[0]), W - 1 - int(cols[-1])
    assert bottom - top in (0, 1) and right - left in (0, 1)  # extra margin goes bottom/right
    assert top == (H - window) // 2 and left == (W - window) // 2


def test_random_mask_count_and_reproducibility() -> None:
    H, W, fraction = 37, 31, 0.37
    expected_missing = round(fraction * H * W)
    a = Mask.random_pixels(H, W, fraction, generator=_gen(123)).mask
    b = Mask.random_pixels(H, W, fraction, generator=_gen(123)).mask
    c = Mask.random_pixels(H, W, fraction, generator=_gen(124)).mask
    assert a.shape == (1, H, W)
    assert int((a == 0).sum()) == expected_missing
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    per_channel = Mask.random_pixels(H, W, fraction, generator=_gen(5), channels=3).mask
    assert per_channel.shape == (3, H, W)
    assert ((per_channel == 0).sum(dim=(1, 2)) == expected_missing).all()
    assert not torch.equal(per_channel[0], per_channel[1])
    assert int((Mask.random_pixels(H, W, 0.0).mask == 0).sum()) == 0


# --- noise ---------------------------------------------------------------------------------


def test_measure_same_seed_gives_identical_measurements() -> None:
    op = GaussianBlur(2.0)
    x = torch.rand(2, 3, 16, 16, generator=_gen(0))
    y1 = measure(op, x, 0.2, generator=_gen(42))
    y2 = measure(op, x, 0.2, generator=_gen(42))
    y3 = measure(op, x, 0.2, generator=_gen(43))
    assert torch.equal(y1, y2)
    assert not torch.equal(y1, y3)
    assert torch.equal(measure(op, x, 0.0, generator=_gen(42)), op.A(x))
    noise = y1 - op.A(x)
    assert 0.15 < float(noise.std()) < 0.25


def test_gaussian_noise_statistics() -> None:
    n = gaussian_noise((1000, 1000), 0.3, generator=_gen(1))
    assert n.shape == (1000, 1000) and n.dtype == torch.float32
    assert float(n.std()) == pytest.approx(0.3, rel=5e-3)
    assert abs(float(n.mean())) < 3e-3
    like = torch.zeros(2, 3, 4, 5, dtype=torch.float64)
    m = gaussian_noise(like, 1.0, generator=_gen(1))
    assert m.shape == like.shape and m.dtype == torch.float64
    assert torch.equal(gaussian_noise(like, 0.0), like)


@pytest.mark.parametrize("sigma", [-0.1, float("nan"), float("inf")])
def test_noise_rejects_bad_sigma(sigma: float) -> None:
    with pytest.raises(ValueError, match="sigma must be finite and >= 0"):
        gaussian_noise((2, 2), sigma)
    with pytest.raises(ValueError, match="sigma_n must be finite and >= 0"):
        measure(Identity(), torch.rand(1, 1, 2, 2), sigma)
