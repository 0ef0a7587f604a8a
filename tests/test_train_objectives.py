"""train.objectives on cases whose answer is known: TC of independent and correlated codes, the
decomposition adding up to the KL, the permutation, the discriminator, Ada-GVAE's sharing, pairing."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from train.config import TrainConfig  # noqa: E402
from train.model import BetaVAE, VAEConfig, kl_per_unit, vae_loss  # noqa: E402
from train.objectives import (  # noqa: E402
    FactorVAE,
    Objective,
    Pairs,
    ada_gvae_aggregate,
    make_objective,
    permute_dims,
    slice_groups,
    tc_decomposition,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")
CPU = torch.device("cpu")


def codes(count: int, rho: float, sigma: float, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Two-unit posteriors N(mu, σ²) whose means have correlation rho and variance 1 − σ², so the
    aggregate posterior is exactly N(0, [[1, r], [r, 1]]) with r = rho·(1 − σ²); one sample z each."""
    generator = torch.Generator().manual_seed(seed)
    first, second = torch.randn(2, count, generator=generator)
    mean = torch.stack([first, rho * first + math.sqrt(1 - rho**2) * second], 1) * math.sqrt(1 - sigma**2)
    logvar = torch.full_like(mean, math.log(sigma**2))
    z = mean + sigma * torch.randn(mean.shape, generator=generator)
    return z, mean, logvar


def test_tc_is_zero_for_independent_codes_and_the_gaussian_value_for_correlated_ones():
    _mi, tc, _dim_kl = tc_decomposition(*codes(2000, 0.0, 0.5), dataset_size=2000)
    assert abs(tc.item()) < 0.03
    sigma, rho = 0.1, 0.999
    r = rho * (1 - sigma**2)
    _mi, tc, _dim_kl = tc_decomposition(*codes(2000, rho, sigma), dataset_size=2000)
    assert tc.item() == pytest.approx(-0.5 * math.log(1 - r**2), abs=0.2)  # TC of a bivariate Gaussian: 1.96 nats


def test_mi_tc_and_dimension_wise_kl_add_up_to_the_kl():
    generator = torch.Generator().manual_seed(1)
    mu = torch.randn(2000, 4, generator=generator) * torch.tensor([2.0, 1.0, 0.3, 0.0])
    logvar = torch.log(torch.rand(2000, 4, generator=generator) * 0.5 + 0.1)
    z = mu + torch.exp(0.5 * logvar) * torch.randn(mu.shape, generator=generator)
    mi, tc, dim_kl = tc_decomposition(z, mu, logvar, dataset_size=2000)
    kl = kl_per_unit(mu, logvar).sum(1).mean().item()
    assert (mi + tc + dim_kl).item() == pytest.approx(kl, rel=0.03)
    assert 0 < mi.item() <= math.log(2000) + 1e-4  # at most log N for N data points
    # a larger data set behind the same batch: MI and TC move, the sum stays the sampled KL
    mi_n, tc_n, dim_kl_n = tc_decomposition(z, mu, logvar, dataset_size=10**6)
    assert (mi_n + tc_n + dim_kl_n).item() == pytest.approx((mi + tc + dim_kl).item(), rel=1e-4)


def test_permute_dims_keeps_marginals_and_breaks_correlation():
    z, _mu, _logvar = codes(2000, 1.0, 0.01)
    assert torch.corrcoef(z.T)[0, 1] > 0.99
    shuffled = permute_dims(z, torch.Generator().manual_seed(0))
    assert torch.equal(shuffled.sort(0).values, z.sort(0).values)  # each column: the same values
    assert abs(torch.corrcoef(shuffled.T)[0, 1].item()) < 0.1
    assert torch.equal(shuffled, permute_dims(z, torch.Generator().manual_seed(0)))  # seeded


