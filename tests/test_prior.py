"""The fitted mixture prior (ctgen.runtime.prior): seeded, prefix-stable, drawn batch by batch in flat memory."""

from __future__ import annotations

import numpy as np
import pytest

from ctgen.errors import ArgumentError
from ctgen.runtime.prior import MixturePrior


@pytest.fixture
def mixture() -> MixturePrior:
    rng = np.random.default_rng(0)
    weights = np.array([0.2, 0.5, 0.3])
    means = rng.normal(size=(3, 6))
    cholesky = np.tril(rng.normal(size=(3, 6, 6))) * 0.3
    return MixturePrior(weights=weights, means=means, cholesky=cholesky)


def test_the_same_seed_gives_the_samples_it_always_gave(mixture):
    chosen = np.random.default_rng([7, 1]).choice(3, size=29, p=mixture.weights)
    noise = np.random.default_rng([7, 2]).standard_normal((29, 6))
    as_always = (mixture.means[chosen] + 0.8 * np.einsum("nij,nj->ni", mixture.cholesky[chosen], noise))
    assert mixture.sample(29, seed=7, temperature=0.8).tobytes() == as_always.astype(np.float32).tobytes()


def test_batches_draw_the_same_values_when_asked_for(mixture):
    whole = mixture.sample(29, seed=7, temperature=0.8)
    batches = list(mixture.batches(29, seed=7, temperature=0.8, batch_size=8))
    assert [len(batch) for batch in batches] == [8, 8, 8, 5]
    assert np.concatenate(batches).tobytes() == whole.tobytes()
    first = next(mixture.batches(10**12, seed=7, temperature=0.8, batch_size=8))  # 10^12 at once: terabytes
    assert first.tobytes() == whole[:8].tobytes()
    assert mixture.sample(0, seed=7).shape == (0, 6)
    with pytest.raises(ArgumentError, match="temperature"):
        mixture.batches(3, seed=0, temperature=-1.0, batch_size=2)
