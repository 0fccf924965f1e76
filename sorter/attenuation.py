"""The X-ray mass attenuation table (NIST XCOM), shared by the simulator and the measurements.

Mass attenuation coefficients come from the bundled table (``data/xray_mass_attenuation.csv``,
from ``shared/reference``), interpolated log-log between tabulated energies, with lead's K-edge
at 88.0 keV handled explicitly (the log-log rule must not interpolate across an absorption
edge).  The simulator uses it to make transmissions; the measurements use it to express a
line's dual-energy reading in units that do not depend on the line's declared energies
(:mod:`sorter.features.measure`).

Examples
--------
>>> from sorter.attenuation import attenuation_table
>>> mu = attenuation_table().at("Pb", [80.0, 100.0])
>>> bool(mu[1] > mu[0])     # the K-edge at 88 keV: lead absorbs more above it
True
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources

import numpy as np

PB_K_EDGE_KEV = 88.0
PB_MU_ABOVE_EDGE = 7.68  # cm^2/g just above the K-edge (reference README)
PB_MU_BELOW_EDGE = 1.91
PB_ATOMIC_MASS = 207.2
# Pb mass fraction of the lead compounds in the table (for their own edge jump).
PB_MASS_FRACTION = {"Pb": 1.0, "PbO2": 207.2 / 239.2, "PbSO4": 207.2 / 303.26}

# Extra materials the table lacks, as mixtures of tabulated ones (mass fractions).
# MnO2 (alkaline cathode): Mn sits between the tabulated Fe and the Li-Mn oxide; the
# lithium manganese oxide is the closest tabulated manganese compound.
MIXTURES: dict[str, dict[str, float]] = {
    "MnO2_proxy": {"LiMn2O4": 1.0},
    "Wood": {"C": 0.5, "Water": 0.5},
    "Stone": {"Glass_fibre(SiO2)": 0.92, "Fe": 0.08},
    "Glass": {"Glass_fibre(SiO2)": 1.0},
    "Rubber": {"Polypropylene(CH2)n": 0.85, "Glass_fibre(SiO2)": 0.15},
    "FR4": {"Glass_fibre(SiO2)": 0.55, "Polypropylene(CH2)n": 0.30, "Cu": 0.15},
}


@dataclass(frozen=True)
class AttenuationTable:
    energies_kev: np.ndarray  # tabulated energies
    mu: dict[str, np.ndarray]  # material -> mu/rho at tabulated energies

    def at(self, material: str, energies_kev: np.ndarray) -> np.ndarray:
        """mu/rho (cm^2/g) of ``material`` at the given energies."""
        if material in MIXTURES:
            return sum(w * self.at(m, energies_kev) for m, w in MIXTURES[material].items())
        if material not in self.mu:
            raise KeyError(f"material {material!r} is not in the attenuation table")
        e = np.asarray(energies_kev, dtype=float)
        tab_e = self.energies_kev
        tab_mu = self.mu[material].copy()
        w_pb = PB_MASS_FRACTION.get(material)
        out = np.empty_like(e)
        if w_pb is None:
            out[:] = _loglog(e, tab_e, tab_mu)
            return out
        # Below the edge: interpolate over points <= 88 keV; above: over the jump
        # value at 88 keV and the points above it.
        below = e <= PB_K_EDGE_KEV
        lo = tab_e <= PB_K_EDGE_KEV
        out[below] = _loglog(e[below], tab_e[lo], tab_mu[lo])
        jump = w_pb * (PB_MU_ABOVE_EDGE - PB_MU_BELOW_EDGE)
        above_e = np.concatenate([[PB_K_EDGE_KEV + 1e-6], tab_e[~lo]])
        above_mu = np.concatenate([[tab_mu[lo][-1] + jump], tab_mu[~lo]])
        out[~below] = _loglog(e[~below], above_e, above_mu)
        return out


def _loglog(e: np.ndarray, xe: np.ndarray, xm: np.ndarray) -> np.ndarray:
    """Log-log interpolation with linear extrapolation in log-log space at both ends."""
    le, lx, lm = np.log(e), np.log(xe), np.log(xm)
    inside = np.interp(le, lx, lm)
    hi = le > lx[-1]
    if hi.any():
        slope = (lm[-1] - lm[-2]) / (lx[-1] - lx[-2])
        inside[hi] = lm[-1] + slope * (le[hi] - lx[-1])
    lo = le < lx[0]
    if lo.any():
        slope = (lm[1] - lm[0]) / (lx[1] - lx[0])
        inside[lo] = lm[0] + slope * (le[lo] - lx[0])
    return np.exp(inside)


@lru_cache(maxsize=1)
def attenuation_table() -> AttenuationTable:
    """The bundled NIST attenuation table."""
    text = resources.files("sorter").joinpath("data/xray_mass_attenuation.csv").read_text("utf-8")
    rows = list(csv.reader(io.StringIO(text)))
    header = rows[0]
    energies = np.array([float(h.split("_")[-1].replace("kev", "")) for h in header[1:]])
    mu = {r[0]: np.array([float(x) for x in r[1:]]) for r in rows[1:] if r}
    return AttenuationTable(energies, mu)
