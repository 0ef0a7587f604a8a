"""train.binding and --bind: factors measured into the cache, the bound units' terms, every objective, exact
resume, DDP, bf16, the few-labels regime, labels from a factors.csv, and the export's unit order and card."""

from __future__ import annotations

import csv
import json
import math
import os
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("scipy")

from ctgen.runtime.card import read_card  # noqa: E402
from ctgen.errors import InputError  # noqa: E402
from ctgen.images.preprocess import CT_MAP, Grid, HUMap  # noqa: E402
from tests.test_train_loop import (  # noqa: E402
    deterministic,
    metrics,
    straight_and_resumed,
    study,  # noqa: F401 -- the module's phantom study fixture
    tiny,
    torchrun,
)
from train.binding import (  # noqa: E402
    BIND_SIGMA,
    CYCLE_SHARE,
    Binding,
    Cycle,
    FreeAdversary,
    bind_terms,
    choose_factors,
    labelled_patients,
    r2_from_sums,
    r2_sums,
)
from train.data import FACTOR_NAMES, build_cache  # noqa: E402
from train.train import train  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")
BIND = "rotation_deg,level,head_width_max_mm"


def binding(factors=("a", "b"), weight=1.0, free_weight=1.0) -> Binding:
    return Binding(factors=list(factors), units=[""] * len(factors), mean=[0.0] * len(factors),
                   std=[1.0] * len(factors), source="measured", fraction=1.0, weight=weight,
                   free_weight=free_weight, labelled=[])  # fmt: skip


def phantom_table(study: Path) -> dict[str, dict[str, str]]:
    with open(study / "factors.csv", newline="") as handle:
        return {os.path.realpath(study / row["file"]): row for row in csv.DictReader(handle)}


# ------------------------------------------------------------------ the cache measures every slice
def test_cache_measures_every_slice_on_its_grid_image(study, cache_root):
    cache = build_cache([study], cache_root, Grid(size=64, spacing_mm=240 / 64, hu_map=CT_MAP), workers=1)
    values = cache.factors
    assert cache.factor_names == list(FACTOR_NAMES) and values.shape == (len(cache.records), len(FACTOR_NAMES))
    assert values.dtype == np.float32 and "grid" in cache.info["factors_measured_on"]
    truth = phantom_table(study)
    level = values[:, FACTOR_NAMES.index("level")]
    expected = np.array([float(truth[os.path.realpath(r["file"])]["level"]) for r in cache.records])
    assert np.isfinite(level).all() and np.corrcoef(level, expected)[0, 1] > 0.95  # series grouping works
    rotation = values[:, FACTOR_NAMES.index("rotation_deg")]
    true_rotation = np.array([float(truth[os.path.realpath(r["file"])]["rotation_deg"]) for r in cache.records])
    middle = np.isfinite(rotation) & (expected > 0.2) & (expected < 0.7)
    assert middle.sum() >= 4 and np.abs(rotation[middle] - true_rotation[middle]).max() < 4.0
    width = values[:, FACTOR_NAMES.index("head_width_max_mm")]
    for patient in {r["patient"] for r in cache.records}:  # one value per series
        rows = [i for i, r in enumerate(cache.records) if r["patient"] == patient]
        assert len(set(width[rows].tolist())) == 1


def test_window_map_measures_nothing_and_bind_says_why(study, tmp_path):
    window = Grid(size=64, spacing_mm=240 / 64, hu_map=HUMap.window(40.0, 300.0))
    cache = build_cache([study], tmp_path / "cache", window, workers=1)
    assert cache.factor_names == [] and cache.factors.shape == (len(cache.records), 0)
    with pytest.raises(InputError, match="hu-map ct"):
        train(tiny(study, tmp_path / "cache", tmp_path / "run", hu_map="window", bind="level"))


# ------------------------------------------------------------------ the terms
def test_bind_term_is_the_masked_gaussian_likelihood():
    mu = torch.tensor([[1.0, 2.0, 0.5], [0.0, 0.0, -0.5]], requires_grad=True)
    labels = torch.tensor([[1.5, float("nan")], [0.0, 1.0]])
    loss, extra = bind_terms(mu, labels, binding(free_weight=0.0, weight=2.0))
    expected = (0.5**2 + 0.0 + 1.0**2) / (2 * BIND_SIGMA**2) / 2  # batch mean; the NaN label adds nothing
    assert extra["bind"].item() == pytest.approx(expected)
    assert loss.item() == pytest.approx(2.0 * expected)
    loss.backward()
    assert mu.grad[0, 1] == 0 and mu.grad[0, 0] != 0  # no gradient from a missing label


