"""The RDP accountant and the noise calibration against dp-accounting itself."""

from __future__ import annotations

import itertools

import dp_accounting
import pytest
from dp_accounting import pld, rdp

from tdxfl.privacy.accounting import GaussianAccountant, calibrate_noise_multiplier


def reference_epsilon(z: float, releases: int, delta: float) -> float:
    accountant = rdp.RdpAccountant()
    accountant.compose(dp_accounting.GaussianDpEvent(z), releases)
    return float(accountant.get_epsilon(delta))


@pytest.mark.parametrize(("z", "delta"), [(1.0, 1e-5), (0.5, 1e-6), (4.0, 1e-3)])
def test_epsilon_is_dp_accountings_and_grows_with_every_release(z: float, delta: float) -> None:
    accountant = GaussianAccountant(z, delta)
    assert accountant.epsilon() == 0.0
    eps = []
    for k in range(1, 9):
        accountant.spend()
        eps.append(accountant.epsilon())
        assert eps[-1] == pytest.approx(reference_epsilon(z, k, delta), rel=1e-12)
    assert all(a < b for a, b in itertools.pairwise(eps)) and accountant.releases == 8


def test_rdp_is_an_upper_bound_on_the_pld_epsilon() -> None:
    """What the module documents: the tighter PLD accountant reports a little less."""
    tight = pld.PLDAccountant(value_discretization_interval=1e-3)
    tight.compose(dp_accounting.GaussianDpEvent(1.0), 8)
    ours = GaussianAccountant(1.0, 1e-5)
    for _ in range(8):
        ours.spend()
    assert tight.get_epsilon(1e-5) < ours.epsilon() < 1.2 * tight.get_epsilon(1e-5)


@pytest.mark.parametrize(("target", "releases"), [(1.0, 1), (3.0, 8), (8.0, 200)])
def test_calibrated_noise_just_meets_the_target(target: float, releases: int) -> None:
    z = calibrate_noise_multiplier(target, 1e-5, releases)
    assert reference_epsilon(z, releases, 1e-5) <= target * (1 + 1e-6)
    assert reference_epsilon(z * 0.99, releases, 1e-5) > target  # not more noise than needed


def test_bad_parameters_are_refused() -> None:
    with pytest.raises(ValueError, match="noise_multiplier must be positive"):
        GaussianAccountant(0.0, 1e-5)
    with pytest.raises(ValueError, match="delta"):
        GaussianAccountant(1.0, 1.0)
    with pytest.raises(ValueError, match="must be positive"):
        calibrate_noise_multiplier(1.0, 1e-5, 0)
