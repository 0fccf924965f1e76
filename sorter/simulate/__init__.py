"""Physics-grounded simulator of the sensor bridge.

``items`` builds physical item instances from the catalogue, ``geometry`` projects them
along the X-ray beam, ``physics`` holds the attenuation data and detector model,
``sensors`` renders what each sensor reports, and ``run`` draws an intake mix and writes
a ``sorter-log/1`` log.
"""

from .run import MIXES, SimConfig, simulate_item, simulate_log

__all__ = ["MIXES", "SimConfig", "simulate_item", "simulate_log"]
