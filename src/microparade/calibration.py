"""Per-engagement probability calibration: the hold-out rows, the calibrators, reliability bins.

A leaf (numpy and scikit-learn only) used by the evaluate stage:

- :func:`holdout_mask` — the rows of the valid split that fit the calibrators, chosen by a hash of
  ``row_id`` alone (independent of row order, chunking and the model);
- :func:`fit_calibrator` — one target's calibrator, fit on those rows: ``isotonic`` (a monotone
  piecewise-linear map) or ``platt`` (``sigmoid(a * logit(p) + b)``); a target whose fit
  rows are all negative or all positive gets :class:`Identity` with a note;
- calibrators are plain data: ``to_dict()`` (JSON) / :meth:`Calibrator.from_dict` and ``apply``;
- :func:`reliability_bins` — the data of a reliability diagram.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from .hashing import splitmix64

#: Calibrated probabilities of :class:`Isotonic` stay in ``[CLIP, 1 - CLIP]`` (finite log loss).
CLIP = 1e-6
#: Probabilities are clipped to ``[LOGIT_EPS, 1 - LOGIT_EPS]`` before :class:`Platt` takes their logit.
LOGIT_EPS = 1e-7
#: Weight of the Platt fit's Gaussian prior on ``(a, b)`` around the identity ``(1, 0)``.
PLATT_PRIOR = 1.0
#: The least Platt slope: the calibrated probabilities stay strictly increasing in the model's.
PLATT_MIN_SLOPE = 0.05
#: Salt of the hold-out hash, so the hold-out is unrelated to the chunks' shuffle order
#: (``splitmix64(row_id ^ chunks.seed)``).
_HOLDOUT_SALT = np.uint64(0x63616C6962726174)  # "calibrat"


def holdout_mask(row_id: np.ndarray, fraction: float) -> np.ndarray:
    """True for the rows held out to fit calibrators: ``fraction`` of them in expectation.

    A row is held out when ``splitmix64(row_id ^ salt)``, read as a uniform number in [0, 1), is
    below ``fraction``: the choice depends on the row id alone, so it is the same whatever the
    order of the rows, the model scored, or the fraction's neighbours (a larger fraction holds out
    a superset).
    """
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"the calibration hold-out fraction must be in (0, 1), got {fraction}")
    keys = np.asarray(row_id, dtype=np.int64).view(np.uint64) ^ _HOLDOUT_SALT
    uniform = (splitmix64(keys) >> np.uint64(11)).astype(np.float64) / float(1 << 53)
    return np.asarray(uniform < fraction, dtype=bool)


# ----------------------------------------------------------------------------------------------
# calibrators
# ----------------------------------------------------------------------------------------------
class Calibrator(ABC):
    """A fitted map from a model's probabilities to calibrated ones (one engagement)."""

    kind: ClassVar[str]

    @abstractmethod
    def apply(self, probs: np.ndarray) -> np.ndarray:
        """Calibrated probabilities (float64) of ``probs``."""

    @abstractmethod
    def params(self) -> dict[str, Any]:
        """The calibrator's parameters, JSON-serialisable."""

    def to_dict(self) -> dict[str, Any]:
        """``{"kind": ..., **params}``: what :meth:`from_dict` reads back."""
        return {"kind": self.kind, **self.params()}

    @staticmethod
    def from_dict(data: dict[str, Any]) -> Calibrator:
        """The calibrator of a :meth:`to_dict` result."""
        kind = data.get("kind")
        if kind == Identity.kind:
            return Identity()
        if kind == Isotonic.kind:
            return Isotonic(x=tuple(map(float, data["x"])), y=tuple(map(float, data["y"])))
        if kind == Platt.kind:
            return Platt(a=float(data["a"]), b=float(data["b"]))
        raise ValueError(f"unknown calibrator kind {kind!r}; expected identity, isotonic or platt")


