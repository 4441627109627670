"""Point matching: hand-made cases, optimality against brute force, empty-set conventions."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from napari_mpt_deblur.detect import (
    DetectionConfig,
    detect_nuclei,
    match_detections,
    match_points,
    points_from_labels,
)


def pair_set(result) -> set[tuple[int, int]]:
    return {tuple(p) for p in result.pairs.tolist()}


def test_perfect_match() -> None:
    pts = np.array([[10.0, 10.0], [20.0, 5.0], [3.0, 40.0]])
    m = match_points(pts[::-1], pts, max_distance=1.0)
    assert (m.tp, m.fp, m.fn) == (3, 0, 0)
    assert m.precision == m.recall == m.f1 == 1.0
    assert pair_set(m) == {(0, 2), (1, 1), (2, 0)}
    assert m.mean_distance == 0.0


def test_one_hit_one_false_positive_one_miss() -> None:
    m = match_points([[0, 0], [10, 10]], [[1, 0], [50, 50]], max_distance=3)
    assert (m.tp, m.fp, m.fn) == (1, 1, 1)
    assert m.only_in_pred.tolist() == [1] and m.only_in_ref.tolist() == [1]
    assert m.precision == m.recall == m.f1 == 0.5
    np.testing.assert_allclose(m.distances, [1.0])


def test_hungarian_beats_greedy() -> None:
    # Greedy nearest-first pairs A with X (distance 1) and leaves B without a partner (B-Y is
    # 4.5 > 2). The optimal one-to-one matching pairs A-Y and B-X: two true positives.
    pred = [[0.0, 0.0], [2.5, 0.0]]  # A, B
    ref = [[1.0, 0.0], [-2.0, 0.0]]  # X, Y
    m = match_points(pred, ref, max_distance=2.0)
    assert m.tp == 2 and m.f1 == 1.0
    assert pair_set(m) == {(0, 1), (1, 0)}


def test_among_maximal_matchings_the_closest_wins() -> None:
    m = match_points([[0.0, 0.0], [1.0, 0.0]], [[0.1, 0.0], [1.1, 0.0]], max_distance=2.0)
    assert pair_set(m) == {(0, 0), (1, 1)}
    np.testing.assert_allclose(m.distances, [0.1, 0.1])


def test_max_distance_is_inclusive() -> None:
    assert match_points([[0, 0]], [[3, 4]], max_distance=5.0).tp == 1
    assert match_points([[0, 0]], [[3, 4]], max_distance=4.999).tp == 0


def test_each_point_matches_at_most_once() -> None:
    m = match_points([[0, 0], [0, 0.5], [0, 1]], [[0, 0.5]], max_distance=1.0)
    assert (m.tp, m.fp, m.fn) == (1, 2, 0)
    assert pair_set(m) == {(1, 0)}  # the exact one


@pytest.mark.parametrize(
    ("pred", "ref", "expected"),
    [
        ([], [], (1.0, 1.0, 1.0)),
        ([], [[1, 1], [5, 5]], (1.0, 0.0, 0.0)),
        ([[1, 1]], [], (0.0, 1.0, 0.0)),
        (np.zeros((0, 2)), np.zeros((0, 2)), (1.0, 1.0, 1.0)),
    ],
)
def test_empty_conventions(pred, ref, expected) -> None:
    m = match_points(pred, ref, max_distance=2.0)
    assert (m.precision, m.recall, m.f1) == expected
    assert m.pairs.shape == (0, 2)
    assert np.isnan(m.mean_distance)


def test_f1_is_harmonic_mean_and_to_dict() -> None:
    rng = np.random.default_rng(0)
    m = match_points(rng.uniform(0, 50, (30, 2)), rng.uniform(0, 50, (20, 2)), max_distance=4)
    assert 0 < m.tp < 20
    harmonic = 2 * m.precision * m.recall / (m.precision + m.recall)
    assert m.f1 == pytest.approx(harmonic)
    summary = m.to_dict()
    assert summary["tp"] + summary["fn"] == 20 and summary["tp"] + summary["fp"] == 30


def _brute_force_best(pred: np.ndarray, ref: np.ndarray, max_distance: float) -> tuple:
    """(most pairs, smallest total distance) over all one-to-one matchings."""
    dist = np.hypot(*(pred[:, None, :] - ref[None, :, :]).transpose(2, 0, 1))
    best = (0, 0.0)
    n, m = len(pred), len(ref)
    small, large = (n, m) if n <= m else (m, n)
    for perm in itertools.permutations(range(large), small):
        pairs = [(i, j) if n <= m else (j, i) for i, j in enumerate(perm)]
        ok = [dist[i, j] for i, j in pairs if dist[i, j] <= max_distance]
        candidate = (len(ok), sum(ok))
        if candidate[0] > best[0] or (candidate[0] == best[0] and candidate[1] < best[1]):
            best = candidate
    return best


@pytest.mark.parametrize("seed", range(12))
def test_optimal_against_brute_force(seed: int) -> None:
    rng = np.random.default_rng(seed)
    pred = rng.uniform(0, 10, (int(rng.integers(1, 6)), 2))
    ref = rng.uniform(0, 10, (int(rng.integers(1, 6)), 2))
    m = match_points(pred, ref, max_distance=3.0)
    n_best, total_best = _brute_force_best(pred, ref, 3.0)
    assert m.tp == n_best
    assert m.distances.sum() == pytest.approx(total_best)
    assert np.all(m.distances <= 3.0)


def test_many_points_stay_fast() -> None:
    # Sparse clusters: solved per connected component, not as one 3000 x 3000 problem.
    rng = np.random.default_rng(1)
    ref = rng.uniform(0, 2000, (3000, 2))
    pred = ref + rng.normal(0, 0.5, ref.shape)
    m = match_points(pred, ref, max_distance=2.0)
    assert m.tp >= 2990


@pytest.mark.parametrize(
    ("args", "error", "message"),
    [
        (([[0, 0]], [[0, 0]], 0.0), ValueError, "max_distance must be a positive"),
        (([[0, 0]], [[0, 0]], float("inf")), ValueError, "max_distance must be a positive"),
        (([[0, 0]], [[0, 0]], "2"), TypeError, "max_distance must be a number"),
        (([[0, 0]], [[0, 0, 0]], 1.0), ValueError, "same number of coordinates"),
        (([[np.nan, 0]], [[0, 0]], 1.0), ValueError, "NaN"),
        (([0, 0], [[0, 0]], 1.0), ValueError, r"\(N, D\)"),
    ],
)
def test_match_points_validation(args, error, message) -> None:
    with pytest.raises(error, match=message):
        match_points(*args)


def test_points_from_labels() -> None:
    labels = np.zeros((10, 12), np.uint16)
    labels[0:2, 0:2] = 7  # non-consecutive values; ordered by label value
    labels[4:7, 8:11] = 3
    labels[9, 0] = 12
    np.testing.assert_allclose(points_from_labels(labels), [[5, 9], [0.5, 0.5], [9, 0]])
    assert points_from_labels(np.zeros((4, 4), int)).shape == (0, 2)
    # a boolean mask: its connected components
    np.testing.assert_allclose(points_from_labels(labels > 0), [[0.5, 0.5], [5, 9], [9, 0]])
    with pytest.raises(TypeError, match="integer dtype"):
        points_from_labels(labels.astype(float))
    with pytest.raises(ValueError, match=">= 0"):
        points_from_labels(-labels.astype(np.int32))


def test_match_detections_accepts_points_labels_and_results() -> None:
    labels = np.zeros((40, 40), np.int32)
    labels[5:10, 5:10] = 1
    labels[20:30, 22:28] = 2
    centroids = points_from_labels(labels)
    shifted = centroids + np.array([1.0, 0.0])
    by_points = match_detections(shifted, centroids, max_distance=1.5)
    by_labels = match_detections(shifted, labels, max_distance=1.5)
    assert by_points.tp == by_labels.tp == 2
    np.testing.assert_array_equal(by_points.pairs, by_labels.pairs)
    assert match_detections(labels, labels, max_distance=0.5).f1 == 1.0
    assert match_detections([], labels, max_distance=1.0).recall == 0.0

    image = (labels > 0).astype(np.float32)
    result = detect_nuclei(
        image, DetectionConfig(method="watershed", diameter_um=6.0, pixel_size_um=1.0)
    )
    assert match_detections(result, labels, max_distance=1.0).f1 == 1.0
    with pytest.raises(ValueError, match="label image"):
        match_detections(np.zeros((4, 4), np.float32), labels, max_distance=1.0)
