"""train.model: shapes, loss scaling, checkpoint round trip, ONNX exportability."""

from __future__ import annotations

import io
import math

import pytest

torch = pytest.importorskip("torch")

from train.model import ACTIVE_UNIT_KL, BetaVAE, VAEConfig, kl_per_unit, vae_loss  # noqa: E402

TINY = {"width": 8, "latent_size": 8}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.mark.parametrize("size", [64, 128, 256])
def test_shapes(size):
    model = BetaVAE(VAEConfig(image_size=size, **TINY))
    images = torch.rand(2, 1, size, size)
    recon, mu, logvar = model(images, generator=torch.Generator().manual_seed(0))
    assert recon.shape == images.shape and mu.shape == logvar.shape == (2, 8)
    assert 0.0 <= recon.min() and recon.max() <= 1.0
    model.eval()
    assert model.decode(torch.zeros(3, 8)).shape == (3, 1, size, size)


def test_architecture_counts():
    model = BetaVAE(VAEConfig(image_size=64, **TINY))
    encoder_convs = [m for m in model.encoder.modules() if isinstance(m, torch.nn.Conv2d)]
    decoder_convs = [m for m in model.decoder.modules() if isinstance(m, torch.nn.Conv2d | torch.nn.ConvTranspose2d)]
    decoder_convs.append(model.to_image)
    assert len(encoder_convs) == 10 and len(decoder_convs) == 7
    assert sum(isinstance(m, torch.nn.ConvTranspose2d) for m in decoder_convs) == 5
    assert VAEConfig(width=32).channels == [32, 64, 128, 256, 256]


def test_bad_image_size():
    with pytest.raises(ValueError):
        VAEConfig(image_size=100)


def test_noise_and_generator_are_reproducible():
    model = BetaVAE(VAEConfig(image_size=64, **TINY))
    images = torch.rand(2, 1, 64, 64)
    first = model(images, generator=torch.Generator().manual_seed(5))[0]
    second = model(images, generator=torch.Generator().manual_seed(5))[0]
    eps = torch.randn(2, 8, generator=torch.Generator().manual_seed(5))
    third = model(images, noise=eps)[0]
    assert torch.equal(first, second) and torch.equal(first, third)


def test_loss_scaling():
    images = torch.zeros(4, 1, 8, 8)
    recon = torch.full_like(images, 0.5)
    mu, logvar = torch.zeros(4, 3), torch.zeros(4, 3)
    terms = vae_loss(images, recon, mu, logvar, beta=4.0)
    assert terms.recon.item() == pytest.approx(64 * 0.25)  # summed over pixels, mean over the batch
    assert terms.kl.item() == 0.0 and terms.loss.item() == pytest.approx(16.0)

    mu = torch.tensor([[1.0, 0.0, 0.0]]).repeat(4, 1)
    terms = vae_loss(images, recon, mu, logvar, beta=4.0)
    assert terms.kl_units.tolist() == pytest.approx([0.5, 0.0, 0.0])
    assert terms.loss.item() == pytest.approx(16.0 + 4.0 * 0.5)
    capped = vae_loss(images, recon, mu, logvar, capacity=2.0, gamma=10.0)
    assert capped.loss.item() == pytest.approx(16.0 + 10.0 * abs(0.5 - 2.0))


def test_kl_per_unit_matches_closed_form():
    mu, logvar = torch.tensor([[0.3, -1.0]]), torch.tensor([[math.log(2.0), 0.0]])
    expected = [0.5 * (0.09 + 2.0 - 1.0 - math.log(2.0)), 0.5]
    assert kl_per_unit(mu, logvar)[0].tolist() == pytest.approx(expected)
    assert ACTIVE_UNIT_KL == 0.01


