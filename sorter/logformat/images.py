"""PNG safety: :func:`resolve_image_path`, :func:`load_png` (header checked before decoding),
:func:`encode_png` and :func:`load_item`."""

from __future__ import annotations

import logging
import os
import struct
import zlib
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Literal

import cv2
import numpy as np

from sorter.errors import ImageError, ImageExpiredError, UnsafePathError
from sorter.logformat.constants import ITEMS_FILE, MAX_IMAGE_PIXELS, StrPath
from sorter.logformat.expiry import EXPIRED_FILE, EXPIRED_PROBLEM, is_expired
from sorter.logformat.records import _show
from sorter.readings import (
    IMAGE_FIELDS,
    Item,
    ItemRecord,
    LogMeta,
)

logger = logging.getLogger(__name__)


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_HEADER_LEN = 33  # signature + IHDR length, type, 13 data bytes, CRC
# Bit depths PNG allows for each colour type, and the channels each decodes to.
_PNG_DEPTHS: dict[int, tuple[int, ...]] = {
    0: (1, 2, 4, 8, 16),
    2: (8, 16),
    3: (1, 2, 4, 8),
    4: (8, 16),
    6: (8, 16),
}
_PNG_CHANNELS = {0: 1, 2: 3, 3: 3, 4: 2, 6: 4}
_PNG_COLOUR_NAMES = {
    0: "grayscale",
    2: "RGB",
    3: "palette",
    4: "grayscale+alpha",
    6: "RGBA",
}


def resolve_image_path(log_dir: StrPath, rel: str) -> Path:
    """Resolve an image path from the log, refusing anything outside the log directory.

    Parameters
    ----------
    log_dir : str or path-like
        The log directory.
    rel : str
        The path as written in ``items.jsonl``: relative, ``/``-separated.

    Returns
    -------
    Path
        The absolute, symlink-free path of the image (which need not exist).

    Raises
    ------
    UnsafePathError
        For an absolute path, a ``..`` that leaves the log directory, or a symlink
        whose target lies outside it.

    Examples
    --------
    >>> resolve_image_path("/data/log1", "images/A1_rgb.png").name
    'A1_rgb.png'
    >>> resolve_image_path("/data/log1", "../log2/x.png")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    sorter.errors.UnsafePathError: image path '../log2/x.png' resolves outside the log ...
    """
    if not isinstance(rel, str) or not rel:
        raise UnsafePathError(
            f"image path {_show(rel)} is not a non-empty string; write a path relative "
            f"to the log directory {log_dir}, e.g. images/A1_rgb.png"
        )
    if "\x00" in rel or PurePosixPath(rel).is_absolute() or PureWindowsPath(rel).anchor:
        raise UnsafePathError(
            f"image path {_show(rel)} is absolute or malformed; write it relative to the "
            f"log directory {log_dir}, e.g. images/A1_rgb.png"
        )
    base = Path(log_dir).resolve()
    try:
        target = (base / rel).resolve()
    except (OSError, RuntimeError) as err:  # symlink loops
        raise UnsafePathError(
            f"image path {_show(rel)} in {log_dir} cannot be resolved ({err}); remove the symlink loop"
        ) from err
    if not target.is_relative_to(base):
        raise UnsafePathError(
            f"image path {_show(rel)} resolves outside the log directory {log_dir}; "
            "image paths must stay inside the log directory (e.g. images/A1_rgb.png)"
        )
    return target