def test_bind_term_with_logvar_adds_the_posterior_variance_and_keeps_bound_units_precise():
    mu = torch.tensor([[1.0, 2.0, 0.5], [0.0, 0.0, -0.5]])
    logvar = torch.log(torch.tensor([[0.04, 0.09, 1.0], [0.01, 0.25, 1.0]])).requires_grad_(True)
    labels = torch.tensor([[1.5, float("nan")], [0.0, 1.0]])
    _, extra = bind_terms(mu, labels, binding(free_weight=0.0), logvar=logvar)
    # E[(z - y)^2] = (mu - y)^2 + sigma^2 on labelled entries; the free unit's variance adds nothing
    expected = ((0.5**2 + 0.04) + (0.0 + 0.01) + (1.0**2 + 0.25)) / (2 * BIND_SIGMA**2) / 2
    assert extra["bind"].item() == pytest.approx(expected)
    # with beta = 1 and weight 1, the bound unit's variance that minimises KL's sigma part + the term
    s = torch.linspace(1e-4, 1.0, 20001)
    total = 0.5 * (s - 1 - torch.log(s)) + s / (2 * BIND_SIGMA**2)
    assert s[total.argmin()].item() == pytest.approx(1 / (1 + 1 / BIND_SIGMA**2), rel=0.01)


def test_free_term_penalises_a_free_unit_that_copies_a_bound_factor():
    generator = torch.Generator().manual_seed(0)
    labels = torch.randn(256, 1, generator=generator)
    independent = torch.cat([labels, torch.randn(256, 2, generator=generator)], dim=1)
    copying = torch.cat([labels, labels, torch.randn(256, 1, generator=generator)], dim=1)
    _, free_independent = bind_terms(independent, labels, binding(("a",)))
    _, free_copying = bind_terms(copying, labels, binding(("a",)))
    assert free_independent["free"].item() < 0.05 and free_copying["free"].item() > 0.5
    labels[::2] = float("nan")  # masked rows leave the estimate unbiased
    _, masked = bind_terms(copying, labels, binding(("a",)))
    assert masked["free"].item() > 0.5


def test_adversary_learns_the_copy_and_the_encoder_gets_the_reversed_gradient():
    torch.manual_seed(0)
    labels = torch.randn(128, 1)
    mu = torch.cat([labels, labels, torch.randn(128, 2)], dim=1)  # free unit 1 copies the factor
    adversary = FreeAdversary(3, 1)
    optimizer = torch.optim.Adam(adversary.parameters(), lr=1e-2)
    adversarial = replace(binding(("a",)), free_term="adversary", weight=0.0, free_weight=1.0)
    for _ in range(200):
        loss, extra = bind_terms(mu, labels, adversarial, adversary)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert extra["free"].item() < 0.05  # the regressor finds the copy
    mu.requires_grad_(True)
    loss, _ = bind_terms(mu, labels, adversarial, adversary)
    (reversed_grad,) = torch.autograd.grad(loss, mu)
    error = ((adversary.net(mu[:, 1:]) - labels).square()).sum(1).mean() / 2  # the regressor's own error
    (plain_grad,) = torch.autograd.grad(error, mu)
    torch.testing.assert_close(reversed_grad, -plain_grad)  # the encoder ascends the regressor's error


def test_validation_figures_name_the_best_unit():
    generator = torch.Generator().manual_seed(1)
    labels = torch.randn(500, 2, generator=generator)
    mu = torch.randn(500, 4, generator=generator)
    mu[:, 0] = labels[:, 0]  # unit 0 reproduces factor a exactly
    mu[:, 3] = 0.5 * labels[:, 1]  # factor b is carried by a free unit, not by unit 1
    figures = r2_from_sums(r2_sums(mu, labels), ["a", "b"])
    assert figures["bind_r2_a"] == pytest.approx(1.0) and figures["bind_r_a"] == pytest.approx(1.0)
    assert figures["bind_best_unit_a"] == 0 and figures["bind_best_unit_b"] == 3
    assert figures["free_max_r_b"] == pytest.approx(1.0) and figures["bind_r2_b"] < 0.2


