"""Robust aggregation: coordinate-wise median, trimmed mean, Krum and Multi-Krum on small numbers,
against their definitions, and what one Byzantine update can do to each."""

from __future__ import annotations

import numpy as np
import pytest

from tdxfl.engine.aggregators import (
    BufferedAggregator,
    CoordinateMedian,
    Krum,
    RobustAggregation,
    RobustRule,
    TrimmedMean,
)
from tdxfl.engine.optimizers import SGD
from tdxfl.engine.records import TensorSet
from tdxfl.engine.strategy import FedAvg, LocalTraining, RoundAccumulator, SyncGradients
from tdxfl.errors import ConfigError, FederationError, RecordError


def ts(*arrays: np.ndarray) -> TensorSet:
    return TensorSet.from_arrays([f"t{i}" for i in range(len(arrays))], [np.asarray(a, np.float32) for a in arrays])


def aggregate(rule: RobustRule, updates: list[TensorSet]) -> list[np.ndarray]:
    agg = BufferedAggregator(updates[0].specs, rule, capacity=len(updates), max_bytes=1 << 30)
    for i, u in enumerate(updates):
        agg.add(u, float(i + 1))  # weights are ignored: every update counts once
    return agg.mean()


def test_median_is_the_coordinatewise_median() -> None:
    updates = [ts([1, 10], [[5]]), ts([3, 0], [[1]]), ts([2, 7], [[9]])]
    median = aggregate(CoordinateMedian(), updates)
    np.testing.assert_array_equal(median[0], [2, 7])
    np.testing.assert_array_equal(median[1], [[5]])
    assert median[1].shape == (1, 1) and median[1].dtype == np.float32
    even = aggregate(CoordinateMedian(), [ts([1.0]), ts([2.0]), ts([4.0]), ts([100.0])])
    np.testing.assert_array_equal(even[0], [3.0])  # the mean of the two middle values


def test_trimmed_mean_drops_floor_beta_n_per_side() -> None:
    values = [1.0, 2.0, 3.0, 4.0, 50.0]
    updates = [ts([v, -v]) for v in values]
    np.testing.assert_allclose(aggregate(TrimmedMean(0.2), updates)[0], [3.0, -3.0])  # k = 1: mean(2, 3, 4)
    np.testing.assert_allclose(aggregate(TrimmedMean(0.1), updates)[0], [np.mean(values), -np.mean(values)])  # k = 0
    np.testing.assert_allclose(aggregate(TrimmedMean(0.4), updates)[0], [3.0, -3.0])  # k = 2: the median
    with pytest.raises(ValueError, match=r"\[0, 0.5\)"):
        TrimmedMean(0.5)


def test_krum_scores_and_selection_follow_blanchard() -> None:
    """n = 5, f = 1: each score sums the squared distances to the n - f - 2 = 2 nearest others."""
    points = [0.0, 1.0, 3.0, 6.0, 20.0]
    updates = [ts([p], [0.0]) for p in points]
    stacked = [np.array([[p] for p in points]), np.zeros((5, 1))]
    scores = Krum(1).scores(stacked)
    want = []
    for i, p in enumerate(points):
        d2 = sorted((p - q) ** 2 for j, q in enumerate(points) if j != i)
        want.append(sum(d2[:2]))
    np.testing.assert_allclose(scores, want)  # [1+9, 1+4, 4+9, 9+25, 196+289]
    np.testing.assert_array_equal(aggregate(Krum(1), updates)[0], [1.0])  # the best score: 5
    # Multi-Krum: the plain mean of the m best-scored (0, 1, 3 here)
    np.testing.assert_allclose(aggregate(Krum(1, select=3), updates)[0], [4.0 / 3.0])
    # select = 0: n - f = 4 updates
    np.testing.assert_allclose(aggregate(Krum(1, select=0), updates)[0], [(0 + 1 + 3 + 6) / 4])


def test_krum_distances_span_all_tensors() -> None:
    """Distances are over the whole update: the last update equals the best one in t0 but is far in t1."""
    updates = [ts([0.0], [0.0]), ts([0.1], [0.0]), ts([0.2], [0.0]), ts([0.1], [30.0])]
    t0, t1 = np.array([[0.0], [0.1], [0.2], [0.1]]), np.array([[0.0], [0.0], [0.0], [30.0]])
    np.testing.assert_allclose(Krum(0).scores([t0, t1]), [0.05, 0.02, 0.05, 900 + 900.01])  # n - 2 = 2 nearest
    got = aggregate(Krum(0), updates)
    np.testing.assert_allclose(got[0], [0.1])
    np.testing.assert_array_equal(got[1], [0.0])


