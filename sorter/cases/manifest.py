"""A closed case's printable manifest: one HTML page (Jinja2), X-ray thumbnails inline.

The page carries what a shipper and the receiving recycler need: the case id, line
and dates, every item (id, likely product, estimated energy and its bound, weight,
an X-ray thumbnail), the summed bound against the limit, the gross mass, the
transport classification of damaged/defective Li-ion batteries with the package
marking, and the consignor/permit block of a small file (``--consignor FILE``,
TOML or JSON; keys in :data:`CONSIGNOR_KEYS`, documented in ``docs/cases.md``).

Needs the ``cases`` extra (Jinja2); the packing core does not.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import logging
import math
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from .. import __version__
from ..errors import ConfigError, SorterError
from .packing import Case, StationConfig
from .plan import PlannedItem, iso

logger = logging.getLogger(__name__)

# Transport facts (see the project's reference notes and docs/cases.md).
PROPER_SHIPPING_NAMES = {
    "UN3480": "LITHIUM ION BATTERIES",
    "UN3481": "LITHIUM ION BATTERIES CONTAINED IN EQUIPMENT",
}
HAZARD_CLASS = "9"
REGULATION = "49 CFR 173.185(f)"
MARKING = "DAMAGED/DEFECTIVE LITHIUM ION BATTERIES"

CONSIGNOR_KEYS = {
    "consignor": "name of the shipper (the plant)",
    "address": "the shipper's address (several lines allowed)",
    "phone": "the shipper's phone",
    "emergency_phone": "24-hour emergency response telephone number",
    "permit": "the special permit, e.g. 'DOT-SP 12345 (2.1 kWh per case)'",
    "consignee": "the receiving recycler",
    "consignee_address": "the receiving recycler's address",
    "un_number": "UN3480 (default) or UN3481 (batteries contained in equipment)",
    "packaging": "the fire-safe case, e.g. its make and model",
    "notes": "anything else to print on every manifest",
}
THUMB_PX = 72


@dataclass(frozen=True)
class Consignor:
    """The consignor/permit block (every field optional; unknown keys refused)."""

    values: Mapping[str, str]

    @property
    def un_number(self) -> str:
        return self.values.get("un_number", "UN3480")

    @property
    def proper_shipping_name(self) -> str:
        return PROPER_SHIPPING_NAMES[self.un_number]


def load_consignor(path: str | Path | None) -> Consignor:
    """Read ``--consignor FILE`` (``.toml`` or ``.json``): a flat table of strings."""
    if path is None:
        return Consignor({})
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"--consignor {p}: cannot read it ({err}); pass a TOML or JSON file") from err
    try:
        data = json.loads(text) if p.suffix == ".json" else tomllib.loads(text)
    except (json.JSONDecodeError, tomllib.TOMLDecodeError) as err:
        raise ConfigError(f"--consignor {p}: not valid {'JSON' if p.suffix == '.json' else 'TOML'} ({err})") from err
    if not isinstance(data, dict):
        raise ConfigError(f'--consignor {p}: expected a table of keys, e.g. consignor = "Plant name"')
    unknown = sorted(set(data) - set(CONSIGNOR_KEYS))
    if unknown:
        raise ConfigError(f"--consignor {p}: unknown key(s) {unknown}; valid keys: {sorted(CONSIGNOR_KEYS)}")
    bad = [k for k, v in data.items() if not isinstance(v, str)]
    if bad:
        raise ConfigError(f"--consignor {p}: {', '.join(bad)} must be text (quote the value)")
    if data.get("un_number", "UN3480") not in PROPER_SHIPPING_NAMES:
        raise ConfigError(f"--consignor {p}: un_number must be one of {sorted(PROPER_SHIPPING_NAMES)}")
    return Consignor(dict(data))


THUMB_EXPIRED = "expired"
"""What :func:`xray_thumbnail` returns for an image the retention policy deleted."""


def xray_thumbnail(log_dir: str | None, rel: str | None, px: int = THUMB_PX) -> str | None:
    """A small grey-scale PNG data URI of an item's X-ray (dark = absorbing); ``None`` when
    the image is missing or unusable (the page shows a placeholder), :data:`THUMB_EXPIRED`
    when the retention policy deleted it (the page says "expired")."""
    if not log_dir or not rel:
        return None
    import cv2

    from ..errors import ImageExpiredError
    from ..logformat import load_png, resolve_image_path

    try:
        img = load_png(resolve_image_path(log_dir, rel), kind="xray")
    except ImageExpiredError:
        return THUMB_EXPIRED
    except (SorterError, OSError, ValueError) as err:
        logger.warning("no thumbnail for %s in %s: %s", rel, log_dir, err)
        return None
    t = np.clip(img.astype(np.float32) / 65535.0, 1e-6, 1.0)
    # Attenuation on a log scale: a Li-ion pack (T 0.01-0.1) shows its cells, lead stays black.
    v = (255.0 * (1.0 - np.clip(-np.log(t) / 8.0, 0.0, 1.0))).astype(np.uint8)
    h, w = v.shape
    s = px / max(h, w)
    if s < 1:
        v = cv2.resize(v, (max(1, round(w * s)), max(1, round(h * s))), interpolation=cv2.INTER_AREA)
    ok, buf = cv2.imencode(".png", v)
    if not ok:
        return None
    return "data:image/png;base64," + base64.b64encode(buf.tobytes()).decode("ascii")


def _fmt(x: float, nd: int = 1) -> str:
    return "—" if x is None or not math.isfinite(x) else f"{x:,.{nd}f}"


def _env() -> Any:
    try:
        import jinja2
    except ImportError as err:
        raise SorterError("manifests need Jinja2: pip install 'sorter[cases]'") from err
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("sorter.cases", "templates"),
        autoescape=jinja2.select_autoescape(["html", "j2"]),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["num"] = _fmt
    return env


def render_manifest(
    case: Case,
    items: Sequence[PlannedItem],
    config: StationConfig,
    consignor: Consignor,
    *,
    scores: str = "",
    thumbnails: bool = True,
) -> str:
    """The HTML page of one case (a string; UTF-8 when written)."""
    rows = []
    for it in items:
        rows.append(
            {
                "seq": it.seq,
                "item_id": it.item_id,
                "line_no": it.line_no,
                "product": it.product or "",
                "energy_wh": it.item.energy_wh,
                "energy_wh_upper": it.item.energy_wh_upper,
                "weight_g": it.item.weight_g,
                "t": iso(it.item.t).replace("T", " ").rstrip("Z"),
                "thumb": xray_thumbnail(it.info.log_dir, it.info.xray) if thumbnails else None,
            }
        )
    n = len(rows)
    density = "normal" if n <= 10 else "dense" if n <= 26 else "tiny"
    fill = case.upper_mwh / config.limit_mwh if config.limit_mwh else math.nan
    ctx = {
        "case": case,
        "config": config,
        "rows": rows,
        "density": density,
        "opened": iso(case.opened_t),
        "closed": iso(case.closed_t),
        "fill_pct": 100.0 * fill,
        "energy_wh": case.energy_wh,
        "upper_wh": case.upper_wh,
        "mass_kg": case.mass_g / 1000.0,
        "mass_unknown": case.mass_unknown,
        "n_missing_energy": sum(1 for r in rows if not math.isfinite(r["energy_wh"])),
        "consignor": consignor,
        "un_number": consignor.un_number,
        "psn": consignor.proper_shipping_name,
        "hazard_class": HAZARD_CLASS,
        "regulation": REGULATION,
        "marking": MARKING,
        "generated": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "version": __version__,
        "scores": Path(scores).name if scores else "",
    }
    return _env().get_template("manifest.html.j2").render(**ctx)


def manifest_renderer(config: StationConfig, consignor: Consignor, *, scores: str = "", thumbnails: bool = True) -> Any:
    """``render(case, items)`` for :func:`sorter.cases.plan.write_plan`."""
    _env()  # fail early, before anything is written, if Jinja2 is missing

    def render(case: Case, items: Sequence[PlannedItem]) -> str:
        return render_manifest(case, items, config, consignor, scores=scores, thumbnails=thumbnails)

    return render
