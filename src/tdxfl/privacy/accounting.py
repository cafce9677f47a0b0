"""Epsilon for the engine's central DP, with ``dp-accounting``'s Rényi-DP accountant.

Every step of central DP (:mod:`tdxfl.engine.central_dp`) releases one Gaussian mechanism with
noise multiplier ``z`` (noise std over sensitivity) over the clipped updates of all contributing
workers: no client subsampling, so no amplification by sampling is claimed. Steps compose; the
RDP accountant (``dp_accounting.rdp.RdpAccountant``, add-or-remove-one neighbouring relation,
its default orders) converts the composition to epsilon at the configured delta. RDP's
conversion is an upper bound: the privacy-loss-distribution accountant would report a slightly
smaller epsilon for the same mechanism.
"""

from __future__ import annotations

import dp_accounting
from dp_accounting import rdp

__all__ = ["GaussianAccountant", "calibrate_noise_multiplier"]


class GaussianAccountant:
    """The epsilon spent by repeated releases of a Gaussian mechanism with ``noise_multiplier``,
    at ``delta``; implements ``tdxfl.engine.central_dp.PrivacyAccountant``."""

    def __init__(self, noise_multiplier: float, delta: float) -> None:
        if not noise_multiplier > 0:
            raise ValueError(f"noise_multiplier must be positive, got {noise_multiplier}")
        if not 0 < delta < 1:
            raise ValueError(f"delta must be in (0, 1), got {delta}")
        self.noise_multiplier, self.delta = noise_multiplier, delta
        self.releases = 0
        self._rdp = rdp.RdpAccountant()

    def spend(self) -> None:
        """Record one release."""
        self._rdp.compose(dp_accounting.GaussianDpEvent(self.noise_multiplier))
        self.releases += 1

    def epsilon(self) -> float:
        """Epsilon of all releases so far at ``delta`` (0 before the first)."""
        return float(self._rdp.get_epsilon(self.delta)) if self.releases else 0.0


def calibrate_noise_multiplier(target_epsilon: float, delta: float, releases: int) -> float:
    """The smallest noise multiplier (within 1e-6) whose ``releases`` Gaussian releases spend at
    most ``target_epsilon`` at ``delta``, by the same RDP accounting as ``GaussianAccountant``."""
    if not (target_epsilon > 0 and releases > 0):
        raise ValueError(f"target_epsilon and releases must be positive, got {target_epsilon}, {releases}")

    def composed(z: float) -> dp_accounting.DpEvent:
        return dp_accounting.SelfComposedDpEvent(dp_accounting.GaussianDpEvent(z), releases)

    z = dp_accounting.calibrate_dp_mechanism(
        rdp.RdpAccountant,
        composed,
        target_epsilon,
        delta,
        dp_accounting.LowerEndpointAndGuess(0.0, 1.0),
    )
    return float(z)