@dataclass(frozen=True)
class Identity(Calibrator):
    """No calibration: probabilities pass unchanged. ``note`` says why, when it was a fallback."""

    kind: ClassVar[str] = "identity"
    note: str = ""

    def apply(self, probs: np.ndarray) -> np.ndarray:
        return np.asarray(probs, dtype=np.float64).copy()

    def params(self) -> dict[str, Any]:
        return {}


@dataclass(frozen=True)
class Isotonic(Calibrator):
    """Linear interpolation between the thresholds ``(x, y)`` of an isotonic fit; constant beyond
    the first and last ``x``; output in ``[CLIP, 1 - CLIP]``."""

    kind: ClassVar[str] = "isotonic"
    x: tuple[float, ...]
    y: tuple[float, ...]

    def apply(self, probs: np.ndarray) -> np.ndarray:
        out = np.interp(np.asarray(probs, dtype=np.float64), np.asarray(self.x), np.asarray(self.y))
        return np.clip(out, CLIP, 1.0 - CLIP)

    def params(self) -> dict[str, Any]:
        return {"x": list(self.x), "y": list(self.y)}


@dataclass(frozen=True)
class Platt(Calibrator):
    """``sigmoid(a * logit(p) + b)``, ``p`` clipped to ``[LOGIT_EPS, 1 - LOGIT_EPS]``; monotone
    (increasing when ``a > 0``), so it keeps the ranking and AP."""

    kind: ClassVar[str] = "platt"
    a: float
    b: float

    def apply(self, probs: np.ndarray) -> np.ndarray:
        z = self.a * _logit(probs) + self.b
        return np.asarray(0.5 * (1.0 + np.tanh(0.5 * z)))  # sigmoid without overflow

    def params(self) -> dict[str, Any]:
        return {"a": self.a, "b": self.b}


def _logit(probs: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(probs, dtype=np.float64), LOGIT_EPS, 1.0 - LOGIT_EPS)
    return np.asarray(np.log(p) - np.log1p(-p))


def fit_calibrator(kind: str, probs: np.ndarray, labels: np.ndarray) -> Calibrator:
    """The ``kind`` calibrator (``isotonic``, ``platt`` or ``none``) of one target, fit on these rows.

    Without both classes among the rows there is nothing to fit: :class:`Identity`, with a note.
    """
    p = np.asarray(probs, dtype=np.float64).reshape(-1)
    y = np.asarray(labels, dtype=np.float64).reshape(-1)
    if p.shape != y.shape:
        raise ValueError(f"probs and labels differ in length: {p.shape[0]} vs {y.shape[0]}")
    if kind == "none":
        return Identity()
    if kind not in (Isotonic.kind, Platt.kind):
        raise ValueError(f"unknown calibration {kind!r}; expected none, isotonic or platt")
    positives = int((y == 1).sum())
    if positives == 0 or positives == y.size:
        which = "no positives" if positives == 0 else "no negatives"
        return Identity(note=f"{which} among the {y.size} fit rows: left uncalibrated")
    return _fit_isotonic(p, y) if kind == Isotonic.kind else _fit_platt(p, y)


def _fit_isotonic(p: np.ndarray, y: np.ndarray) -> Isotonic:
    from sklearn.isotonic import IsotonicRegression

    iso = IsotonicRegression(y_min=CLIP, y_max=1.0 - CLIP, increasing=True, out_of_bounds="clip").fit(p, y)
    return Isotonic(x=tuple(map(float, iso.X_thresholds_)), y=tuple(map(float, iso.y_thresholds_)))