def load_png(
    path: StrPath,
    *,
    kind: Literal["xray", "rgb"],
    max_pixels: int = MAX_IMAGE_PIXELS,
) -> np.ndarray:
    """Load a log image, checking its PNG header before decoding.

    Parameters
    ----------
    path : str or path-like
        The PNG file.
    kind : {"xray", "rgb"}
        ``"xray"``: single-channel 16-bit transmission, returned as a 2-D
        ``uint16`` array.  ``"rgb"``: 8-bit colour (RGB, RGBA or palette),
        returned as ``H x W x 3`` ``uint8`` in RGB order (alpha dropped).
    max_pixels : int
        Largest width x height accepted; larger images are refused from the header
        alone, so a decompression bomb is never decoded.

    Raises
    ------
    ImageExpiredError
        If the file was deleted by a retention run (its folder's ``EXPIRED`` lists it):
        not a fault, the message says "image expired".
    ImageError
        If the file is missing, empty, not a PNG, too large, of the wrong kind,
        corrupt or truncated; the message names the file and the fix.

    Examples
    --------
    >>> import tempfile, pathlib, numpy as np
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "x.png"
    >>> _ = p.write_bytes(encode_png(np.full((4, 6), 65535, np.uint16)))
    >>> load_png(p, kind="xray").shape
    (4, 6)
    """
    if kind not in ("xray", "rgb"):
        raise ImageError(f"kind must be 'xray' or 'rgb', got {kind!r}")
    try:
        with open(path, "rb") as fh:
            header = fh.read(_PNG_HEADER_LEN)
            width, height, depth, colour = _check_png_header(header, path, kind, max_pixels)
            size = os.fstat(fh.fileno()).st_size
            limit = _max_png_bytes(width, height, depth, colour)
            if size > limit:
                raise ImageError(
                    f"{path}: file is {size} bytes, far more than a {width}x{height} PNG "
                    f"needs (limit {limit}); refusing to read it — rewrite the image "
                    "without large ancillary chunks"
                )
            data = header + fh.read()
    except FileNotFoundError as err:
        if is_expired(path):
            raise ImageExpiredError(
                f"{path}: {EXPIRED_PROBLEM} (deleted by the retention policy, listed in its folder's "
                f"{EXPIRED_FILE} file); the item's other readings are still in the log"
            ) from err
        raise ImageError(
            f"{path}: image file not found; check the path in items.jsonl and that the "
            "images folder was copied with the log"
        ) from err
    except OSError as err:
        raise ImageError(f"{path}: cannot read the image ({err}); check the file and its permissions") from err
    try:
        img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    except cv2.error as err:
        raise ImageError(
            f"{path}: the PNG could not be decoded ({_show(str(err), 120)}); the file is "
            "corrupt — re-export it from the recorder"
        ) from err
    if img is None:
        raise ImageError(
            f"{path}: the PNG could not be decoded (corrupt or truncated: the recorder "
            "may have crashed while writing it); re-export it or set the field to null"
        )
    if kind == "xray":
        if img.ndim != 2 or img.dtype != np.uint16:
            raise ImageError(
                f"{path}: decoded to {img.dtype} with shape {img.shape}, expected a 2-D "
                "uint16 xray image; rewrite it as single-channel 16-bit PNG"
            )
        return img
    if img.ndim != 3 or img.dtype != np.uint8 or img.shape[2] not in (3, 4):
        raise ImageError(
            f"{path}: decoded to {img.dtype} with shape {img.shape}, expected an 8-bit "
            "colour image; rewrite it as 8-bit RGB PNG"
        )
    code = cv2.COLOR_BGR2RGB if img.shape[2] == 3 else cv2.COLOR_BGRA2RGB
    return cv2.cvtColor(img, code)


def _check_png_header(header: bytes, path: StrPath, kind: str, max_pixels: int) -> tuple[int, int, int, int]:
    if not header:
        raise ImageError(
            f"{path}: image file is empty (0 bytes; the recorder probably crashed while "
            "writing it); re-export the image or set the field to null"
        )
    if not (header.startswith(_PNG_SIGNATURE) or _PNG_SIGNATURE.startswith(header)):
        raise ImageError(
            f"{path}: not a PNG file (bad signature); log images must be PNG — "
            "re-export it with cv2.imwrite(..., '.png') or sorter.logformat.encode_png"
        )
    if len(header) < _PNG_HEADER_LEN:
        raise ImageError(
            f"{path}: truncated PNG ({len(header)} bytes, no complete header); "
            "re-export the image or set the field to null"
        )
    length, ctype = struct.unpack(">I4s", header[8:16])
    ihdr, crc = header[16:29], int.from_bytes(header[29:33], "big")
    if length != 13 or ctype != b"IHDR" or zlib.crc32(ctype + ihdr) != crc:
        raise ImageError(f"{path}: corrupt PNG header (IHDR chunk missing or failing its CRC); re-export the image")
    width, height, depth, colour, _comp, _filt, _interlace = struct.unpack(">IIBBBBB", ihdr)
    if not (0 < width < 2**31 and 0 < height < 2**31) or depth not in _PNG_DEPTHS.get(colour, ()):
        raise ImageError(
            f"{path}: invalid PNG header ({width}x{height}, bit depth {depth}, colour type "
            f"{colour}); re-export the image"
        )
    if width * height > max_pixels:
        raise ImageError(
            f"{path}: PNG declares {width}x{height} = {width * height} pixels, more than "
            f"the limit of {max_pixels}; refusing to decode it (possible decompression "
            "bomb) — if the image is genuine, pass a larger max_pixels"
        )
    what = f"{depth}-bit {_PNG_COLOUR_NAMES[colour]}"
    if kind == "xray" and (colour != 0 or depth != 16):
        raise ImageError(
            f"{path}: is {what}, but an xray image must be single-channel 16-bit "
            "grayscale (air-normalised transmission, 65535 = air); write the detector's "
            "16-bit values, not an 8-bit or colour rendering"
        )
    if kind == "rgb" and (colour not in (2, 3, 6) or depth == 16):
        raise ImageError(
            f"{path}: is {what}, but an rgb image must be 8-bit colour (RGB, RGBA or "
            "palette); write the camera's 8-bit colour frame"
        )
    return width, height, depth, colour


def _max_png_bytes(width: int, height: int, depth: int, colour: int) -> int:
    """Generous bound on the size of a PNG of these dimensions.

    Deflate never grows data by more than a few bytes per 64 KiB block, so a file
    much larger than the raw pixels is not a plain image; refusing it keeps a
    hostile file from being read into memory.
    """
    row = 1 + (width * _PNG_CHANNELS[colour] * depth + 7) // 8
    raw = height * row
    return raw + raw // 8 + (1 << 20)


