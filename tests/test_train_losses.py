"""train.losses on cases whose answer is known: MS-SSIM of identical and degraded images, the focal
frequency loss against Parseval, the L1 term, the patch discriminator's shape, warm-up and state."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest

torch = pytest.importorskip("torch")

from train.config import TrainConfig  # noqa: E402
from train.losses import ImageLoss, PatchDiscriminator, focal_frequency_loss, ms_ssim, ms_ssim_scales  # noqa: E402
from train.model import vae_loss  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")
CPU = torch.device("cpu")


def images(count: int = 4, size: int = 64, seed: int = 0) -> torch.Tensor:
    """Smooth random images in [0, 1], (count, 1, size, size)."""
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.rand(count, 1, size // 8, size // 8, generator=generator)
    return torch.nn.functional.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)


def test_ms_ssim_scales_fit_the_grid():
    assert [ms_ssim_scales(size) for size in (32, 64, 128, 256, 512)] == [2, 3, 4, 5, 5]


def test_ms_ssim_is_one_for_identical_images_and_falls_with_noise():
    x = images()
    assert torch.allclose(ms_ssim(x, x), torch.ones(4), atol=1e-6)
    generator = torch.Generator().manual_seed(1)
    slightly = (x + 0.02 * torch.randn(x.shape, generator=generator)).clamp(0, 1)
    badly = (x + 0.2 * torch.randn(x.shape, generator=generator)).clamp(0, 1)
    assert (ms_ssim(x, badly) < ms_ssim(x, slightly)).all() and (ms_ssim(x, slightly) < 1).all()
    recon = badly.clone().requires_grad_(True)
    (1 - ms_ssim(x, recon)).sum().backward()
    assert torch.isfinite(recon.grad).all() and recon.grad.abs().sum() > 0


def test_focal_frequency_loss_is_the_squared_error_for_one_frequency_and_less_otherwise():
    x = images()
    rows = torch.arange(64.0).view(1, 1, 64, 1)
    wave = 0.1 * torch.cos(2 * math.pi * 8 * rows / 64).expand(4, 1, 64, 64)  # one frequency pair, equal magnitudes
    squared = wave.square().flatten(1).sum(1)
    assert torch.allclose(focal_frequency_loss(x, x + wave), squared, rtol=1e-4)  # Parseval, focus 1
    noisy = x + 0.05 * torch.randn(x.shape, generator=torch.Generator().manual_seed(2))
    assert (focal_frequency_loss(x, noisy) < (noisy - x).square().flatten(1).sum(1)).all()
    assert torch.equal(focal_frequency_loss(x, x), torch.zeros(4))


def test_l1_reconstruction_term_sums_absolute_errors():
    x = images(2)
    recon = (x + 0.1).clamp(0, 1)
    mu, logvar = torch.zeros(2, 3), torch.zeros(2, 3)
    l1 = vae_loss(x, recon, mu, logvar, reconstruction="l1")
    assert l1.recon.item() == pytest.approx((recon - x).abs().sum().item() / 2, rel=1e-5)
    with pytest.raises(ValueError, match="l3"):
        vae_loss(x, recon, mu, logvar, reconstruction="l3")


def config(**changes) -> TrainConfig:
    return replace(TrainConfig(image_size=64, width=8, lr=1e-3), **changes)


def test_patch_discriminator_scores_patches():
    assert PatchDiscriminator(8)(images(2)).shape == (2, 1, 7, 7)


def test_image_loss_weights_warm_up_and_validation():
    x, recon = images(2), images(2, seed=3)
    assert ImageLoss(config(), device=CPU)(x, recon, step=0).extra == {}
    cfg = config(ssim_weight=0.5, freq_weight=2.0, adv_weight=0.01, adv_start=5)
    loss = ImageLoss(cfg, device=CPU)
    warming = loss(x, recon, step=4)
    assert warming.extra["adv"] == 0 and loss._pending is None
    expected = 0.5 * 64**2 * (1 - ms_ssim(x, recon).mean()) + 2.0 * focal_frequency_loss(x, recon).mean()
    assert warming.loss.item() == pytest.approx(expected.item(), rel=1e-5)
    extra: dict = {}
    loss.after_step(extra)
    assert extra["adv_discriminator"] == 0  # D does not train during the warm-up
    active = loss(x, recon, step=5)
    assert active.extra["adv"] != 0 and loss._pending is not None
    before = [p.detach().clone() for p in loss.discriminator.parameters()]
    loss.after_step(extra)
    assert extra["adv_discriminator"] > 0
    assert any(not torch.equal(a, b) for a, b in zip(before, loss.discriminator.parameters()))
    validation = loss(x, recon)  # no step: validation, no adversarial term
    assert set(validation.extra) == {"ms_ssim", "freq"}
    assert loss.val_loss({k: v.item() for k, v in validation.extra.items()}) == pytest.approx(expected.item(), rel=1e-5)
    assert loss.names == ("ms_ssim", "freq", "adv", "adv_discriminator")


def test_image_loss_state_round_trip_and_record():
    cfg = config(adv_weight=0.01)
    first, second = ImageLoss(cfg, device=CPU), ImageLoss(cfg, device=CPU)
    first(images(2), images(2, seed=1), step=0)
    first.after_step({})
    second.load_state_dict(first.state_dict())
    for a, b in zip(first.discriminator.parameters(), second.discriminator.parameters()):
        assert torch.equal(a, b)
    with pytest.raises(KeyError):
        second.load_state_dict(None)
    record = first.record()
    assert record["adversarial"]["start_step"] == 0 and record["ms_ssim"] is None and record["reconstruction"] == "l2"
    assert ImageLoss(config(), device=CPU).state_dict() == {}


def test_bad_loss_options_are_input_errors():
    from ctgen.errors import InputError

    with pytest.raises(InputError, match="--recon"):
        config(recon="huber").check_losses()
    with pytest.raises(InputError, match="--adv-start"):
        config(adv_start=-1).check_losses()


def test_command_line_options_reach_the_config():
    import argparse

    from train.__main__ import add_arguments, config_from_args

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    defaults = config_from_args(parser.parse_args(["--out", "run"]))
    assert (defaults.recon, defaults.ssim_weight, defaults.freq_weight, defaults.adv_weight, defaults.adv_start,
            defaults.upsample) == ("l2", 0.0, 0.0, 0.0, 0, "transposed")  # fmt: skip
    cfg = config_from_args(parser.parse_args(["--out", "run", "--recon", "l1", "--ssim-weight", "0.2", "--freq-weight",
                                              "1", "--adv-weight", "0.01", "--adv-start", "500", "--upsample",
                                              "subpixel"]))  # fmt: skip
    assert (cfg.recon, cfg.ssim_weight, cfg.freq_weight, cfg.adv_weight, cfg.adv_start) == ("l1", 0.2, 1.0, 0.01, 500)
    assert cfg.model_config.upsample == "subpixel"
    with pytest.raises(SystemExit):
        parser.parse_args(["--out", "run", "--recon", "l3"])
