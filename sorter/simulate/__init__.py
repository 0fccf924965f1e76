"""Physics-grounded simulator of the sensor bridge.

``items`` builds physical item instances from the catalogue, ``geometry`` projects them
along the X-ray beam, ``physics`` holds the attenuation data and detector model,
``sensors`` renders what each sensor reports (lines a and b), ``linec`` is line c's whole
sensor route of its own, and ``run`` draws an intake mix and writes a ``sorter-log/1`` log.
"""

from .items import PRODUCT_FAMILIES
from .run import ALL_LINES, MIXES, SimConfig, simulate_item, simulate_log

__all__ = ["ALL_LINES", "MIXES", "PRODUCT_FAMILIES", "SimConfig", "simulate_item", "simulate_log"]
