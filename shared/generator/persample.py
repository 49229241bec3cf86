"""Exact per-example gradients from one batched backward pass ("hooks" method).

Why not ``vmap(grad(...))`` everywhere: on CPU, vmap runs the backward of GroupNorm and
SiLU as dozens of small decomposed ops and some convolutions as a per-example loop, which
costs far more than the batched backward pass (docs/benchmarks.md). Here the network runs
forward once on all ``B * K`` rows with forward hooks on every layer that owns parameters;
``torch.autograd.grad`` then returns the gradient of the loss with respect to each layer's
*output* (autograd skips the batched weight gradients, which nobody asked for), and each
example's parameter gradient is an einsum of the layer's input with that output gradient,
summed over the example's ``K`` rows:

* ``Conv2d``: one grouped weight-gradient convolution (examples as groups, their ``K``
  draws as its batch);
* ``Linear`` and 1x1 ``Conv2d``: input against output gradient, one batched matmul;
* ``GroupNorm``: the fused GroupNorm backward kernel, with every (row, channel) its own
  weight (see :func:`_layer_grads`);
* ``Embedding``: the output gradient scattered into the looked-up rows.

Rows are draw-major (row ``j * B + i`` is draw ``j`` of example ``i``), so the ``K`` draws
are a free view as the grouped convolution's batch; the loss of a row is its mean squared
error divided by ``K``, so the sum over an example's rows is the gradient of the example's
K-averaged loss: the sensitivity stays one example, not K (clipping K rows apart would let
one example move the sum by K times the clipping norm).

This is exact only when rows do not interact in the forward pass (no BatchNorm, no
attention across the batch) and every parameter lives in one of the four layer types
above; :class:`PerExampleGrads` refuses any other module that owns parameters, and a test
checks it against a per-example loop. Our UNet has no attention block, whose channels-last
outputs break Opacus's hook-based Conv2d grad sampler; the reshapes here copy whatever
strides come in.
"""

from __future__ import annotations

import torch
from diffusers import UNet2DModel
from torch import nn

from fedaug.generator.model import diffusion_target, forward_diffuse

__all__ = ["PerExampleGrads", "clip_factors"]

_SUPPORTED = (nn.Conv2d, nn.Linear, nn.GroupNorm, nn.Embedding)


def clip_factors(norms: torch.Tensor, max_grad_norm: float) -> torch.Tensor:
    """Opacus's per-example clip factor ``min(1, C / (||g|| + 1e-6))``: each clipped gradient
    has norm at most C, the sensitivity the Gaussian noise is sized for."""
    return (max_grad_norm / (norms + 1e-6)).clamp(max=1.0)


