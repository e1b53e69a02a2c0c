"""Memory-saving backpropagation through a chain of invertible layers.

Plain autograd keeps every layer's internal activations until the backward pass, so memory grows
with flow depth. Here a chain ``h_n = f_n(...f_1(h_0))`` runs without recording a graph and keeps
only its output ``h_n``. During backward the layers are visited in reverse: each input
``h_{i-1} = f_i^{-1}(h_i)`` is recovered with the exact inverse, the layer alone is re-run with
autograd to get its vector-Jacobian products, and its activations are freed before the next one
(Gomez et al. 2017; Putzky and Welling 2019, "Invert to learn to invert"). Peak memory is one
layer's activations plus the chain's output, whatever the depth; gradients equal plain
autograd's up to the round-off of the inversion.

The same machinery runs the chain in the inverse direction (latent to data), where the roles of
``forward`` and ``inverse`` swap.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from flowprox.flows.base import InvertibleModule
from flowprox.flows.layers import data_init_suspended


def _apply(layer: InvertibleModule, h: Tensor, reverse: bool) -> tuple[Tensor, Tensor | None]:
    """One layer in the chain's direction: ``forward`` (with logdet) or ``inverse`` (without)."""
    if reverse:
        return layer.inverse(h), None
    return layer(h)


def _undo(layer: InvertibleModule, h: Tensor, reverse: bool) -> Tensor:
    """Recover a layer's input from its output."""
    return layer(h)[0] if reverse else layer.inverse(h)


class _InvertibleChain(torch.autograd.Function):
    """``(h_out, logdet) = chain(h_in)`` storing only ``h_out``; see the module docstring."""

    @staticmethod
    def forward(ctx, layers, reverse, params, h, *flat_params):  # noqa: ARG004
        ctx.layers = layers
        ctx.reverse = reverse
        ctx.params = params
        with torch.no_grad():
            logdet = h.new_zeros(h.shape[0])
            for layer in layers:
                h, layer_logdet = _apply(layer, h, reverse)
                if layer_logdet is not None:
                    logdet = logdet + layer_logdet
        ctx.save_for_backward(h)
        if reverse:
            ctx.mark_non_differentiable(logdet)
        return h, logdet

    @staticmethod
    def backward(ctx, grad_h, grad_logdet):
        (h,) = ctx.saved_tensors
        param_grads: dict[int, Tensor] = {}
        with data_init_suspended():
            for layer in reversed(ctx.layers):
                with torch.no_grad():
                    h_in = _undo(layer, h, ctx.reverse)
                layer_params = [p for p in layer.parameters() if p.requires_grad]
                with torch.enable_grad():
                    h_in = h_in.detach().requires_grad_(True)
                    out, layer_logdet = _apply(layer, h_in, ctx.reverse)
                    outputs, grads_out = [out], [grad_h]
                    if layer_logdet is not None and layer_logdet.requires_grad:
                        outputs.append(layer_logdet)
                        grads_out.append(grad_logdet)
                    grads = torch.autograd.grad(
                        outputs, [h_in, *layer_params], grads_out, allow_unused=True
                    )
                grad_h = grads[0]
                for param, grad in zip(layer_params, grads[1:], strict=True):
                    if grad is not None:
                        key = id(param)
                        param_grads[key] = grad + param_grads[key] if key in param_grads else grad
                h = h_in.detach()
        return (None, None, None, grad_h, *(param_grads.get(id(p)) for p in ctx.params))


def invertible_chain(
    layers: Sequence[InvertibleModule], h: Tensor, reverse: bool = False
) -> tuple[Tensor, Tensor]:
    """Run ``layers`` on ``h`` with memory-saving backprop.

    Args:
        layers: elementary invertible layers, in ``forward`` order.
        h: the input, ``(B, C, H, W)``: data-side when ``reverse`` is False, else latent-side.
        reverse: False runs ``forward`` through the layers in order (data to latent); True runs
            ``inverse`` through them in reverse order (latent to data).

    Returns:
        ``(output, logdet)`` with ``logdet`` of shape ``(B,)`` (zeros and non-differentiable
        when ``reverse`` is True).
    """
    ordered = list(reversed(layers)) if reverse else list(layers)
    params = _unique_trainable_parameters(ordered)
    return _InvertibleChain.apply(ordered, reverse, params, h, *params)


def _unique_trainable_parameters(layers: Sequence[nn.Module]) -> list[nn.Parameter]:
    seen: set[int] = set()
    params: list[nn.Parameter] = []
    for layer in layers:
        for p in layer.parameters():
            if p.requires_grad and id(p) not in seen:
                seen.add(id(p))
                params.append(p)
    return params


def activation_bytes(flow: nn.Module, image_size: tuple[int, int], batch_size: int) -> int:
    """Bytes plain autograd keeps for backward over one flow prox, ``g(f(v) / 2)``, for a batch.

    Measured, not modelled: batches of one and two images of ``image_size`` go through the
    flow's ``forward`` and ``inverse`` while ``torch.autograd.graph.saved_tensors_hooks`` adds up
    the tensors autograd saves, weights aside (a tensor saved twice counts twice, so this errs
    high). The difference is the cost of one more image; the rest (weights derived per call, as
    the 1x1 convolution's matrix) does not grow with the batch.
    """
    one, two = (_saved_bytes(flow, image_size, n) for n in (1, 2))
    return one + (batch_size - 1) * (two - one)


def _saved_bytes(flow: nn.Module, image_size: tuple[int, int], batch_size: int) -> int:
    """Bytes saved for backward (weights aside) over ``g(f(v) / 2)`` for ``batch_size`` images."""
    parameter = next(flow.parameters())
    shape = (batch_size, flow.in_channels, *image_size)
    v = torch.full(shape, 0.5, dtype=parameter.dtype, device=parameter.device)
    weights = {p.data_ptr() for p in flow.parameters()} | {b.data_ptr() for b in flow.buffers()}
    saved = 0

    def count(tensor: Tensor) -> Tensor:
        nonlocal saved
        if tensor.data_ptr() not in weights:  # a weight is kept anyway, once, whatever the batch
            saved += tensor.numel() * tensor.element_size()
        return tensor

    was_training = flow.training
    flow.eval()
    try:
        with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(count, lambda t: t):
            z, _ = flow(v.requires_grad_(True))
            flow.inverse(z / 2, image_size=image_size)
    finally:
        flow.train(was_training)
    return saved
