from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from ctgen.errors import ArgumentError, InputError
from ctgen.latent import (
    iter_batches,
    lerp,
    offsets,
    parse_shard,
    parse_units,
    prior_batches,
    sample_prior,
    slerp,
    take_shard,
    traverse,
)


def test_sample_prior_is_deterministic_and_prefix_stable():
    a = sample_prior(10, 8, seed=3)
    assert a.dtype == np.float32 and a.shape == (10, 8)
    assert a.tobytes() == sample_prior(10, 8, seed=3).tobytes()
    assert np.array_equal(sample_prior(4, 8, seed=3), a[:4])
    assert not np.array_equal(sample_prior(10, 8, seed=4), a)


def test_prior_batches_draw_the_same_values_batch_by_batch():
    whole = sample_prior(37, 8, seed=11, temperature=0.7)
    as_always = (np.random.default_rng(11).standard_normal((37, 8)) * 0.7).astype(np.float32)
    assert whole.tobytes() == as_always.tobytes()  # the same seed gives the samples it always gave
    batches = prior_batches(37, 8, seed=11, temperature=0.7, batch_size=8)
    assert [len(batch) for batch in prior_batches(37, 8, seed=11, batch_size=8)] == [8, 8, 8, 8, 5]
    assert np.concatenate(list(batches)).tobytes() == whole.tobytes()
    assert sample_prior(0, 8, seed=0).shape == (0, 8)


def test_prior_batches_are_drawn_when_asked_for():
    # a trillion latents of 8 float64 would be 64 TB: only the first batch may be drawn
    first = next(prior_batches(10**12, 8, seed=5, batch_size=4))
    assert first.tobytes() == sample_prior(4, 8, seed=5).tobytes()
    with pytest.raises(ArgumentError, match="temperature"):  # checked at the call, before any batch
        prior_batches(3, 8, seed=0, temperature=float("nan"), batch_size=2)
    with pytest.raises(ArgumentError, match="batch_size"):
        prior_batches(3, 8, seed=0, batch_size=0)


def test_sample_prior_temperature_scales():
    base = sample_prior(2000, 4, seed=0)
    hot = sample_prior(2000, 4, seed=0, temperature=0.5)
    np.testing.assert_allclose(hot, base * 0.5, rtol=1e-6)
    assert abs(base.std() - 1.0) < 0.05
    assert not sample_prior(3, 4, seed=0, temperature=0.0).any()
    with pytest.raises(InputError, match="temperature"):
        sample_prior(3, 4, seed=0, temperature=-1.0)


def test_lerp_ends_and_midpoint():
    a, b = np.zeros(3), np.array([2.0, 4.0, -2.0])
    path = lerp(a, b, 5)
    assert path.shape == (5, 3) and path.dtype == np.float32
    np.testing.assert_allclose(path[0], a)
    np.testing.assert_allclose(path[-1], b)
    np.testing.assert_allclose(path[2], b / 2)
    with pytest.raises(InputError, match="steps"):
        lerp(a, b, 1)
    with pytest.raises(InputError):
        lerp(a, np.zeros(4), 3)


def test_slerp_keeps_norm_on_circle():
    a, b = np.array([1.0, 0.0]), np.array([0.0, 1.0])
    path = slerp(a, b, 9)
    np.testing.assert_allclose(np.linalg.norm(path, axis=1), 1.0, atol=1e-6)
    np.testing.assert_allclose(path[0], a, atol=1e-7)
    np.testing.assert_allclose(path[-1], b, atol=1e-7)
    np.testing.assert_allclose(path[4], [np.sqrt(0.5), np.sqrt(0.5)], atol=1e-6)


@pytest.mark.parametrize(
    "a, b",
    [
        ([1.0, 2.0], [2.0, 4.0]),  # parallel
        ([1.0, 2.0], [-1.0, -2.0]),  # anti-parallel
        ([0.0, 0.0], [1.0, 2.0]),  # zero vector
        ([1.0, 2.0], [1.0, 2.0]),  # identical
    ],
)
def test_slerp_degenerate_falls_back_to_lerp(a, b):
    path = slerp(np.array(a), np.array(b), 4)
    assert np.isfinite(path).all()
    np.testing.assert_allclose(path, lerp(np.array(a), np.array(b), 4), atol=1e-6)