def encode_png(img: np.ndarray, level: int = 1) -> bytes:
    """Encode an image as PNG bytes, the way :class:`LogWriter` stores images.

    Parameters
    ----------
    img : numpy.ndarray
        ``H x W`` (``uint8`` or ``uint16``) grayscale, or ``H x W x 3`` /
        ``H x W x 4`` in **RGB(A)** order — the order :func:`load_png` returns.
    level : int
        zlib compression level 0–9; 1 decodes several times faster than 9 at
        little size cost, so recorders use 1 (with Huffman-only coding after the PNG
        "sub" filter: noisy sensor images gain little from LZ77 matching).

    Examples
    --------
    >>> import numpy as np
    >>> encode_png(np.zeros((2, 2), np.uint16))[:4]
    b'\\x89PNG'
    """
    if not 0 <= level <= 9:
        raise ImageError(f"PNG compression level must be 0..9, got {level}")
    img = np.asarray(img)
    if img.dtype not in (np.uint8, np.uint16) or img.ndim not in (2, 3):
        raise ImageError(
            f"cannot encode a {img.dtype} array of shape {img.shape} as PNG; pass H x W or H x W x 3 uint8/uint16"
        )
    if img.ndim == 3:
        if img.shape[2] == 3:
            img = cv2.cvtColor(np.ascontiguousarray(img), cv2.COLOR_RGB2BGR)
        elif img.shape[2] == 4:
            img = cv2.cvtColor(np.ascontiguousarray(img), cv2.COLOR_RGBA2BGRA)
        else:
            raise ImageError(f"cannot encode an image with {img.shape[2]} channels as PNG; pass 1, 3 or 4")
    try:
        params = [cv2.IMWRITE_PNG_COMPRESSION, level]
        if level == 1:
            # Sensor images are noisy: LZ77 matching finds little, so Huffman coding after
            # the "sub" filter gives nearly the same size at a third of the encoding time.
            params += [
                cv2.IMWRITE_PNG_STRATEGY,
                cv2.IMWRITE_PNG_STRATEGY_HUFFMAN_ONLY,
                cv2.IMWRITE_PNG_FILTER,
                cv2.IMWRITE_PNG_FILTER_SUB,
            ]
        ok, buf = cv2.imencode(".png", img, params)
    except cv2.error as err:
        raise ImageError(f"OpenCV could not encode the image as PNG ({err})") from err
    if not ok:
        raise ImageError("OpenCV could not encode the image as PNG")
    return buf.tobytes()


def load_item(record: ItemRecord, log_dir: StrPath, meta: LogMeta) -> Item:
    """Decode the images of a record into an :class:`Item`.

    Never raises for image problems: an image that is unsafe, missing, corrupt or
    of the wrong kind is ``None`` and its reason is appended to ``problems``
    (after the record's own problems).  An image deleted by a retention run is ``None``
    too, its problem saying "image expired" (scoring sends such an item to a safe lane).
    An X-ray pair whose two images differ in size is dropped too, because the
    dual-energy ratio needs them pixel-aligned.

    Examples
    --------
    >>> import tempfile
    >>> rec = ItemRecord(item_id="A1", t=0.0, rgb="images/missing.png")
    >>> item = load_item(rec, tempfile.mkdtemp(), LogMeta())
    >>> item.rgb is None, len(item.problems)
    (True, 1)
    """
    problems = list(record.problems)
    images: dict[str, np.ndarray | None] = {}
    single = Path(log_dir) / ITEMS_FILE
    # a rotated log's lines are numbered across its segments: name the log directory
    where = f"{single if single.exists() else Path(log_dir)} line {record.line_no}" if record.line_no else str(log_dir)
    for name in IMAGE_FIELDS:
        rel = getattr(record, name)
        images[name] = None
        if rel is None:
            continue
        kind: Literal["xray", "rgb"] = "rgb" if name == "rgb" else "xray"
        try:
            images[name] = load_png(resolve_image_path(log_dir, rel), kind=kind)
        except ImageError as err:
            problems.append(f"{where}: item {_show(record.item_id)} field '{name}': {err}")
            logger.debug("item %r: %s not loaded: %s", record.item_id, name, err)
    low, high = images["xray_low"], images["xray_high"]
    if low is not None and high is not None and low.shape != high.shape:
        problems.append(
            f"{where}: item {_show(record.item_id)}: xray_low is {low.shape[1]}x{low.shape[0]} but "
            f"xray_high is {high.shape[1]}x{high.shape[0]}; the dual-energy pair must be "
            "registered to the same pixel grid — both treated as missing"
        )
        images["xray_low"] = images["xray_high"] = None
    return Item(
        record=record,
        xray_low=images["xray_low"],
        xray_high=images["xray_high"],
        rgb=images["rgb"],
        meta=meta,
        problems=tuple(problems),
    )
