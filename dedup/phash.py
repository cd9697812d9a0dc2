"""Perceptual-hash features for evaluation-set matching.

``phash64`` is exactly what the image stage stores in ``ImageNode.phash``:
``str(imagehash.phash(rgb))``, 16 hex digits (pipeline/images.py). Other features are computed
from the image bytes. Codes are packed bytes (``uint8[n, bits // 8]``) as FAISS binary indexes
take them; Hamming distance is the number of differing bits.
"""
from __future__ import annotations

import io
from collections.abc import Callable

import imagehash
import numpy as np
from PIL import Image, ImageOps


def hex_to_code(hex_hash: str) -> np.ndarray:
    """``str(imagehash.phash(...))`` → uint8[len(hex) // 2] (the same bit order on both sides)."""
    return np.frombuffer(bytes.fromhex(hex_hash), dtype=np.uint8)


def _pack(h: imagehash.ImageHash) -> np.ndarray:
    return np.packbits(np.asarray(h.hash, dtype=bool).ravel())


def phash64(img: Image.Image) -> np.ndarray:
    """64-bit pHash of the decoded RGB image (8x8 low DCT frequencies of a 32x32 grey thumbnail)."""
    return hex_to_code(str(imagehash.phash(img)))


def phash256(img: Image.Image) -> np.ndarray:
    """256-bit pHash (16x16 low DCT frequencies of a 64x64 grey thumbnail)."""
    return _pack(imagehash.phash(img, hash_size=16))


def trim_border(img: Image.Image, tolerance: int = 12, max_trim: float = 0.45) -> Image.Image:
    """Cut uniform borders (letterbox, pillarbox, frames): outer rows/columns whose pixels lie within
    ``tolerance`` of the corners' colour. Returns ``img`` itself when there is nothing to cut, or
    when cutting would remove more than ``max_trim`` of a side from each end."""
    grey = np.asarray(img.convert("L"), dtype=np.int16)
    h, w = grey.shape
    if h < 8 or w < 8:
        return img
    corner = int(np.median([grey[0, 0], grey[0, -1], grey[-1, 0], grey[-1, -1]]))
    off = np.abs(grey - corner) > tolerance
    # A line belongs to the image when more than 2% of it differs from the border colour
    # (JPEG ringing puts a few off pixels into a plain border).
    rows = np.flatnonzero(off.mean(axis=1) > 0.02)
    cols = np.flatnonzero(off.mean(axis=0) > 0.02)
    if rows.size == 0 or cols.size == 0:
        return img
    top, bottom = int(rows[0]), int(rows[-1]) + 1
    left, right = int(cols[0]), int(cols[-1]) + 1
    if (bottom - top) < (1 - 2 * max_trim) * h or (right - left) < (1 - 2 * max_trim) * w:
        return img
    if (top, bottom, left, right) == (0, h, 0, w):
        return img
    return img.crop((left, top, right, bottom))


def phash64_trim(img: Image.Image) -> np.ndarray:
    """64-bit pHash after cutting uniform borders."""
    return phash64(trim_border(img))


def phash256_trim(img: Image.Image) -> np.ndarray:
    """256-bit pHash after cutting uniform borders."""
    return phash256(trim_border(img))


def query_codes(feature: str, img: Image.Image | None, stage_hex: str | None = None, trim: bool = True) -> list[np.ndarray]:
    """Codes a crawled image is searched under; its distance is the smallest of theirs.

    The first is ``feature`` of the image as stored (``stage_hex``, the image stage's phash64,
    stands in for it when given); when ``trim`` is on and the image has a uniform border
    (letterbox, frame), a second code is taken of the image without it. Images without a border
    get one code, so trimming adds no false-positive chances for them.
    """
    codes = []
    if feature == "phash64" and stage_hex:
        codes.append(hex_to_code(stage_hex))
    elif img is not None:
        codes.append(compute(feature, img))
    if trim and img is not None:
        cut = trim_border(img)
        if cut is not img:
            codes.append(compute(feature, cut))
    return codes


FEATURES: dict[str, tuple[int, Callable[[Image.Image], np.ndarray]]] = {
    "phash64": (64, phash64),
    "phash256": (256, phash256),
    "phash64_trim": (64, phash64_trim),
    "phash256_trim": (256, phash256_trim),
}


def feature_bits(name: str) -> int:
    if name not in FEATURES:
        raise ValueError(f"unknown image feature {name!r}; known: {', '.join(sorted(FEATURES))}")
    return FEATURES[name][0]


def compute(name: str, img: Image.Image) -> np.ndarray:
    """Code of feature ``name`` for a decoded RGB image: uint8[bits // 8]."""
    feature_bits(name)
    return FEATURES[name][1](img)


def decode_rgb(data: bytes) -> Image.Image:
    """Bytes → RGB image, EXIF orientation applied; transparent pixels composited on white."""
    img = Image.open(io.BytesIO(data))
    img = ImageOps.exif_transpose(img)
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        img = img.convert("RGBA")
        bg = Image.new("RGBA", img.size, (255, 255, 255, 255))
        img = Image.alpha_composite(bg, img)
    return img.convert("RGB")


# Index-side variants: an evaluation image is also indexed under these edits, so that a crawled
# copy that was cropped or flipped lands near one of them.
def _crop(fx0: float, fy0: float, fx1: float, fy1: float) -> Callable[[Image.Image], Image.Image]:
    def f(img: Image.Image) -> Image.Image:
        w, h = img.size
        return img.crop((round(fx0 * w), round(fy0 * h), round(fx1 * w), round(fy1 * h)))

    return f


def _crop_grid(keep: float) -> list[Callable[[Image.Image], Image.Image]]:
    m = 1.0 - keep
    out = []
    for x in (0.0, m / 2, m):
        for y in (0.0, m / 2, m):
            out.append(_crop(x, y, x + keep, y + keep))
    return out


VARIANTS: dict[str, list[Callable[[Image.Image], Image.Image]]] = {
    "none": [],
    "crops": _crop_grid(0.94),  # 9 windows keeping 94% of each side
    "crops2": _crop_grid(0.94) + _crop_grid(0.88),  # 18 windows keeping 94% and 88%
    "flip": [ImageOps.mirror],
    # The image without its uniform margins (dark sky, studio backdrop): a crawled copy with an
    # added border of that colour loses border and margins together when trimmed.
    "trim": [trim_border],
}
DEFAULT_VARIANTS = ["crops", "trim"]  # calibrated in docs/bench/dedup.md


def variant_images(img: Image.Image, variants: list[str]) -> list[Image.Image]:
    """The image itself followed by its index-side variants."""
    out = [img]
    for name in variants:
        if name not in VARIANTS:
            raise ValueError(f"unknown index variant {name!r}; known: {', '.join(sorted(VARIANTS))}")
        out.extend(v for v in (f(img) for f in VARIANTS[name]) if v is not img)  # no-op variants add nothing
    return out