def test_choose_factors_auto_and_named():
    values = np.array([[1.0, 5.0, np.nan, 2.0], [2.0, 5.0, np.nan, np.nan], [3.0, 5.0, 1.0, 4.0]])
    names = ["a", "constant", "rare", "b"]
    assert choose_factors("auto", names, values, latent=8) == ["a"]  # b is measured on 2/3 < 80 %
    assert choose_factors("b, a", names, values, latent=8) == ["b", "a"]
    for spec, fragment in (("zzz", "unknown factor"), ("a,a", "once"), ("a,b", "latent larger")):
        with pytest.raises(InputError, match=fragment):
            choose_factors(spec, names, values, latent=2)


def test_labelled_patients_are_a_seeded_fraction():
    patients = [f"p{i}" for i in range(40)] * 3
    tenth = labelled_patients(patients, 0.1, seed=3)
    assert len(tenth) == 4 and tenth == labelled_patients(patients, 0.1, seed=3)
    assert tenth != labelled_patients(patients, 0.1, seed=4) and len(labelled_patients(patients, 0.001, 0)) == 1
    with pytest.raises(InputError, match="bind-fraction"):
        labelled_patients(patients, 0.0, seed=0)


# ------------------------------------------------------------------ training
def test_training_binds_units_and_records_the_binding(study, cache_root, tmp_path):
    summary = train(tiny(study, cache_root, tmp_path / "run", bind=BIND, epochs=1))
    checkpoint = torch.load(tmp_path / "run" / "checkpoint_last.pt", weights_only=True)
    record = checkpoint["binding"]
    assert record["factors"] == BIND.split(",") and record["units"] == ["deg", "", "mm"]
    assert record["source"] == "measured" and record["fraction"] == 1.0 and record["weight"] == 1.0
    assert all(math.isfinite(m) for m in record["mean"]) and all(s > 0 for s in record["std"])
    logged = summary["metrics"]
    assert math.isfinite(logged["train_bind"]) and math.isfinite(logged["train_free"])
    assert -10 < logged["val_bind_r2_level"] <= 1 and 0 <= logged["val_bind_best_unit_level"] < 8
    assert "val_bind_r_rotation_deg" in logged and "val_free_max_r_level" in logged


@pytest.mark.parametrize(("objective", "free_term"), [("betavae", "covariance"), ("tcvae", "covariance"),
                                                     ("factorvae", "adversary"), ("pairs", "covariance"),
                                                     ("betavae", "adversary")])  # fmt: skip
def test_resume_is_exact_with_binding_for_every_objective(study, cache_root, tmp_path, objective, free_term):
    changes = {"objective": objective, "factor_hidden": 32, "bind": BIND, "bind_fraction": 0.7, "free_term": free_term}
    straight, resumed = straight_and_resumed(study, cache_root, tmp_path, **changes)
    assert straight["binding"] == resumed["binding"] and straight["binding"]["fraction"] == 0.7
    assert straight["binding"]["free_term"] == free_term
    if free_term == "adversary":
        for name, tensor in straight["objective_state"]["free_adversary"].items():
            assert torch.equal(tensor, resumed["objective_state"]["free_adversary"][name]), name
    assert deterministic(metrics(tmp_path / "straight")) == deterministic(metrics(tmp_path / "resumed"))