@given(
    st.lists(st.floats(-5, 5), min_size=3, max_size=3),
    st.lists(st.floats(-5, 5), min_size=3, max_size=3),
    st.integers(2, 12),
)
def test_slerp_finite_with_exact_ends(a, b, steps):
    path = slerp(np.array(a), np.array(b), steps)
    assert path.shape == (steps, 3) and np.isfinite(path).all()
    np.testing.assert_allclose(path[0], a, atol=1e-4)
    np.testing.assert_allclose(path[-1], b, atol=1e-4)


def test_offsets_always_hold_zero_in_the_middle():
    np.testing.assert_allclose(offsets(3.0, 7), [-3, -2, -1, 0, 1, 2, 3])
    even = offsets(2.0, 4)
    assert len(even) == 5 and even[2] == 0.0
    assert offsets(1.0, 1).tolist() == [0.0]
    with pytest.raises(InputError, match="range"):
        offsets(0.0, 5)


def test_traverse_layout():
    z = np.arange(4, dtype=np.float32)
    grid = traverse(z, [1, 3], [-1.0, 0.0, 1.0])
    assert grid.shape == (6, 4)
    np.testing.assert_allclose(grid[:, 1], [0, 1, 2, 1, 1, 1])
    np.testing.assert_allclose(grid[:, 3], [3, 3, 3, 2, 3, 4])
    np.testing.assert_allclose(grid[:, [0, 2]], np.tile([0.0, 2.0], (6, 1)))
    with pytest.raises(InputError, match="unit 4"):
        traverse(z, [4], [0.0])


@pytest.mark.parametrize(
    "spec, expected",
    [
        ("0-4,7", [0, 1, 2, 3, 4, 7]),
        (" 3 ", [3]),
        ("5,1-2,1", [5, 1, 2]),
        ("top3", [6, 2, 0]),
        ("TOP 2", [6, 2]),
        ("all", list(range(8))),
    ],
)
def test_parse_units(spec, expected):
    assert parse_units(spec, 8, [6, 2, 0, 1, 3, 4, 5, 7]) == expected


@pytest.mark.parametrize("spec, message", [("8", "unknown unit 8"), ("0-9", "unknown unit 8"), ("a", "cannot parse"),
                                           ("4-2", "empty range"), ("top0", "between 1 and 8"), ("top9", "between"),
                                           ("", "cannot parse"), ("-1", "cannot parse")])
def test_parse_units_rejects(spec, message):
    with pytest.raises(InputError, match=message) as info:
        parse_units(spec, 8, list(range(8)))
    assert str(info.value).startswith("argument 'units': ")  # Python names the argument; the CLI names --units


def test_parse_units_top_without_ranking():
    with pytest.raises(InputError, match="no KL ranking"):
        parse_units("top2", 8, None)


def test_parse_shard():
    assert parse_shard("1/4") == (1, 4)
    assert parse_shard(" 4 / 4 ") == (4, 4)
    for junk in ["0/4", "5/4", "1/0", "a/b", "1", "1/2/3", "-1/2", ""]:
        with pytest.raises(InputError, match="argument 'shard'"):
            parse_shard(junk)


@given(st.integers(0, 50), st.integers(1, 9))
def test_shards_partition_in_order(count, n):
    items = list(range(count))
    parts = [list(take_shard(items, k, n)) for k in range(1, n + 1)]
    assert sum(parts, []) == items
    assert max(map(len, parts)) - min(map(len, parts)) <= 1


def test_iter_batches():
    assert [list(b) for b in iter_batches(range(7), 3)] == [[0, 1, 2], [3, 4, 5], [6]]
    assert list(iter_batches([], 3)) == []
    with pytest.raises(InputError):
        list(iter_batches([1], 0))


def test_a_factor_setting_reads_back_as_it_was_written():
    from ctgen.latent import FactorSetting, parse_setting

    for text, setting in (("rotation_deg=+10", FactorSetting("rotation_deg", 10.0, True)),
                          ("rotation_deg=-2.5", FactorSetting("rotation_deg", -2.5, True)),
                          ("ventricle_mm2=40", FactorSetting("ventricle_mm2", 40.0)),
                          ("rotation_deg==-10", FactorSetting("rotation_deg", -10.0))):
        assert parse_setting(text) == setting and str(setting) == text
        assert parse_setting(str(setting)) == setting
