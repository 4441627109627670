"""Score detections against reference points or labels: one-to-one matching, precision, recall, F1.

Each predicted point may match at most one reference point and vice versa, and only when they
are at most ``max_distance`` apart. Among all such one-to-one matchings the one with the most
pairs, and among those the smallest total distance, is chosen (Hungarian algorithm,
:func:`scipy.optimize.linear_sum_assignment`). Greedy nearest-neighbour matching would
undercount true positives in crowded fields, which is exactly where blur and deblurring matter.

Conventions for empty inputs (every ratio 0/0 is 1.0, because nothing was asked and nothing
went wrong):

- no predictions: precision = 1.0; recall = 0.0 if there are references, else 1.0;
- no references: recall = 1.0; precision = 0.0 if there are predictions, else 1.0;
- F1 = 2·TP / (2·TP + FP + FN), and 1.0 when both sets are empty. This equals the harmonic
  mean of precision and recall whenever that is defined, and is 0.0 whenever exactly one
  set is empty.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = [
    "MatchResult",
    "match_detections",
    "match_points",
    "points_from_labels",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class MatchResult:
    """Outcome of matching predicted points to reference points.

    Attributes
    ----------
    pairs : (K, 2) ndarray of int64
        Matched index pairs ``(index into pred, index into ref)``, sorted by ``pred`` index.
    distances : (K,) ndarray of float64
        Distance of every matched pair, in the units of the input coordinates.
    only_in_pred : (FP,) ndarray of int64
        Indices of predicted points without a partner (false positives).
    only_in_ref : (FN,) ndarray of int64
        Indices of reference points without a partner (false negatives).
    n_pred, n_ref : int
        Number of predicted and reference points.
    max_distance : float
        Largest distance at which a pair counted as a match.
    """

    pairs: np.ndarray
    distances: np.ndarray
    only_in_pred: np.ndarray
    only_in_ref: np.ndarray
    n_pred: int
    n_ref: int
    max_distance: float

    @property
    def tp(self) -> int:
        """True positives: matched pairs."""
        return int(self.pairs.shape[0])

    @property
    def fp(self) -> int:
        """False positives: predictions without a reference partner."""
        return self.n_pred - self.tp

    @property
    def fn(self) -> int:
        """False negatives: references without a predicted partner."""
        return self.n_ref - self.tp

    @property
    def precision(self) -> float:
        """TP / (TP + FP); 1.0 when there are no predictions (see the module docstring)."""
        return 1.0 if self.n_pred == 0 else self.tp / self.n_pred

    @property
    def recall(self) -> float:
        """TP / (TP + FN); 1.0 when there are no references (see the module docstring)."""
        return 1.0 if self.n_ref == 0 else self.tp / self.n_ref

    @property
    def f1(self) -> float:
        """2·TP / (2·TP + FP + FN); 1.0 when both sets are empty."""
        denominator = 2 * self.tp + self.fp + self.fn
        return 1.0 if denominator == 0 else 2 * self.tp / denominator

    @property
    def mean_distance(self) -> float:
        """Mean distance of matched pairs (localisation error); NaN without matches."""
        return float(self.distances.mean()) if self.tp else float("nan")

    def to_dict(self) -> dict[str, Any]:
        """Summary numbers as plain Python values (for tables, JSON and logging)."""
        return {
            "n_pred": self.n_pred,
            "n_ref": self.n_ref,
            "tp": self.tp,
            "fp": self.fp,
            "fn": self.fn,
            "precision": self.precision,
            "recall": self.recall,
            "f1": self.f1,
            "mean_distance": self.mean_distance,
            "max_distance": self.max_distance,
        }


def match_points(pred: Any, ref: Any, max_distance: float) -> MatchResult:
    """Match predicted to reference points one-to-one within ``max_distance``.

    Parameters
    ----------
    pred, ref : (N, D) and (M, D) array_like
        Point coordinates (e.g. (row, col) in pixels), same units and dimension ``D``.
        Empty inputs may also be given as ``[]``.
    max_distance : float
        Largest Euclidean distance (inclusive) at which two points may be paired, in the units
        of the coordinates; half the typical nucleus diameter is a common choice.

    Returns
    -------
    MatchResult
        Pairs, unmatched indices and precision / recall / F1 (see the module docstring for the
        conventions when either set is empty).

    Raises
    ------
    ValueError
        If the arrays are not 2-D with matching dimension, contain NaN/Inf, or
        ``max_distance`` is not a positive finite number.

    Examples
    --------
    >>> m = match_points([[0, 0], [10, 10]], [[1, 0], [50, 50]], max_distance=3)
    >>> m.tp, m.fp, m.fn, m.f1
    (1, 1, 1, 0.5)
    """
    from scipy.optimize import linear_sum_assignment
    from scipy.sparse.csgraph import connected_components
    from scipy.spatial import cKDTree

    if isinstance(max_distance, bool) or not isinstance(max_distance, int | float | np.number):
        raise TypeError(f"max_distance must be a number; got {type(max_distance).__name__}")
    if not (np.isfinite(max_distance) and max_distance > 0):
        raise ValueError(f"max_distance must be a positive finite number; got {max_distance!r}")
    max_distance = float(max_distance)
    pred_arr = _as_points(pred, "pred")
    ref_arr = _as_points(ref, "ref")
    if pred_arr.shape[0] and ref_arr.shape[0] and pred_arr.shape[1] != ref_arr.shape[1]:
        raise ValueError(
            f"pred and ref must have the same number of coordinates per point; got "
            f"{pred_arr.shape[1]} and {ref_arr.shape[1]}"
        )
    n_pred, n_ref = len(pred_arr), len(ref_arr)
    pairs: list[tuple[int, int]] = []
    if n_pred and n_ref:
        # Only pairs within max_distance can match, so the bipartite graph splits into small
        # independent clusters; solving each densely keeps memory O(pairs), not O(N*M).
        close = cKDTree(pred_arr).sparse_distance_matrix(
            cKDTree(ref_arr), max_distance, output_type="ndarray"
        )
        if close.size:
            graph = _bipartite_graph(close["i"], close["j"], n_pred, n_ref)
            _, component = connected_components(graph, directed=False)
            pred_comp, ref_comp = component[:n_pred], component[n_pred:]
            for comp in np.unique(pred_comp[close["i"]]):
                p_idx = np.flatnonzero(pred_comp == comp)
                r_idx = np.flatnonzero(ref_comp == comp)
                diff = pred_arr[p_idx, None, :] - ref_arr[None, r_idx, :]
                dist = np.sqrt((diff**2).sum(-1))
                allowed = dist <= max_distance
                # A forbidden pair costs more than any complete set of allowed pairs, so the
                # optimum first maximises the number of allowed pairs, then minimises distance.
                big = max_distance * (min(dist.shape) + 1) + 1.0
                cost = np.where(allowed, dist, big)
                rows, cols = linear_sum_assignment(cost)
                ok = allowed[rows, cols]
                pairs.extend(zip(p_idx[rows[ok]].tolist(), r_idx[cols[ok]].tolist()))
    pair_arr = np.array(sorted(pairs), dtype=np.int64).reshape(-1, 2)
    if pair_arr.size:
        distances = np.sqrt(((pred_arr[pair_arr[:, 0]] - ref_arr[pair_arr[:, 1]]) ** 2).sum(-1))
    else:
        distances = np.zeros(0, dtype=np.float64)
    only_pred = np.setdiff1d(np.arange(n_pred), pair_arr[:, 0]).astype(np.int64)
    only_ref = np.setdiff1d(np.arange(n_ref), pair_arr[:, 1]).astype(np.int64)
    return MatchResult(
        pairs=pair_arr,
        distances=distances.astype(np.float64),
        only_in_pred=only_pred,
        only_in_ref=only_ref,
        n_pred=n_pred,
        n_ref=n_ref,
        max_distance=max_distance,
    )


def points_from_labels(labels: Any) -> np.ndarray:
    """Centroids of the objects of a label image, ordered by label value.

    Parameters
    ----------
    labels : (M, N) or (P, M, N) array_like of int
        0 is background; every other value is one object. Label values need not be
        consecutive (missing values are skipped, not returned as NaN).

    Returns
    -------
    (K, ndim) ndarray of float64
        Area-weighted centroid of every object, in pixel index coordinates.

    Raises
    ------
    TypeError
        If ``labels`` does not have an integer (or boolean) dtype.
    ValueError
        If ``labels`` has negative values or fewer than 2 dimensions.
    """
    array = np.asarray(labels)
    if array.dtype.kind == "b":
        from scipy import ndimage as ndi

        array = ndi.label(array)[0]
    if array.dtype.kind not in "ui":
        raise TypeError(f"labels must have an integer dtype; got {array.dtype}")
    if array.ndim < 2:
        raise ValueError(f"labels must be a 2-D or 3-D label image; got shape {array.shape}")
    if array.size and array.min() < 0:
        raise ValueError(f"labels must be >= 0 (0 = background); got minimum {array.min()}")
    values, inverse = np.unique(array.ravel(), return_inverse=True)
    counts = np.bincount(inverse, minlength=values.size).astype(np.float64)
    coords = np.indices(array.shape).reshape(array.ndim, -1)
    sums = np.stack(
        [np.bincount(inverse, weights=c, minlength=values.size) for c in coords], axis=1
    )
    centroids = sums / counts[:, None]
    return centroids[values != 0]


def match_detections(pred: Any, ref: Any, max_distance: float) -> MatchResult:
    """Match detections given as points, label images or :class:`DetectionResult`.

    Parameters
    ----------
    pred, ref : DetectionResult or array_like
        A ``DetectionResult`` uses its ``points``. An array of shape (N, 2) is taken as points
        ((row, col) per line); any other 2-D integer/boolean array is a label image whose
        object centroids are matched. (So a label image must be wider than 2 pixels, and an
        empty point list is a (0, 2) array or ``[]``.)
    max_distance : float
        Largest centroid distance of a match, in pixels.

    Returns
    -------
    MatchResult
        As :func:`match_points`.
    """
    return match_points(_to_points(pred, "pred"), _to_points(ref, "ref"), max_distance)


def _to_points(obj: Any, name: str) -> np.ndarray:
    points = getattr(obj, "points", None)
    if points is not None and not isinstance(obj, np.ndarray):
        return _as_points(points, f"{name}.points")
    array = np.asarray(obj)
    if array.size == 0:
        return np.zeros((0, 2), dtype=np.float64)
    if array.ndim == 2 and array.shape[1] == 2:
        return _as_points(array, name)
    if array.ndim == 2 and array.dtype.kind in "uib":
        return points_from_labels(array)
    raise ValueError(
        f"{name} must be a DetectionResult, an (N, 2) array of points or a 2-D integer label "
        f"image; got an array of shape {array.shape} and dtype {array.dtype}"
    )


def _as_points(points: Any, name: str) -> np.ndarray:
    array = np.asarray(points, dtype=np.float64)
    if array.size == 0:
        return array.reshape(0, array.shape[1] if array.ndim == 2 else 2)
    if array.ndim != 2:
        raise ValueError(f"{name} must be an (N, D) array of points; got shape {array.shape}")
    if not np.isfinite(array).all():
        raise ValueError(f"{name} contains NaN or infinite coordinates")
    return array


def _bipartite_graph(rows: np.ndarray, cols: np.ndarray, n_pred: int, n_ref: int) -> Any:
    from scipy.sparse import coo_matrix

    size = n_pred + n_ref
    data = np.ones(rows.size, dtype=np.int8)
    return coo_matrix((data, (rows, cols + n_pred)), shape=(size, size)).tocsr()