def test_checkpoint_round_trip(tmp_path):
    from dataclasses import asdict

    model = BetaVAE(VAEConfig(image_size=64, **TINY))
    model.train()
    model(torch.rand(4, 1, 64, 64))  # move the BatchNorm running statistics away from their defaults
    path = tmp_path / "checkpoint.pt"
    torch.save({"config": asdict(model.config), "model": model.state_dict()}, path)
    for source in (path, torch.load(path, weights_only=True)):
        loaded = BetaVAE.from_checkpoint(source)
        assert not loaded.training and loaded.config == model.config
        model.eval()
        images = torch.rand(2, 1, 64, 64)
        assert torch.equal(loaded.encode(images)[0], model.encode(images)[0])
        z = torch.randn(2, 8)
        assert torch.equal(loaded.decode(z), model.decode(z))


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_encode_and_decode_export_to_onnx():
    pytest.importorskip("onnx")

    class Encoder(torch.nn.Module):
        def __init__(self, vae):
            super().__init__()
            self.vae = vae

        def forward(self, image):
            return self.vae.encode(image)

    class Decoder(Encoder):
        def forward(self, z):
            return self.vae.decode(z)

    model = BetaVAE(VAEConfig(image_size=64, **TINY)).eval()
    for wrapper, example in ((Encoder(model), torch.rand(1, 1, 64, 64)), (Decoder(model), torch.randn(1, 8))):
        with torch.no_grad():
            torch.onnx.export(wrapper, (example,), io.BytesIO(), dynamo=False, opset_version=18)


# ------------------------------------------------------------------ decoder upsampling (issue 26 item 2)
def period_two_peaks(model: BetaVAE, count: int = 64) -> dict[str, float]:
    """ctgen.evaluation.metrics.sharpness.period_two_peaks of the decoder's logits for ``count`` prior draws (eval mode)."""
    from ctgen.evaluation.metrics.sharpness import period_two_peaks as peaks

    with torch.no_grad():
        z = torch.randn(count, model.config.latent_size, generator=torch.Generator().manual_seed(0))
        logits = model.eval().decode_logits(z)[:, 0].double()
    return peaks(logits.numpy(), window=None)


# A peak: the bin's power more than PEAK times its neighbours'. Measured over 8 initialisations at 64²: transposed
# 32-90, resize 0.7-1.9, subpixel 0.5-2.8 (at 128²: 92-174, 1.1-4.9, 1.6-7.2). What resize and subpixel keep at
# initialisation comes from the LeakyReLU after a conv of a 2x2-block-constant map (even and odd pixels differ in
# variance), not from the upsampling.
PEAK = 5.0


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_transposed_decoder_shows_the_period_two_peak_that_this_measure_finds(seed):
    torch.manual_seed(seed)
    peaks = period_two_peaks(BetaVAE(VAEConfig(image_size=64, upsample="transposed", **TINY)))
    assert max(peaks.values()) > 4 * PEAK, peaks


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("upsample", ["resize", "subpixel"])
def test_resize_and_subpixel_decoders_have_no_period_two_peak_at_initialisation(upsample, seed):
    torch.manual_seed(seed)
    peaks = period_two_peaks(BetaVAE(VAEConfig(image_size=64, upsample=upsample, **TINY)))
    assert max(peaks.values()) < PEAK, peaks


def test_icnr_starts_the_pixel_shuffle_as_nearest_upsampling():
    from train.model import icnr_

    conv = torch.nn.Conv2d(3, 4 * 2, 3, 1, 1, bias=False)
    icnr_(conv.weight)
    out = torch.nn.PixelShuffle(2)(conv(torch.randn(1, 3, 5, 5)))  # (1, 2, 10, 10)
    assert torch.equal(out, out[..., ::2, ::2].repeat_interleave(2, -1).repeat_interleave(2, -2))


@pytest.mark.parametrize("upsample", ["transposed", "resize", "subpixel"])
def test_upsample_options_keep_shapes_and_old_configs_load_as_transposed(upsample):
    model = BetaVAE(VAEConfig(image_size=64, upsample=upsample, **TINY)).eval()
    assert model.decode(torch.zeros(2, 8)).shape == (2, 1, 64, 64)
    assert VAEConfig(image_size=64, **TINY).upsample == "transposed"  # a checkpoint config without the field
    with pytest.raises(ValueError, match="upsample"):
        VAEConfig(upsample="bicubic")