@pytest.mark.parametrize(
    "rule",
    [CoordinateMedian(), TrimmedMean(0.2), Krum(1), Krum(1, select=3)],
    ids=["median", "trimmed-mean", "krum", "multi-krum"],
)
def test_one_outlier_moves_the_result_not_at_all_or_boundedly(rule: RobustRule) -> None:
    """Four honest updates near 1 and one Byzantine update of 1e6: the aggregate stays within the
    honest updates' range (not moved at all by how large the outlier is), where the mean jumps."""
    rng = np.random.default_rng(0)
    honest = [ts(1.0 + 0.01 * rng.standard_normal(6), 1.0 + 0.01 * rng.standard_normal((2, 2))) for _ in range(4)]
    low = [np.min([h.arrays[t] for h in honest], axis=0) for t in range(2)]
    high = [np.max([h.arrays[t] for h in honest], axis=0) for t in range(2)]
    results = []
    for outlier in (1e6, 1e3):
        attacked = [*honest[:2], ts(np.full(6, outlier), np.full((2, 2), outlier)), *honest[2:]]
        got = aggregate(rule, attacked)
        for t in range(2):
            assert (got[t] >= low[t]).all() and (got[t] <= high[t]).all()
        results.append(got)
    for a, b in zip(*results):  # the outlier's size does not matter
        np.testing.assert_array_equal(a, b)
    mean = RoundAccumulator(honest[0].specs)
    for u in [*honest, ts(np.full(6, 1e6), np.full((2, 2), 1e6))]:
        mean.add(u, 1.0)
    assert mean.mean()[0].min() > 1e5  # what the plain mean does


def test_buffer_is_reused_and_bounded() -> None:
    specs = ts(np.zeros(1000)).specs  # 4000 bytes per update
    with pytest.raises(ConfigError, match=r"3 workers x .* exceeds strategy.max_buffer_mib"):
        BufferedAggregator(specs, CoordinateMedian(), capacity=3, max_bytes=11_999)
    agg = BufferedAggregator(specs, CoordinateMedian(), capacity=3, max_bytes=12_000)
    for step in range(2):
        agg.reset()
        for v in (1.0, 2.0, 30.0):
            agg.add(ts(np.full(1000, v + step)), 1.0)
        np.testing.assert_array_equal(agg.mean()[0], 2.0 + step)
    with pytest.raises(RecordError, match="more than 3 updates"):
        agg.add(ts(np.zeros(1000)), 1.0)
    agg.reset()
    with pytest.raises(RecordError, match="no update"):
        agg.mean()
    with pytest.raises(RecordError, match="NaN"):
        agg.add(ts(np.full(1000, np.nan)), 1.0)
    with pytest.raises(RecordError, match="shape"):
        agg.add(ts(np.zeros(10)), 1.0)
    assert agg.count == 0


def test_large_tensors_are_reduced_blockwise_exactly() -> None:
    rng = np.random.default_rng(1)
    rows = [rng.standard_normal(150_001).astype(np.float32) for _ in range(5)]
    updates = [ts(r) for r in rows]
    np.testing.assert_array_equal(aggregate(CoordinateMedian(), updates)[0], np.median(np.stack(rows), axis=0))
    s = np.sort(np.stack(rows), axis=0)
    np.testing.assert_allclose(aggregate(TrimmedMean(0.2), updates)[0], s[1:4].mean(axis=0), rtol=1e-5, atol=1e-6)


def test_krum_with_too_few_updates_stops_the_step() -> None:
    agg = BufferedAggregator(ts([0.0]).specs, Krum(1), capacity=5, max_bytes=1 << 20)
    for v in (0.0, 1.0, 2.0):
        agg.add(ts([v]), 1.0)
    with pytest.raises(FederationError, match="krum needs at least 4 updates in a step, got 3"):
        agg.mean()
    agg.add(ts([3.0]), 1.0)
    np.testing.assert_array_equal(agg.mean()[0], [0.0])  # all four score 1: a tie keeps the earliest


def test_strategies_choose_their_aggregator() -> None:
    specs = ts([0.0]).specs
    robust = RobustAggregation(CoordinateMedian(), capacity=4, max_bytes=1 << 20)
    assert isinstance(FedAvg(LocalTraining(1, 0.1)).make_aggregator(specs), RoundAccumulator)
    assert isinstance(FedAvg(LocalTraining(1, 0.1), robust=robust).make_aggregator(specs), BufferedAggregator)
    sync = SyncGradients(SGD(0.1), [True], robust=robust).make_aggregator(specs)
    assert isinstance(sync, BufferedAggregator) and sync.capacity == 4