def test_cycle_changes_one_bound_unit_per_row_to_another_rows_value():
    z = torch.arange(16 * 6, dtype=torch.float32).reshape(16, 6)  # every value tells its row and unit apart
    cycle = Cycle(bound=3)
    cycle.generator = torch.Generator().manual_seed(0)
    changed = cycle.latents(z.requires_grad_())
    assert changed.shape == (16 // CYCLE_SHARE, 6) and not changed.requires_grad
    for row in changed:
        source = int(row[3]) // 6  # free units stay those of the row they came from
        assert torch.equal(row[3:], z[source, 3:].detach())
        differs = [unit for unit in range(3) if row[unit] != z[source, unit]]
        assert len(differs) <= 1 and all(int(row[unit]) % 6 == unit for unit in range(3))  # each from its own unit
    cycle.generator = torch.Generator().manual_seed(0)
    assert torch.equal(cycle.latents(z), changed)  # seeded
    with pytest.raises(RuntimeError, match="read back"):
        Cycle(bound=3).loss()
    cycle.read(torch.cat([changed[:, :3] + 0.1, torch.zeros(len(changed), 3)], 1))
    assert cycle.loss().item() == pytest.approx(3 * 0.01 / (2 * BIND_SIGMA**2), rel=1e-4)


def test_the_cycle_runs_inside_forward_and_leaves_batchnorm_statistics_alone():
    from train.model import BetaVAE, VAEConfig

    torch.manual_seed(0)
    model = BetaVAE(VAEConfig(image_size=64, latent_size=6, width=4)).train()
    images, noise = torch.rand(8, 1, 64, 64), torch.randn(8, 6)
    plain = BetaVAE(VAEConfig(image_size=64, latent_size=6, width=4)).train()
    plain.load_state_dict(model.state_dict())
    cycle = Cycle(bound=2)
    cycle.generator = torch.Generator().manual_seed(1)
    recon, mu, _ = model(images, noise=noise, cycle=cycle)
    expected, _, _ = plain(images, noise=noise)
    torch.testing.assert_close(recon, expected)  # the cycle's images are not the batch's
    for (name, value), other in zip(model.state_dict().items(), plain.state_dict().values()):
        torch.testing.assert_close(value, other, msg=name)  # running statistics as without the cycle
    loss = cycle.loss()
    loss.backward()
    assert math.isfinite(loss.item()) and model.to_image.weight.grad.abs().sum() > 0  # it reaches the decoder


def test_a_frozen_reader_leaves_the_encoder_to_the_real_slices():
    from train.model import BetaVAE, VAEConfig

    torch.manual_seed(0)
    model = BetaVAE(VAEConfig(image_size=64, latent_size=6, width=4)).train()
    images, noise = torch.rand(8, 1, 64, 64), torch.randn(8, 6)
    joint, frozen = Cycle(bound=2), Cycle(bound=2, frozen_reader=True)
    for cycle in (joint, frozen):
        cycle.generator = torch.Generator().manual_seed(1)
        model.zero_grad()
        model(images, noise=noise, cycle=cycle)
        reading = cycle._reading.detach().clone()
        cycle.loss().backward()
        encoder = sum(float(p.grad.abs().sum()) for p in model.encoder.parameters() if p.grad is not None)
        decoder = float(model.to_image.weight.grad.abs().sum())
        if cycle is joint:
            joint_reading = reading
            assert encoder > 0 and decoder > 0
        else:
            torch.testing.assert_close(reading, joint_reading)  # the same reading, only the gradient differs
            assert encoder == 0 and decoder > 0


def test_training_with_the_cycle_logs_it_and_resumes_exactly(study, cache_root, tmp_path):
    straight, resumed = straight_and_resumed(study, cache_root, tmp_path, bind=BIND, cycle_weight=1.0,
                                             cycle_reader="frozen")
    logged = metrics(tmp_path / "straight")
    assert all(math.isfinite(line["train_cycle"]) for line in logged)
    assert straight["binding"]["cycle_weight"] == 1.0 and straight["binding"]["cycle_reader"] == "frozen"
    assert Binding.from_record(straight["binding"]).cycle_reader == "frozen"
    assert deterministic(logged) == deterministic(metrics(tmp_path / "resumed"))
    with pytest.raises(InputError, match="--cycle-weight needs --bind"):
        train(tiny(study, cache_root, tmp_path / "unbound", cycle_weight=1.0, epochs=1))


def test_resume_uses_the_checkpoints_standardisation(study, cache_root, tmp_path, monkeypatch):
    train(tiny(study, cache_root, tmp_path / "run", bind="level", epochs=1))
    from train import checkpoint as checkpoint_module
    from train import run as run_module

    original = checkpoint_module.load_checkpoint_verified

    def shifted(path, **kwargs):
        loaded = original(path, **kwargs)
        loaded["binding"]["mean"] = [loaded["binding"]["mean"][0] + 100.0]
        return loaded

    monkeypatch.setattr(run_module, "load_checkpoint_verified", shifted)
    summary = train(tiny(study, cache_root, tmp_path / "run", bind="level", epochs=2, resume=True))
    # labels 100 standard deviations away: the bind term of the resumed epoch is huge
    assert summary["metrics"]["train_bind"] > 100 * metrics(tmp_path / "run")[0]["train_bind"]


def test_bind_fraction_labels_only_some_training_patients(study, cache_root, tmp_path):
    train(tiny(study, cache_root, tmp_path / "run", bind="level", bind_fraction=0.4, epochs=1))
    checkpoint = torch.load(tmp_path / "run" / "checkpoint_last.pt", weights_only=True)
    train_patients = checkpoint["split"]["train_patients"]
    assert len(checkpoint["binding"]["labelled_patients"]) == max(1, round(0.4 * len(train_patients)))
    assert set(checkpoint["binding"]["labelled_patients"]) <= set(train_patients)


def test_bind_from_a_phantom_table(study, cache_root, tmp_path):
    summary = train(tiny(study, cache_root, tmp_path / "run", bind="level,scale_x",
                         bind_from=str(study / "factors.csv"), epochs=1))  # fmt: skip
    record = torch.load(tmp_path / "run" / "checkpoint_last.pt", weights_only=True)["binding"]
    assert record["source"] == "file:factors.csv" and record["factors"] == ["level", "scale_x"]
    truth = [float(row["scale_x"]) for row in phantom_table(study).values()]
    assert record["mean"][1] == pytest.approx(np.mean(truth), abs=0.05)
    assert math.isfinite(summary["metrics"]["val_bind_r_level"])  # scale_x is one value on the 1 val patient
    with pytest.raises(InputError, match="needs --bind"):
        train(tiny(study, cache_root, tmp_path / "other", bind_from=str(study / "factors.csv")))


def test_bf16_with_binding(study, cache_root, tmp_path):
    summary = train(tiny(study, cache_root, tmp_path / "run", epochs=1, precision="bf16", bind=BIND))
    assert all(math.isfinite(summary["metrics"][key]) for key in ("train_loss", "train_bind", "val_loss"))


_DDP_BINDING = """
import sys
from pathlib import Path

from train import ddp
from train.train import TrainConfig, train

study, cache, out = map(Path, sys.argv[1:4])
for objective in ("betavae", "pairs"):
    train(TrainConfig(data=[str(study)], out=str(out / objective), cache=str(cache), image_size=64, width=8,
                      latent=8, epochs=1, batch_size=6, device="cpu", quiet=True, tensorboard=False, workers=1,
                      objective=objective, bind="rotation_deg,level",
                      free_term="adversary" if objective == "pairs" else "covariance"))
ddp.shutdown()
"""


@pytest.mark.slow  # ~35 s: two torchrun processes start and train twice
def test_torchrun_with_binding(study, cache_root, tmp_path):
    script = tmp_path / "binding.py"
    script.write_text(_DDP_BINDING)
    torchrun([str(script), str(study), str(cache_root), str(tmp_path)], tmp_path)
    for objective in ("betavae", "pairs"):
        (logged,) = metrics(tmp_path / objective)
        assert math.isfinite(logged["train_bind"]) and math.isfinite(logged["val_bind_r_level"])


# ------------------------------------------------------------------ export
def test_export_keeps_bound_units_first_and_writes_the_binding(study, cache_root, tmp_path):
    from export.onnx_export import export_model
    from train.model import BetaVAE

    train(tiny(study, cache_root, tmp_path / "run", bind=BIND, epochs=1))
    model_dir = export_model(tmp_path / "run", tmp_path / "model", dynamo=False)
    card = read_card(model_dir)
    raw = json.loads((model_dir / "model.json").read_text())
    assert [bound.factor for bound in card.bound_units] == BIND.split(",")
    assert [bound.unit for bound in card.bound_units] == [0, 1, 2]
    assert raw["binding"]["source"] == "measured" and raw["binding"]["fraction"] == 1.0
    assert raw["units"]["network_unit"][:3] == [0, 1, 2] and sorted(raw["units"]["network_unit"]) == list(range(8))
    checkpoint = torch.load(tmp_path / "run" / "checkpoint_best.pt", weights_only=True)
    bound = card.bound_unit("head_width_max_mm")
    assert bound.mean == pytest.approx(checkpoint["binding"]["mean"][2]) and bound.to_value(0.0) == bound.mean
    import onnxruntime

    vae = BetaVAE.from_checkpoint(checkpoint)
    images = torch.rand(2, 1, 64, 64)
    session = onnxruntime.InferenceSession(str(model_dir / "encoder.onnx"), providers=["CPUExecutionProvider"])
    (mu, _logvar) = session.run(None, {"image": images.numpy()})
    with torch.no_grad():
        expected = vae.encode(images)[0].numpy()
    np.testing.assert_allclose(mu[:, :3], expected[:, :3], atol=1e-4)
