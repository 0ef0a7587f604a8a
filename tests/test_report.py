"""ctgen.evaluation.report: the one-line readings of an evaluation report say no more than the figures carry."""

from __future__ import annotations

from ctgen.evaluation.report import interpret


def _report(**sections) -> dict:
    return {"reconstruction": {"mae_hu": 20.0, "mae_hu_window": 12.0, "ssim": 0.8, "set": "held-out patients"},
            "activity": {"kl_per_unit": [2.0, 1.0, 0.0], "active_units": 2, "active_units_by_variance": 2,
                         "threshold": 0.01, "kl_total": 3.0},
            "memorisation": {"skipped": "needs --split"}, **sections}


def _unit(nmi: float, chance: float, patient_nmi: float | None) -> dict:
    return {"unit": 0, "nmi": nmi, "second_unit": 1, "second_nmi": 0.1, "chance_nmi": chance,
            "patient_level": patient_nmi is not None, "patient_nmi": patient_nmi,
            "baseline_nmi": max(chance, patient_nmi or 0.0)}


def test_patient_level_factors_do_not_count_with_few_patients():
    # issue 24 item 7: "11 of 12 factors have a unit whose normalised MI beats chance by 0.2", all through one unit
    units = {"level": _unit(0.7, 0.2, None), **{f"factor{k}": _unit(0.583, 0.2, 1.0) for k in range(11)}}
    scores = {"mig": 0.1, "dci_disentanglement": 0.2, "dci_completeness": 0.2, "dci_informativeness": 0.3,
              "units": units, "unit_factor_min_nmi": 0.2, "n_slices": 300, "n_patients": 12, "set": "all slices"}
    reading = interpret(_report(disentanglement=scores))["unit_factors"]
    assert reading.startswith("1 of 12 factors have a unit") and "(level)" in reading
    assert "with 12 patients, patient-level factors cannot be told apart from patient identity" in reading


def test_precision_and_the_anatomical_check_cannot_read_as_contradicting():
    # issue 24 item 7: "precision 1.00" beside "100 % fail the anatomical check" for the same samples
    pr = {"precision": 1.0, "recall": 0.4, "k": 3, "n_real": 20, "n_generated": 1000}
    check = {"fail_share": 1.0, "skull_open": 1000, "no_brain_inside": 0, "n_images": 1000}
    realism = {"feature_space": "…", "heldout_b": {**pr, "n_generated": 20}, "reconstructions": pr,
               "samples_standard": pr, "anatomy": {"heldout": {**check, "fail_share": 0.0}, "samples_standard": check}}
    reading = interpret(_report(realism=realism))["realism"]
    assert "coarse layout" in reading and "separate test" in reading
    assert "precision cannot tell realistic images from others here" in reading  # 20 reference slices
    assert "precision does not see that, the anatomical check does" in reading


def test_error_ratios_read_by_one_rule():
    # issue 24 item 7: "0.7x … about the same error"
    def reading(real_mae: float) -> str:
        return interpret(_report(real_slices={"mean_mae_hu": real_mae}))["real_slices"]

    assert "0.70x" in reading(14.0) and "about the same" not in reading(14.0) and "30% less error" in reading(14.0)
    assert "about the same error" in reading(21.0) and "about the same error" in reading(18.5)
    assert "25% more error" in reading(25.0)
