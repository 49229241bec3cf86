"""The generator: exact per-example gradients, per-example clipping, training, sampling, I/O."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler, UNet2DModel
from opacus.optimizers import DPOptimizer
from PIL import Image

from fedaug.config import PREDICTION_TYPES
from fedaug.errors import ConfigError
from fedaug.generator import (
    GeneratorConfig,
    build_train_scheduler,
    build_unet,
    diffusion_loss,
    per_example_grads,
    sample_images,
    sample_rate_for,
    save_generator,
    to_uint8,
    train_dp,
    train_nondp,
)
from fedaug.generator import model as model_module
from fedaug.generator.generate import generate_to_folder
from fedaug.generator.model import diffusion_target, scheduler_output, scheduler_prediction_type
from fedaug.generator.persample import PerExampleGrads
from fedaug.generator.train import noisy_mean_gradient
from fedaug.privacy import NoiseSource

CFG = GeneratorConfig(image_size=8, channels=1, num_classes=3, block_out_channels=(8, 16))


def _model(seed: int = 0) -> tuple[UNet2DModel, DDPMScheduler]:
    torch.manual_seed(seed)
    return build_unet(CFG), build_train_scheduler(CFG)


def _draws(b: int, k: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x0 = torch.rand((b, k, 1, 8, 8), generator=g) * 2 - 1
    noise = torch.randn((b, k, 1, 8, 8), generator=g)
    t = torch.randint(0, 1000, (b, k), generator=g)
    y = torch.randint(0, 3, (b,), generator=g)
    return x0, y, noise, t


@pytest.mark.parametrize("method", ["vmap", "hooks"])
@pytest.mark.parametrize("prediction", PREDICTION_TYPES)
def test_per_example_grads_equal_naive_backward_with_noise_multiplicity(prediction, method):
    # Prepare
    unet, sched = _model()
    alphas = sched.alphas_cumprod.float()
    x0, y, noise, t = _draws(b=3, k=4)
    # Execute: the vmap reference and the layer hooks train_dp uses (chunk 2: two chunks)
    if method == "vmap":
        grads, losses = per_example_grads(unet, x0, y, noise, t, alphas,
                                          prediction_type=prediction)
    else:
        hooks = PerExampleGrads(unet)
        grads, losses = hooks(x0, y, noise, t, alphas, prediction_type=prediction, chunk=2)
        hooks.close()
    assert set(grads) == {n for n, _ in unet.named_parameters()}
    # Assert: one row per EXAMPLE (not per draw), equal to the gradient of its K-mean loss
    for name, g in grads.items():
        assert g.shape[0] == 3, name
    for i in range(3):
        unet.zero_grad()
        loss = diffusion_loss(unet, x0[i], y[i].repeat(4), noise[i], t[i], alphas,
                              prediction_type=prediction)
        loss.backward()
        assert float(losses[i]) == pytest.approx(loss.item(), rel=1e-5)
        for name, p in unet.named_parameters():
            torch.testing.assert_close(grads[name][i], p.grad, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("prediction", PREDICTION_TYPES)
def test_diffusion_target_is_what_the_diffusers_scheduler_reads(prediction):
    # Prepare: the scheduler's own forward process and, for v, its get_velocity
    sched = build_train_scheduler(GeneratorConfig(image_size=8, channels=1, num_classes=2,
                                                  prediction_type=prediction))
    reader = DDPMScheduler.from_config(sched.config,
                                       prediction_type=scheduler_prediction_type(prediction))
    gen = torch.Generator().manual_seed(0)
    x0 = torch.rand((4, 1, 8, 8), generator=gen) * 2 - 1
    noise = torch.randn((4, 1, 8, 8), generator=gen)
    t = torch.tensor([10, 200, 500, 900])
    a = sched.alphas_cumprod[t].view(-1, 1, 1, 1)
    # Execute: the target, then diffusers' x0 recovered from a perfect prediction of it
    target = diffusion_target(prediction, x0, noise, a)
    noisy = sched.add_noise(x0, noise, t)
    output = scheduler_output(prediction, target, noisy, a)
    x0_hat = torch.stack([reader.step(output[i:i + 1], int(t[i]), noisy[i:i + 1])
                          .pred_original_sample[0] for i in range(4)])
    # Assert
    torch.testing.assert_close(x0_hat, x0.clamp(-1, 1), atol=1e-4, rtol=1e-4)
    if prediction == "v_prediction":
        torch.testing.assert_close(target, sched.get_velocity(x0, noise, t))


def test_edm_target_has_unit_scale_and_is_minus_v_at_sigma_data_one(monkeypatch):
    # Prepare: data of EDM's scale (std 0.5) at every noise level of the schedule
    sched = build_train_scheduler(GeneratorConfig(image_size=8, channels=1, num_classes=2))
    gen = torch.Generator().manual_seed(0)
    t = torch.arange(0, 1000, 50)
    x0 = torch.randn((len(t), 1, 64, 64), generator=gen) * 0.5
    noise = torch.randn(x0.shape, generator=gen)
    a = sched.alphas_cumprod[t].view(-1, 1, 1, 1)
    # Execute
    std = diffusion_target("edm", x0, noise, a).std(dim=(1, 2, 3))
    monkeypatch.setattr(model_module, "EDM_SIGMA_DATA", 1.0)
    at_one = diffusion_target("edm", x0, noise, a)
    # Assert: unit scale at low, middle and high noise alike; sigma_data 1 is v-prediction
    torch.testing.assert_close(std, torch.ones_like(std), atol=0.05, rtol=0)
    torch.testing.assert_close(at_one, -sched.get_velocity(x0, noise, t))


def test_hooks_refuse_a_layer_they_cannot_split_per_example():
    unet, _ = _model()
    unet.mid_block.add_module("bn", torch.nn.BatchNorm2d(16))  # mixes examples: not exact
    with pytest.raises(ValueError, match="BatchNorm2d"):
        PerExampleGrads(unet)


def test_hooks_give_a_layer_the_forward_never_calls_a_zero_gradient():
    unet, sched = _model()
    unet.add_module("unused", torch.nn.Linear(3, 2))
    x0, y, noise, t = _draws(b=2, k=2)
    hooks = PerExampleGrads(unet)
    grads, _ = hooks(x0, y, noise, t, sched.alphas_cumprod.float())
    hooks.close()
    assert grads["unused.weight"].shape == (2, 2, 3)
    assert not grads["unused.weight"].any() and not grads["unused.bias"].any()
    assert grads["conv_in.weight"].any()


def _reference_grads(b: int, k: int, seed: int):
    """Per-example gradients (vmap reference) of a fresh model, its parameters and names."""
    unet, sched = _model()
    x0, y, noise, t = _draws(b=b, k=k, seed=seed)
    grads, _ = per_example_grads(unet, x0, y, noise, t, sched.alphas_cumprod.float())
    return grads, list(unet.parameters()), [n for n, _ in unet.named_parameters()]


@pytest.mark.parametrize("pad_to", [1, 4])
def test_clipped_sum_and_noise_match_opacus_dpoptimizer(pad_to):
    # Prepare: Opacus's DPOptimizer on the vmap reference per-example gradients, no noise
    unet, sched = _model()
    alphas = sched.alphas_cumprod.float()
    x0, y, noise, t = _draws(b=6, k=2, seed=3)
    grads, _ = per_example_grads(unet, x0, y, noise, t, alphas)
    names, params = zip(*unet.named_parameters(), strict=True)
    norms = torch.stack([torch.cat([grads[n][i].flatten() for n in names]).norm()
                         for i in range(6)])
    clip = float(norms.median())  # half the examples are clipped, half are not
    opt = DPOptimizer(torch.optim.SGD(params, lr=0.0), noise_multiplier=0.0,
                      max_grad_norm=clip, expected_batch_size=6)
    for n, p in zip(names, params, strict=True):
        p.grad_sample = grads[n].clone()
    opt.step()
    expected = torch.cat([p.grad.flatten() for p in params]).clone()
    opt.zero_grad()
    # Execute: the hooks' clipped sum in two chunks (with pad_to 4: two padding rows), then
    # the Gaussian mechanism
    hooks = PerExampleGrads(unet)
    summed, losses, our_norms = hooks.clipped_sum(x0, y, noise, t, alphas, max_grad_norm=clip,
                                                  chunk=4, pad_to=pad_to)
    hooks.close()
    parts = [summed[n] for n in names]
    clean = torch.cat([g.flatten() for g in noisy_mean_gradient(
        parts, noise_multiplier=0.0, max_grad_norm=clip, expected_batch_size=6,
        noise=NoiseSource.for_tests(0))])
    # Assert: without noise, the same clipped mean; one norm and one loss per real example
    torch.testing.assert_close(clean, expected, atol=1e-7, rtol=1e-4)
    torch.testing.assert_close(our_norms, norms, atol=1e-6, rtol=1e-4)
    assert losses.shape == (6,)
    # with noise, the same noise scale sigma * C / B on every coordinate
    sigma = 2.0
    noisy = torch.cat([g.flatten() for g in noisy_mean_gradient(
        parts, noise_multiplier=sigma, max_grad_norm=clip, expected_batch_size=6,
        noise=NoiseSource())])
    residual = noisy - clean
    assert float(residual.std()) == pytest.approx(sigma * clip / 6, rel=0.03)
    assert abs(float(residual.mean())) < 0.03 * sigma * clip / 6


def test_clipping_is_per_example_not_per_draw():
    # Prepare: per-example gradients of K=4 draws, handed to Opacus's DPOptimizer, no noise
    grads, params, names = _reference_grads(b=5, k=4, seed=1)
    clip = 1e-3  # far below every per-example norm: each example contributes exactly C
    opt = DPOptimizer(torch.optim.SGD(params, lr=0.0), noise_multiplier=0.0, max_grad_norm=clip,
                      expected_batch_size=5)
    for n, p in zip(names, params, strict=True):
        p.grad_sample = grads[n].clone()
    # Execute
    opt.step()
    # Assert: the summed gradient has norm <= 5 * C / 5 = C (five examples of norm C each,
    # averaged over the expected batch); clipping 20 draw-rows would allow 4x that.
    flat = torch.cat([p.grad.flatten() for p in params])
    row_norms = torch.stack([torch.cat([grads[n][i].flatten() for n in names]).norm()
                             for i in range(5)])
    assert bool((row_norms > clip).all())
    expected = sum(torch.cat([grads[n][i].flatten() for n in names]) * (clip / row_norms[i])
                   for i in range(5)) / 5
    torch.testing.assert_close(flat, expected, atol=1e-9, rtol=1e-4)
    assert float(flat.norm()) <= clip + 1e-9


def test_train_dp_changes_weights_and_counts_steps():
    unet, sched = _model()
    before = [p.detach().clone() for p in unet.parameters()]
    images = torch.rand(40, 1, 8, 8) * 2 - 1
    labels = torch.randint(0, 3, (40,))
    q = sample_rate_for(40, 10)
    out = train_dp(unet, sched, images, labels, steps=2, sample_rate=q, noise_multiplier=1.0,
                   max_grad_norm=1.0, learning_rate=1e-3, noise_multiplicity=2,
                   expected_batch_size=q * 40, noise=NoiseSource())
    assert out.steps == 2
    assert np.isfinite(out.loss)
    assert any(not torch.equal(a, b) for a, b in zip(before, unet.parameters(), strict=True))
    assert all(getattr(p, "grad_sample", None) is None for p in unet.parameters())
    assert not any(m._forward_hooks for m in unet.modules())  # the hooks are removed


def test_lognormal_noise_levels_draw_sigma_from_their_distribution():
    from fedaug.generator.train import draw_timesteps

    _, sched = _model()
    a = sched.alphas_cumprod
    sigma = ((1 - a) / a).sqrt()
    gen = torch.Generator().manual_seed(0)
    t = draw_timesteps((20000,), a, "lognormal:0.5:1.4", generator=gen)
    log_s = sigma[t].log()
    # the first timestep at or above the drawn sigma: log sigma ~ N(0.5, 1.4^2) up to the
    # schedule's step (the share below mean - std is Phi(-1) = 0.159)
    assert float(log_s.median()) == pytest.approx(0.5, abs=0.05)
    assert float((log_s < 0.5 - 1.4).float().mean()) == pytest.approx(0.159, abs=0.01)
    assert t.min() >= 0 and t.max() <= len(a) - 1
    u = draw_timesteps((20000,), a, "uniform", generator=gen)
    assert float(u.float().mean()) == pytest.approx((len(a) - 1) / 2, rel=0.03)
    # train_dp takes the setting, and refuses a malformed one before any draw
    unet, _ = _model()
    images, labels = torch.rand(8, 1, 8, 8) * 2 - 1, torch.randint(0, 3, (8,))
    with pytest.raises(ConfigError, match="noise-levels"):
        train_dp(unet, sched, images, labels, steps=1, sample_rate=1.0, noise_multiplier=1.0,
                 max_grad_norm=1.0, learning_rate=1e-3, expected_batch_size=8.0,
                 noise=NoiseSource(), noise_levels="lognormal")
    out = train_dp(unet, sched, images, labels, steps=1, sample_rate=1.0, noise_multiplier=1.0,
                   max_grad_norm=1.0, learning_rate=1e-3, expected_batch_size=8.0,
                   noise=NoiseSource(), noise_levels="lognormal:0.5:1.4")
    assert out.steps == 1 and np.isfinite(out.loss)


def test_train_nondp_in_chunks_takes_the_same_step_as_one_batch():
    """The benchmark baseline accumulates chunks of a large batch: same loss, same gradient."""
    images = torch.rand(10, 1, 8, 8) * 2 - 1
    labels = torch.randint(0, 3, (10,))
    runs = []
    for chunk in (256, 3):
        unet, sched = _model()
        out = train_nondp(unet, sched, images, labels, steps=1, batch_size=10,
                          learning_rate=1e-3, noise_multiplicity=2, chunk=chunk)
        # the step's gradient is left in .grad (zeroed at the start of the next step)
        runs.append((out.loss, [p.grad.clone() for p in unet.parameters()]))
    (loss_a, grads_a), (loss_b, grads_b) = runs
    assert loss_a == pytest.approx(loss_b, rel=1e-5)
    scale = max(g.abs().max() for g in grads_a)
    assert scale > 0
    assert all(torch.allclose(a, b, rtol=1e-4, atol=1e-6 * scale)
               for a, b in zip(grads_a, grads_b, strict=True))


class _OracleUNet(torch.nn.Module):
    """Outputs what a perfectly trained UNet would for one known clean image x0."""

    def __init__(self, x0: torch.Tensor, alphas: torch.Tensor, prediction: str) -> None:
        super().__init__()
        self.x0, self.alphas, self.prediction = x0, alphas, prediction
        self.anchor = torch.nn.Parameter(torch.zeros(1))  # for the sampler's device lookup
        self.config = type("Config", (), {"sample_size": x0.shape[-1],
                                          "in_channels": x0.shape[1], "num_class_embeds": 1})

    def forward(self, x_t, t, class_labels=None):
        a = self.alphas[t]
        noise = (x_t - a.sqrt() * self.x0) / (1 - a).sqrt()
        return type("Out", (), {"sample": diffusion_target(self.prediction, self.x0, noise, a)})


@pytest.mark.parametrize("prediction", PREDICTION_TYPES)
def test_sampler_returns_the_image_a_perfect_unet_predicts(prediction):
    # Prepare: a UNet that knows the answer, in each target's own terms
    sched = build_train_scheduler(GeneratorConfig(image_size=8, channels=1, num_classes=1,
                                                  prediction_type=prediction))
    x0 = torch.rand((3, 1, 8, 8), generator=torch.Generator().manual_seed(0)) * 1.8 - 0.9
    oracle = _OracleUNet(x0, sched.alphas_cumprod.float(), prediction)
    # Execute
    images = sample_images(oracle, sched, [0, 0, 0], num_inference_steps=10, seed=0)
    # Assert: every step's denoised guess is x0, so DDIM lands on it
    torch.testing.assert_close(images, x0, atol=1e-3, rtol=0)


class _GuidedOracle(_OracleUNet):
    """A perfect UNet for image ``x0`` under every class label and ``x0_null`` under the
    null label ``null``."""

    def __init__(self, x0, x0_null, alphas, prediction, null):
        super().__init__(x0, alphas, prediction)
        self.x0_null, self.null = x0_null, null

    def forward(self, x_t, t, class_labels=None):
        a = self.alphas[t]
        null = (class_labels == self.null).view(-1, 1, 1, 1)
        x0 = torch.where(null, self.x0_null.repeat(2, 1, 1, 1)[:len(x_t)],
                         self.x0.repeat(2, 1, 1, 1)[:len(x_t)])
        noise = (x_t - a.sqrt() * x0) / (1 - a).sqrt()
        return type("Out", (), {"sample": diffusion_target(self.prediction, x0, noise, a)})


@pytest.mark.parametrize("prediction", PREDICTION_TYPES)
def test_guided_sampler_lands_on_the_guided_combination(prediction):
    # Prepare: the class-conditional answer x0 and the null label's answer x0_null
    sched = build_train_scheduler(GeneratorConfig(image_size=8, channels=1, num_classes=1,
                                                  prediction_type=prediction))
    g = torch.Generator().manual_seed(0)
    x0 = torch.rand((3, 1, 8, 8), generator=g) * 0.8 - 0.4
    x0_null = torch.rand((3, 1, 8, 8), generator=g) * 0.8 - 0.4
    oracle = _GuidedOracle(x0, x0_null, sched.alphas_cumprod.float(), prediction, null=1)
    # Execute: guidance 1.5 and no guidance
    guided = sample_images(oracle, sched, [0, 0, 0], num_inference_steps=10, seed=0,
                           guidance_scale=1.5, null_label=1)
    plain = sample_images(oracle, sched, [0, 0, 0], num_inference_steps=10, seed=0,
                          guidance_scale=1.0, null_label=1)
    # Assert: u + w (c - u) at every step, so DDIM lands on it; w = 1 is the conditional model
    torch.testing.assert_close(guided, x0_null + 1.5 * (x0 - x0_null), atol=1e-3, rtol=0)
    torch.testing.assert_close(plain, x0, atol=1e-3, rtol=0)


def test_label_dropout_config_needs_and_builds_a_null_class():
    cfg = GeneratorConfig(image_size=8, channels=1, num_classes=3, block_out_channels=(8, 16),
                          label_dropout=0.1, guidance_scale=2.0)
    assert cfg.null_label == 3
    assert build_unet(cfg).config.num_class_embeds == 4
    assert CFG.null_label is None and build_unet(CFG).config.num_class_embeds == 3
    assert GeneratorConfig.from_flat(cfg.to_flat()) == cfg
    with pytest.raises(ConfigError, match="needs a null class"):
        GeneratorConfig(image_size=8, channels=1, num_classes=3, guidance_scale=2.0)
    with pytest.raises(ConfigError, match="label_dropout must be in"):
        GeneratorConfig(image_size=8, channels=1, num_classes=3, label_dropout=1.0)


def test_drop_labels_replaces_a_fraction_with_the_null_label():
    from fedaug.generator.model import drop_labels

    labels = torch.randint(0, 3, (4000,), generator=torch.Generator().manual_seed(0))
    out = drop_labels(labels, 0.25, 3, generator=torch.Generator().manual_seed(1))
    dropped = out == 3
    assert 0.22 < float(dropped.float().mean()) < 0.28
    assert torch.equal(out[~dropped], labels[~dropped])
    same = drop_labels(labels, 0.25, None, generator=torch.Generator().manual_seed(1))
    assert torch.equal(same, labels)


def test_train_dp_trains_the_null_class_only_with_label_dropout():
    cfg = GeneratorConfig(image_size=8, channels=1, num_classes=3, block_out_channels=(8, 16),
                          label_dropout=0.5)
    images = torch.rand(40, 1, 8, 8) * 2 - 1
    labels = torch.randint(0, 3, (40,))
    rows = {}
    for p in (0.0, 0.5):
        torch.manual_seed(0)
        unet, sched = build_unet(cfg), build_train_scheduler(cfg)
        before = unet.class_embedding.weight.detach().clone()
        train_dp(unet, sched, images, labels, steps=2, sample_rate=1.0, noise_multiplier=0.0,
                 max_grad_norm=1.0, learning_rate=1e-2, expected_batch_size=40.0,
                 noise=NoiseSource(), label_dropout=p, null_label=cfg.null_label)
        rows[p] = (unet.class_embedding.weight.detach() - before).abs().sum(1)
    assert float(rows[0.0][3]) == 0.0 and float(rows[0.5][3]) > 0.0
    assert bool((rows[0.0][:3] > 0).all())


def test_sample_shape_and_range():
    unet, sched = _model()
    x = sample_images(unet, sched, [0, 1, 2, 2], num_inference_steps=2, seed=0)
    assert x.shape == (4, 1, 8, 8)
    assert float(x.min()) >= -1 and float(x.max()) <= 1
    u8 = to_uint8(x)
    assert u8.shape == (4, 8, 8, 1) and u8.dtype == np.uint8


def test_saved_folder_loads_with_diffusers_and_generate_writes_outputs(tmp_path):
    # Prepare: a saved generator folder
    unet, sched = _model()
    save_generator(tmp_path / "model", unet, sched, CFG)
    # Execute
    loaded = UNet2DModel.from_pretrained(tmp_path / "model", subfolder="unet")
    DDPMScheduler.from_pretrained(tmp_path / "model", subfolder="scheduler")
    info = generate_to_folder(tmp_path / "model", tmp_path / "out", num_samples=6, seed=0,
                              steps=2)
    # Assert
    for a, b in zip(unet.state_dict().values(), loaded.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b)
    data = np.load(info["npz"])
    assert data["images"].shape == (6, 8, 8, 1) and data["images"].dtype == np.uint8
    assert sorted(set(data["labels"].tolist())) == [0, 1, 2]
    pngs = sorted((tmp_path / "out").glob("*/*.png"))
    assert len(pngs) == 6
    assert Image.open(pngs[0]).size == (8, 8)
    assert Image.open(tmp_path / "out" / "grid.png").size[0] > 8


def test_generate_rejects_bad_label(tmp_path):
    unet, sched = _model()
    save_generator(tmp_path / "m", unet, sched, CFG)
    with pytest.raises(ValueError, match="--label must be a class index in \\[0, 2\\]"):
        generate_to_folder(tmp_path / "m", tmp_path / "o", num_samples=2, label=7)


def test_generate_refuses_guidance_without_a_null_class_and_guides_with_one(tmp_path):
    unet, sched = _model()
    save_generator(tmp_path / "m", unet, sched, CFG)
    with pytest.raises(ConfigError, match="no null class"):
        generate_to_folder(tmp_path / "m", tmp_path / "o", num_samples=2, guidance_scale=2.0)
    cfg = GeneratorConfig(image_size=8, channels=1, num_classes=3, block_out_channels=(8, 16),
                          label_dropout=0.1, guidance_scale=2.0)
    torch.manual_seed(0)
    save_generator(tmp_path / "g", build_unet(cfg), build_train_scheduler(cfg), cfg)
    from fedaug.generator.generate import generate

    own, _, _ = generate(tmp_path / "g", num_samples=3, steps=2, progress=False)
    plain, _, _ = generate(tmp_path / "g", num_samples=3, steps=2, progress=False,
                           guidance_scale=1.0)
    again, _, _ = generate(tmp_path / "g", num_samples=3, steps=2, progress=False,
                           guidance_scale=2.0)
    assert np.array_equal(own, again) and not np.array_equal(own, plain)
