"""X-ray physics of the sensor bridge: attenuation, tube spectra, detector channels.

Mass attenuation coefficients come from the bundled NIST XCOM table
(``data/xray_mass_attenuation.csv``), interpolated log-log between tabulated
energies, with lead's K-edge at 88.0 keV handled explicitly (the log-log rule
must not interpolate across an absorption edge).  Transmission through a path is
Beer-Lambert, ``T = exp(-sum_m (mu/rho)_m sigma_m)`` with ``sigma_m`` the areal
density (g/cm^2) of material ``m``; a polychromatic channel averages that over the
channel's energy-weighted spectrum, which is what makes beam hardening and the
K-edge show in the dual-energy ratio.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

# The table itself lives in sorter.attenuation (the measurements use it too); re-exported here.
from ..attenuation import (  # noqa: F401
    MIXTURES,
    PB_ATOMIC_MASS,
    PB_K_EDGE_KEV,
    PB_MASS_FRACTION,
    PB_MU_ABOVE_EDGE,
    PB_MU_BELOW_EDGE,
    AttenuationTable,
    attenuation_table,
)


@dataclass(frozen=True)
class XrayChannels:
    """Energy-weighted responses of the low and high channel of a sandwich detector.

    ``weights[c, k]`` is the fraction of channel ``c``'s air signal carried by photons in
    energy bin ``k``; a channel's transmission through an object is
    ``sum_k weights[c, k] * exp(-mu_k . sigma)``.
    """

    energies_kev: np.ndarray
    weights: np.ndarray  # shape (2, n_energies), rows sum to 1

    def mean_energy(self) -> tuple[float, float]:
        e = self.energies_kev
        return float(self.weights[0] @ e), float(self.weights[1] @ e)


@lru_cache(maxsize=16)
def detector_channels(
    kvp: float = 160.0,
    tube_filter_al_mm: float = 2.0,
    front_csi_mm: float = 0.3,
    mid_filter_cu_mm: float = 0.6,
    back_csi_mm: float = 4.0,
) -> XrayChannels:
    """Channel responses for a tube (Kramers' law spectrum, aluminium filter) and a
    dual-layer energy-integrating detector: a thin front scintillator (low channel),
    a copper filter, a thick back scintillator (high channel).

    The scintillator is modelled with cadmium's attenuation (Z = 48, next to CsI's 53/55
    in the table's absence) at CsI's density 4.51 g/cm^3.
    """
    tab = attenuation_table()
    e = np.arange(20.0, kvp, 6.0) + 1.0  # 6 keV bins: 87 keV just below lead's K-edge, 93 above
    spectrum = np.clip(kvp - e, 0, None) / e  # Kramers: photons per keV
    spectrum *= np.exp(-tab.at("Al", e) * 2.70 * tube_filter_al_mm / 10)
    mu_det = tab.at("Cd", e) * 4.51
    front_abs = 1 - np.exp(-mu_det * front_csi_mm / 10)
    after_front = np.exp(-mu_det * front_csi_mm / 10) * np.exp(-tab.at("Cu", e) * 8.96 * mid_filter_cu_mm / 10)
    back_abs = after_front * (1 - np.exp(-mu_det * back_csi_mm / 10))
    low = spectrum * e * front_abs  # energy-integrating
    high = spectrum * e * back_abs
    w = np.vstack([low / low.sum(), high / high.sum()])
    return XrayChannels(e, w)


def mu_matrix(materials: tuple[str, ...], energies_kev: np.ndarray) -> np.ndarray:
    """``(n_materials, n_energies)`` matrix of mu/rho."""
    tab = attenuation_table()
    return np.vstack([tab.at(m, energies_kev) for m in materials])


def transmission(sigma: np.ndarray, materials: tuple[str, ...], channels: XrayChannels) -> np.ndarray:
    """Polychromatic transmission of both channels.

    Parameters
    ----------
    sigma : array, shape (..., n_materials)
        Areal densities in g/cm^2.
    materials : names of the materials, in the order of ``sigma``'s last axis.
    channels : detector channel responses.

    Returns
    -------
    array, shape (2, ...)
        Transmission of the low and the high channel, in [0, 1].

    Examples
    --------
    >>> import numpy as np
    >>> from sorter.simulate.physics import detector_channels, transmission
    >>> t = transmission(np.array([[0.0], [5.0]]), ("Fe",), detector_channels())
    >>> bool(t[0, 0] == 1.0 and t[0, 1] < t[1, 1])   # air passes; low channel absorbs more
    True
    """
    mu = mu_matrix(materials, channels.energies_kev)  # (M, K)
    shape = sigma.shape[:-1]
    s = sigma.reshape(-1, len(materials))
    optical = s @ mu  # (P, K)
    # Subtract the per-pixel minimum before exp to keep precision for thick paths.
    att = np.exp(-optical)
    t = att @ channels.weights.T  # (P, 2)
    return t.T.reshape((2, *shape))