def _fit_platt(p: np.ndarray, y: np.ndarray, max_iter: int = 100) -> Platt:
    """Newton's method on the log loss of ``sigmoid(a * logit(p) + b)``, from the identity (1, 0).

    The targets are Platt's smoothed labels, ``(n+ + 1) / (n+ + 2)`` and ``1 / (n- + 2)``, which keep
    the optimum finite when the classes are separable. A Gaussian prior centred on the identity
    (:data:`PLATT_PRIOR`, the weight of about one row) keeps a fit on a handful of positives close
    to it, and the slope is kept at least :data:`PLATT_MIN_SLOPE` so that the map never reverses or
    flattens the model's ranking (AP is unchanged). A step that does not lower the loss is halved.
    Deterministic: plain numpy sums, no random start.
    """
    n_pos = float(y.sum())
    t = np.where(y == 1, (n_pos + 1.0) / (n_pos + 2.0), 1.0 / (y.size - n_pos + 2.0))
    x = _logit(p)
    w = np.array([1.0, 0.0])
    centre = w.copy()

    def loss(w: np.ndarray) -> float:
        w = np.array([max(w[0], PLATT_MIN_SLOPE), w[1]])
        z = w[0] * x + w[1]
        return float((np.logaddexp(0.0, z) - t * z).sum() + 0.5 * PLATT_PRIOR * ((w - centre) ** 2).sum())

    current = loss(w)
    for _ in range(max_iter):
        z = w[0] * x + w[1]
        q = 0.5 * (1.0 + np.tanh(0.5 * z))
        r, s = q - t, q * (1.0 - q)
        grad = np.array([(r * x).sum(), r.sum()]) + PLATT_PRIOR * (w - centre)
        hess = np.array([[(s * x * x).sum(), (s * x).sum()], [(s * x).sum(), s.sum()]]) + PLATT_PRIOR * np.eye(2)
        step = np.linalg.solve(hess, grad)
        scale = 1.0
        while scale > 1e-10 and not (trial := loss(w - scale * step)) <= current:
            scale /= 2.0
        if scale <= 1e-10:
            break
        w, improvement, current = w - scale * step, current - trial, trial
        w[0] = max(w[0], PLATT_MIN_SLOPE)
        if improvement <= 1e-12 * max(1.0, abs(current)):
            break
    return Platt(a=float(w[0]), b=float(w[1]))


# ----------------------------------------------------------------------------------------------
# reliability diagram
# ----------------------------------------------------------------------------------------------
def reliability_bins(labels: np.ndarray, probs: np.ndarray, n_bins: int = 10) -> dict[str, list[Any]]:
    """A reliability diagram's data: ``n_bins`` equal-width bins of the predicted probability.

    Returns ``{"edges": [n_bins + 1 floats], "count": [...], "mean_predicted": [...],
    "observed_rate": [...]}`` — per bin the rows, their mean predicted probability and their
    positive rate (``None`` where the bin is empty); bin ``i`` is ``[edges[i], edges[i + 1])``, the
    last one closed.

    Equal-width rather than quantile bins: the edges are the same for every model, split and
    calibration, so diagrams before and after calibration (or of two models) compare bin by bin,
    and ``count`` shows where the predictions lie. The cost: for rare engagements most rows share
    the first bins, where the diagram has little resolution.
    """
    if n_bins < 1:
        raise ValueError(f"n_bins must be at least 1, got {n_bins}")
    y = np.asarray(labels, dtype=np.float64).reshape(-1)
    p = np.asarray(probs, dtype=np.float64).reshape(-1)
    if p.shape != y.shape:
        raise ValueError(f"probs and labels differ in length: {p.shape[0]} vs {y.shape[0]}")
    idx = np.clip((p * n_bins).astype(np.int64), 0, n_bins - 1)
    count = np.bincount(idx, minlength=n_bins)
    sum_p = np.bincount(idx, weights=p, minlength=n_bins)
    sum_y = np.bincount(idx, weights=y, minlength=n_bins)

    def per_bin(sums: np.ndarray) -> list[float | None]:
        return [float(s / c) if c else None for s, c in zip(sums, count)]

    return {
        "edges": [i / n_bins for i in range(n_bins + 1)],
        "count": [int(c) for c in count],
        "mean_predicted": per_bin(sum_p),
        "observed_rate": per_bin(sum_y),
    }