def test_discriminator_finds_no_tc_in_independent_codes_and_some_in_correlated_ones():
    cfg = TrainConfig(latent=2, factor_hidden=64, factor_lr=1e-3)
    estimates = {}
    for rho in (0.0, 0.99):
        torch.manual_seed(0)
        objective = FactorVAE(cfg, train_records=[{}] * 256, device=CPU)
        generator = torch.Generator().manual_seed(1)
        for step in range(150):
            objective.train_discriminator(codes(256, rho, 0.1, seed=step)[0], generator)
        with torch.no_grad():
            estimates[rho] = objective.total_correlation(codes(4000, rho, 0.1, seed=10_000)[0]).item()
    r = 0.99 * (1 - 0.1**2)
    assert abs(estimates[0.0]) < 0.1
    assert estimates[0.99] == pytest.approx(-0.5 * math.log(1 - r**2), abs=0.4)  # 1.62 nats


def test_ada_gvae_shares_every_unit_but_the_one_that_differs():
    generator = torch.Generator().manual_seed(0)
    mu1, logvar1 = torch.randn(3, 6, generator=generator), torch.randn(3, 6, generator=generator) * 0.3
    mu2, logvar2 = mu1.clone(), logvar1.clone()
    differs = [1, 4, 0]  # pair p differs only in unit differs[p]
    for pair, unit in enumerate(differs):
        mu2[pair, unit] += 3.0
        logvar2[pair, unit] -= 0.5
    mu, logvar, shared = ada_gvae_aggregate(torch.cat([mu1, mu2]), torch.cat([logvar1, logvar2]))
    expected = torch.ones(3, 6, dtype=torch.bool)
    expected[range(3), differs] = False
    assert torch.equal(shared, expected)
    first, second = mu.chunk(2)
    assert torch.equal(first[~expected], mu1[~expected]) and torch.equal(second[~expected], mu2[~expected])
    assert torch.allclose(first[expected], (mu1[expected] + mu2[expected]) / 2)
    variance = (logvar1.exp() + logvar2.exp()) / 2  # GVAE: the average of the two Gaussians' parameters
    assert torch.allclose(logvar.chunk(2)[1][expected], variance.log()[expected])


def test_ada_gvae_threshold_halves_the_range_of_the_divergences():
    mu1 = torch.zeros(1, 4)
    mu2 = torch.tensor([[0.0, 1.0, 2.0, 3.0]])  # δ = ½·Δμ² = 0, 0.5, 2, 4.5 -> τ = 2.25
    _mu, _logvar, shared = ada_gvae_aggregate(torch.cat([mu1, mu2]), torch.zeros(2, 4))
    assert shared.tolist() == [[True, True, True, False]]


def records(levels: dict[str, list[float]]) -> list[dict]:
    out = []
    for patient, zs in levels.items():
        for number, z in enumerate(zs):
            out.append({"patient": patient, "position_mm": [0.0, 0.0, z], "instance_number": number + 1})
    return out


def test_slice_groups_order_by_level():
    found = slice_groups(records({"a": [30.0, 10.0, 20.0], "b": [5.0]}))
    assert [group.tolist() for group in found] == [[1, 2, 0], [3]]


@pytest.mark.parametrize("adjacent", [False, True])
def test_pairs_join_slices_of_one_patient(adjacent):
    data = records({"a": [30.0, 10.0, 20.0, 40.0], "b": [1.0, 2.0], "single": [7.0], "c": [3.0, 9.0, 6.0]})
    objective = Pairs(TrainConfig(objective="pairs", pair_adjacent=adjacent), train_records=data, device=CPU)
    assert objective.items_per_epoch == 9 and objective.single_slice_patients == 1
    for epoch in (1, 2, 3):
        order = objective.epoch_order(epoch)
        assert torch.equal(order, objective.epoch_order(epoch))  # seeded by (seed, epoch)
        assert sorted(order[:, 0].tolist()) == [0, 1, 2, 3, 4, 5, 7, 8, 9]  # every pairable slice, once
        for first, second in order.tolist():
            assert first != second and data[first]["patient"] == data[second]["patient"]
            if adjacent:
                levels = sorted(r["position_mm"][2] for r in data if r["patient"] == data[first]["patient"])
                rank = levels.index(data[first]["position_mm"][2])
                assert abs(levels.index(data[second]["position_mm"][2]) - rank) == 1