class PerExampleGrads:
    """Per-example gradients of a diffusion loss for a UNet, by layer hooks.

    Parameters
    ----------
    unet : UNet2DModel
        The model; hooks are registered once and only record inside :meth:`__call__`.

    Raises
    ------
    ValueError
        If a module owns parameters but is not one of Conv2d (zero padding, one group),
        Linear, GroupNorm or Embedding: its per-example gradient would be missing.
    """

    def __init__(self, unet: UNet2DModel) -> None:
        self.unet = unet
        self._layers: list[tuple[str, nn.Module]] = []
        for name, module in unet.named_modules():
            own = [p for p in module.parameters(recurse=False) if p.requires_grad]
            if not own:
                continue
            if not isinstance(module, _SUPPORTED):
                raise ValueError(
                    f"per-example gradients by hooks do not support {type(module).__name__} "
                    f"({name!r}); fedaug.generator.train.per_example_grads (vmap) handles "
                    "any layer, at about twice the cost")
            if isinstance(module, nn.Conv2d) and (module.groups != 1
                                                  or module.padding_mode != "zeros"):
                raise ValueError(f"conv {name!r} has groups={module.groups}, padding_mode="
                                 f"{module.padding_mode!r}; hooks need groups=1 and zeros")
            if isinstance(module, nn.Embedding) and (module.padding_idx is not None
                                                     or module.max_norm is not None):
                raise ValueError(f"embedding {name!r} has padding_idx or max_norm; "
                                 "hooks need a plain lookup table")
            self._layers.append((name, module))
        #: "layer.param" name -> parameter, for every parameter the hooks cover
        self._params = {f"{n}.{pn}": p for n, m in self._layers
                        for pn, p in m.named_parameters(recurse=False)}
        self._names = {id(p): name for name, p in self._params.items()}
        self._records: list[tuple[str, nn.Module, torch.Tensor, torch.Tensor]] | None = None
        self._handles = [m.register_forward_hook(self._make_hook(n)) for n, m in self._layers]

    def _make_hook(self, name: str):
        def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
            if self._records is not None:
                self._records.append((name, module, inputs[0].detach(), output))
        return hook

    def close(self) -> None:
        """Remove the hooks from the model."""
        for h in self._handles:
            h.remove()
        self._handles = []

    def __call__(self, x0: torch.Tensor, labels: torch.Tensor, noise: torch.Tensor,
                 t: torch.Tensor, alphas_cumprod: torch.Tensor, *,
                 prediction_type: str = "epsilon", chunk: int = 128
                 ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """Same contract as :func:`fedaug.generator.train.per_example_grads`.

        ``x0``/``noise`` are ``(B, K, C, H, W)``, ``t`` is ``(B, K)``; returns
        ``{name: (B, *param.shape)}`` and the ``(B,)`` K-averaged losses.
        """
        names = self._names
        out: dict[str, list[torch.Tensor]] = {n: [] for n in self._params}
        losses = []
        for s in range(0, x0.shape[0], chunk):
            g, loss = self._chunk(x0[s:s + chunk], labels[s:s + chunk], noise[s:s + chunk],
                                  t[s:s + chunk], alphas_cumprod, prediction_type)
            for k, v in g.items():
                out[names[k]].append(v)
            losses.append(loss)
        # a parameter no layer call touched (an unused branch) has a zero gradient
        return {k: torch.cat(v) if v else x0.new_zeros((x0.shape[0], *self._params[k].shape))
                for k, v in out.items()}, torch.cat(losses)

    def clipped_sum(self, x0: torch.Tensor, labels: torch.Tensor, noise: torch.Tensor,
                    t: torch.Tensor, alphas_cumprod: torch.Tensor, *, max_grad_norm: float,
                    prediction_type: str = "epsilon", chunk: int = 256, pad_to: int = 1
                    ) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
        """The sum over examples of each example's gradient clipped to ``max_grad_norm``.

        Clipping is per example, so it is done chunk by chunk: the per-example gradients of
        one chunk live only until their norms and their weighted sum are taken, and the
        ``(B, P)`` matrix of the whole batch is never built (at 8x8 copying it cost as much
        as the backward pass). The clip factor is Opacus's:
        ``min(1, C / (||g_b|| + 1e-6))``.

        ``pad_to`` > 1 pads the batch with all-zero rows to a multiple of it; a padding row's
        clip factor is zero, so it adds nothing (rows never interact, see the class). Poisson
        batches change size every step, and oneDNN builds new convolution kernels for every
        new shape; a few padded sizes are reused instead.

        Returns ``{name: summed clipped gradient (param.shape)}``, the ``(B,)`` K-averaged
        losses and the ``(B,)`` unclipped per-example gradient norms.
        """
        real = x0.shape[0]
        extra = -real % pad_to
        if extra:
            x0, noise, t = (torch.cat([v, v.new_zeros((extra, *v.shape[1:]))])
                            for v in (x0, noise, t))
            labels = torch.cat([labels, labels.new_zeros(extra)])
        names = self._names
        summed = {name: torch.zeros_like(p) for name, p in self._params.items()}
        losses, norms = [], []
        for s in range(0, x0.shape[0], chunk):
            g, loss = self._chunk(x0[s:s + chunk], labels[s:s + chunk], noise[s:s + chunk],
                                  t[s:s + chunk], alphas_cumprod, prediction_type)
            b = loss.shape[0]
            flat = [v.reshape(b, -1) for v in g.values()]
            norm = torch.stack([torch.linalg.vector_norm(v, dim=1) for v in flat]).norm(dim=0)
            factor = clip_factors(norm, max_grad_norm)
            factor[max(0, real - s):] = 0.0  # padding rows
            for pid, v in zip(g, flat, strict=True):
                summed[names[pid]] += (factor @ v).view_as(summed[names[pid]])
            losses.append(loss)
            norms.append(norm)
        return summed, torch.cat(losses)[:real], torch.cat(norms)[:real]

    def _chunk(self, x0, labels, noise, t, alphas, prediction_type):
        b, k = t.shape
        # draw-major rows: row j * b + i is draw j of example i
        rows = x0.transpose(0, 1).reshape(k * b, *x0.shape[2:])
        eps = noise.transpose(0, 1).reshape(k * b, *noise.shape[2:])
        tr = t.transpose(0, 1).reshape(-1)
        a = alphas[tr].view(-1, 1, 1, 1)
        noisy = forward_diffuse(rows, eps, a)
        self._records = []
        try:
            with torch.enable_grad():
                pred = self.unet(noisy, tr, class_labels=labels.repeat(k)).sample
                target = diffusion_target(prediction_type, rows, eps, a)
                row_loss = ((pred - target) ** 2).flatten(1).mean(1)
                outputs = [r[3] for r in self._records]
                grads_out = torch.autograd.grad(row_loss.sum() / k, outputs)
        finally:
            records, self._records = self._records, None
        acc: dict[int, torch.Tensor] = {}
        for (_, module, inp, _out), g in zip(records, grads_out, strict=True):
            for p, v in _layer_grads(module, inp, g.detach(), b, k):
                acc[id(p)] = acc[id(p)] + v if id(p) in acc else v
        return acc, row_loss.detach().view(k, b).mean(0)


def _outer_sum(go: torch.Tensor, ai: torch.Tensor) -> torch.Tensor:
    """``einsum("kbno,kbni->boi")`` as one batched matmul over examples: each example's
    output gradients (rows: its K draws times n positions) against its inputs."""
    k, b, n, o = go.shape
    i = ai.shape[-1]
    return torch.bmm(go.permute(1, 3, 0, 2).reshape(b, o, k * n),
                     ai.permute(1, 0, 2, 3).reshape(b, k * n, i))


def _layer_grads(module: nn.Module, a: torch.Tensor, g: torch.Tensor, b: int, k: int):
    """Yield ``(param, per-example grad (B, *param.shape))`` for one layer call whose input
    ``a`` and output gradient ``g`` have draw-major rows (row ``j * B + i``: draw j of
    example i)."""
    if isinstance(module, nn.Conv2d):
        _, cin, h, w = a.shape
        cout, h2, w2 = g.shape[1:]
        if module.weight.requires_grad and module.kernel_size == (1, 1) and \
                module.stride == (1, 1) and module.padding == (0, 0):
            # a 1x1 convolution is a linear map over channels (grouped 1x1 weight
            # gradients take a slow per-group path on CPU)
            wg = _outer_sum(g.reshape(k, b, cout, -1).transpose(2, 3),
                            a.reshape(k, b, cin, -1).transpose(2, 3))
            yield module.weight, wg.reshape(b, *module.weight.shape)
        elif module.weight.requires_grad:
            # The K draws are the convolution's batch and the B examples its groups (a free
            # view of draw-major rows): one grouped weight-gradient call sums each example's
            # draws and keeps the examples apart, as fast here as the plain weight gradient.
            wg = torch.nn.grad.conv2d_weight(
                a.reshape(k, b * cin, h, w), (b * cout, *module.weight.shape[1:]),
                g.reshape(k, b * cout, h2, w2), stride=module.stride, padding=module.padding,
                dilation=module.dilation, groups=b)
            yield module.weight, wg.view(b, *module.weight.shape)
        if module.bias is not None and module.bias.requires_grad:
            # positions first (a contiguous inner sum), then the K draws
            yield module.bias, g.sum(dim=(2, 3)).view(k, b, cout).sum(0)
    elif isinstance(module, nn.Linear):
        ai = a.reshape(k, b, -1, a.shape[-1])
        go = g.reshape(k, b, -1, g.shape[-1])
        if module.weight.requires_grad:
            yield module.weight, _outer_sum(go, ai)
        if module.bias is not None and module.bias.requires_grad:
            yield module.bias, go.sum(dim=(0, 2))
    elif isinstance(module, nn.GroupNorm):
        # GroupNorm over (N, C, HW) with G groups is GroupNorm over (1, N*C, HW) with N*G
        # groups, so the fused backward kernel returns one weight and one bias gradient per
        # (row, channel): every row's gradients in one call, without re-normalising by hand.
        n, c = a.shape[:2]
        hw = a[0, 0].numel()
        a1, g1 = a.reshape(1, n * c, hw), g.reshape(1, n * c, hw)
        groups = n * module.num_groups
        _, mean, rstd = torch.ops.aten.native_group_norm(a1, None, None, 1, n * c, hw, groups,
                                                         module.eps)
        want_w = module.weight is not None and module.weight.requires_grad
        want_b = module.bias is not None and module.bias.requires_grad
        _, gw, gb = torch.ops.aten.native_group_norm_backward(
            g1, a1, mean, rstd, a1.new_ones(n * c), 1, n * c, hw, groups,
            [False, want_w, want_b])
        if want_w:
            yield module.weight, gw.view(k, b, c).sum(0)
        if want_b:
            yield module.bias, gb.view(k, b, c).sum(0)
    elif isinstance(module, nn.Embedding):
        if module.weight.requires_grad:
            idx = a.reshape(k, b, -1)
            go = g.reshape(k, b, idx.shape[2], -1)
            w = torch.zeros((b, *module.weight.shape), dtype=g.dtype, device=g.device)
            rows = torch.arange(b, device=g.device).view(1, b, 1).expand_as(idx)
            w.index_put_((rows.reshape(-1), idx.reshape(-1)), go.reshape(-1, go.shape[-1]),
                         accumulate=True)
            yield module.weight, w
