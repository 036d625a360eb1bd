"""The noise: OpenDP's Laplace mechanism, and the split of one answer's privacy budget.

Every noisy statistic is a vector (one entry per cell of the answer) whose L1 sensitivity
— how much one patient can move the whole vector — the caller states from the contribution
bounds. OpenDP samples the noise (exactly, without the floating-point flaws of a naive
sampler) and its privacy map confirms the ε each release costs.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from typing import Any

GRANULARITY = -40
"""Noise is sampled on a grid of 2^-40 (OpenDP's ``k``): exact sampling at full float
precision costs ~5x more time, and the map below accounts for the grid."""


@lru_cache(maxsize=1)
def _opendp() -> Any:
    """OpenDP, imported on first use and not through ``opendp.prelude`` (which loads
    scikit-learn: the web process stays light)."""
    from opendp import domains, measurements, metrics
    from opendp.mod import enable_features

    enable_features("contrib")
    return domains, measurements, metrics


@lru_cache(maxsize=256)
def _measurement(size: int, scale: float) -> Any:
    domains, measurements, metrics = _opendp()
    space = (
        domains.vector_domain(domains.atom_domain(T=float, nan=False), size=size),
        metrics.l1_distance(T=float),
    )
    return measurements.make_laplace(*space, scale=scale, k=GRANULARITY)


@lru_cache(maxsize=256)
def _spent(size: int, scale: float, sensitivity: float) -> float:
    """The ε OpenDP's privacy map gives the release (a pure function of its parameters)."""
    return float(_measurement(size, scale).map(sensitivity))


class Noise:
    """Adds calibrated Laplace noise; ``enabled=False`` returns exact values (only the
    security suite's control run uses it, to prove the oracle sees leaks without noise)."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled

    def laplace(
        self, values: Sequence[float], sensitivity: float, epsilon: float
    ) -> tuple[list[float], float]:
        """``values`` with noise for an ε-DP release of the vector; returns them and the
        noise scale (the Laplace scale b: the standard deviation is b·√2)."""
        if epsilon <= 0:
            raise ValueError("epsilon must be positive")
        if sensitivity <= 0 or not values:
            return [float(v) for v in values], 0.0
        # A hair wider than sensitivity / ε, so that the grid's accounting stays within ε.
        scale = sensitivity / epsilon * (1 + 1e-6)
        measurement = _measurement(len(values), scale)
        spent = _spent(len(values), scale, float(sensitivity))
        if spent > epsilon * (1 + 1e-9):  # the map must agree with the calibration
            raise RuntimeError(f"Laplace release would spend ε={spent}, more than {epsilon}")
        exact = [float(v) for v in values]
        if not self.enabled:
            return exact, scale
        return [float(v) for v in measurement(exact)], scale

    def laplace_many(
        self,
        vectors: Sequence[Sequence[float]],
        sensitivities: Sequence[float],
        epsilons: Sequence[float],
    ) -> tuple[list[list[float]], list[float]]:
        """Several vectors, each with its own sensitivity and ε, in one OpenDP release: each
        is multiplied by ε_i / Δ_i (so it moves by at most ε_i), the concatenation — L1
        sensitivity Σ ε_i — gets one Laplace release of scale 1 (ε = Σ ε_i), and each part
        is scaled back (its noise scale is Δ_i / ε_i). The same noise and ε as one release
        per vector, at the cost of one."""
        if not vectors:
            return [], []
        weights = [e / s if s > 0 else 0.0 for e, s in zip(epsilons, sensitivities, strict=True)]
        flat = [float(v) * w for vector, w in zip(vectors, weights, strict=True) for v in vector]
        total = float(sum(e for e, s in zip(epsilons, sensitivities, strict=True) if s > 0))
        released, _scale = self.laplace(flat, total, total) if total else (flat, 0.0)
        out, scales, start = [], [], 0
        for vector, weight in zip(vectors, weights, strict=True):
            part = released[start : start + len(vector)]
            if weight:
                out.append([v / weight for v in part])
                scales.append(1.0 / weight)
            else:
                out.append([float(v) for v in vector])
                scales.append(0.0)
            start += len(vector)
        return out, scales