def test_pairs_loss_averages_shared_units_inside_the_forward():
    torch.manual_seed(0)
    model = BetaVAE(VAEConfig(image_size=64, latent_size=4, width=8))
    objective = Pairs(TrainConfig(objective="pairs", latent=4, beta=2.0), train_records=records({"a": [1.0, 2.0]}),
                      device=CPU)  # fmt: skip
    images, noise = torch.rand(4, 1, 64, 64), torch.randn(4, 4)
    terms = objective.loss(model, images, noise, step=0)
    mu, logvar = model.encode(images)
    mu_shared, logvar_shared, shared = ada_gvae_aggregate(mu, logvar)
    recon = model.decode(mu_shared + torch.exp(0.5 * logvar_shared) * noise)
    expected = vae_loss(images, recon, mu_shared, logvar_shared, beta=2.0)
    assert terms.loss.item() == pytest.approx(expected.loss.item(), rel=1e-5)
    assert terms.extra["shared_units"].item() == shared.float().sum(1).mean().item()


def test_betavae_objective_is_vae_loss():
    torch.manual_seed(0)
    model = BetaVAE(VAEConfig(image_size=64, latent_size=4, width=8))
    images, noise = torch.rand(3, 1, 64, 64), torch.randn(3, 4)
    for changes in ({}, {"capacity_max": 5.0, "capacity_steps": 10, "gamma": 7.0}):
        cfg = replace(TrainConfig(latent=4, beta=3.0), **changes)
        objective = Objective(cfg, train_records=[{}] * 10, device=CPU)
        terms = objective.loss(model, images, noise, step=4)
        recon, mu, logvar = model(images, noise=noise)
        capacity = 2.0 if changes else None
        expected = vae_loss(images, recon, mu, logvar, beta=3.0, capacity=capacity, gamma=7.0)
        assert torch.equal(terms.loss, expected.loss)
        assert objective.val_loss(10.0, 1.0, {}, 4) == (10.0 + 7.0 * abs(1.0 - 2.0) if changes else 13.0)


def test_records_name_the_objective_and_its_weights():
    tiny = [{"patient": "a", "position_mm": None, "instance_number": i} for i in range(3)]
    found = {}
    for name in ("betavae", "tcvae", "factorvae", "pairs"):
        cfg = TrainConfig(objective=name, latent=4, factor_hidden=8)
        found[name] = make_objective(cfg, train_records=tiny, device=CPU).record()
        assert found[name]["objective"] == name and "reconstruction" in found[name]
    assert found["tcvae"]["weights"] == {"mi": 1.0, "tc": 6.0, "dim_kl": 1.0} and found["tcvae"]["dataset_size"] == 3
    assert found["factorvae"]["weights"] == {"kl": 1.0, "tc": 10.0} and found["factorvae"]["discriminator"]["hidden"] == 8
    assert found["pairs"]["beta"] == 4.0 and found["pairs"]["pairing"]["pairs_per_epoch"] == 3
    with pytest.raises(ValueError, match="unknown objective"):
        make_objective(TrainConfig(objective="vae"), train_records=tiny, device=CPU)


def test_factorvae_state_round_trip():
    cfg = TrainConfig(objective="factorvae", latent=3, factor_hidden=16)
    torch.manual_seed(0)
    first = FactorVAE(cfg, train_records=[{}] * 8, device=CPU)
    first.train_discriminator(torch.randn(8, 3), torch.Generator().manual_seed(0))
    torch.manual_seed(1)
    second = FactorVAE(cfg, train_records=[{}] * 8, device=CPU)
    second.load_state_dict(first.state_dict())
    z = torch.randn(5, 3)
    assert torch.equal(first.discriminator(z), second.discriminator(z))
    np.testing.assert_equal(first.optimizer.state_dict()["state"][0]["exp_avg"].numpy(),
                            second.optimizer.state_dict()["state"][0]["exp_avg"].numpy())  # fmt: skip
