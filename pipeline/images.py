"""Images: safe decoding, M3W filters, resize and re-encode, hashes, and removal of repeated images.

Per-record logic is the pure function ``process_image(data, url, cfg, limits)``: it returns a
``ProcessedImage`` or raises ``ImageRejected(reason, detail)``. Two Beam composites wire it:

- ``ProcessImages``: ``PCollection[ImageRecord]`` → ``images`` (``ResolvedImage``) + ``rejects``.
- ``DropRepeatedImages``: ``PCollection[Document]`` → ``documents`` + ``rejects``; removes images
  whose content hash appears in more than ``max_docs_per_image`` documents of the whole run
  (logos, buttons, share icons) and duplicates inside one document.

Decoding is hostile-input safe: sizes and the pixel count are checked from the header before any
pixel is decoded (decompression bombs are rejected in well under a millisecond), and so are the
bytes: ``decode_bytes`` estimates, from the header, the peak memory of every buffer the stage will
hold at once for this image (the decoder's own, Pillow's image in its mode, each conversion and
the resize), and an image over ``limits.max_image_decode_bytes`` is rejected before decoding.
JPEGs are decoded DCT-scaled. Formats whose Pillow plugin allocates or decodes while opening (ICO
decodes its image in ``Image.open``, WebP allocates its canvas there) are measured from their own
headers first. Only a fixed set of raster decoders is enabled (no EPS/ghostscript, no SVG, no PSD),
and any decoder failure becomes a counted reject instead of an exception.
"""
from __future__ import annotations

import dataclasses
import hashlib
import io
import threading
import warnings
import zlib
from collections import OrderedDict
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import apache_beam as beam
import numpy as np
from apache_beam import pvalue
from apache_beam.metrics import Metrics
from PIL import Image, ImageFile, UnidentifiedImageError

try:  # libspng: the same pixels as Pillow's PNG decoder, 1.3-1.6x faster (docs/bench/images.md)
    import pyspng
except ImportError:  # pragma: no cover - a declared dependency; Pillow decodes every PNG without it
    pyspng = None

from pipeline.config import ImageConfig, LimitsConfig
from pipeline.records import ImageRecord, Reject
from schemas.document import Document, ImageNode, Provenance

# Pillow's own bomb check warns between 1x and 2x its limit; we apply our configured cap instead.
warnings.simplefilter("ignore", Image.DecompressionBombWarning)
ImageFile.LOAD_TRUNCATED_IMAGES = False  # truncated files must fail, not decode half grey
Image.init()  # registers every plugin, so Image.open(formats=...) knows MPO, WEBP, TIFF, ICO

STAGE = "image"

# Pillow format name -> our format name. Only these decoders are ever tried (Image.open(formats=)).
_PILLOW_FORMATS = {
    "JPEG": "jpeg",
    "MPO": "jpeg",  # multi-picture JPEG (phone cameras); the first picture is a plain JPEG
    "PNG": "png",
    "GIF": "gif",
    "WEBP": "webp",
    "BMP": "bmp",
    "TIFF": "tiff",
    "ICO": "ico",
}
_OPEN_FORMATS = tuple(f for f in _PILLOW_FORMATS if f != "MPO")  # the JPEG opener returns MPO itself

# Leading bytes of the raster formats above: unidentifiable data that starts like one is corrupt.
_MAGIC = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"GIF87a", b"GIF89a", b"BM", b"II*\x00", b"MM\x00*", b"\x00\x00\x01\x00")

#: Every reason ``process_image`` can reject with (the counter is ``image.dropped_<reason>``).
REJECT_REASONS = (
    "too_few_bytes",  # below cfg.min_bytes
    "too_many_bytes",  # above cfg.max_bytes / limits.max_image_bytes
    "url_keyword",  # logo, icon, button, ... in the URL path
    "svg",  # vector images are skipped (not rasterised)
    "not_an_image",  # no image signature (HTML error pages, empty bodies)
    "corrupt",  # image signature but undecodable
    "truncated",  # data ends before the image does
    "format_not_allowed",  # decodable but not in cfg.allowed_formats
    "decompression_bomb",  # header declares more than limits.max_image_pixels
    "decode_too_large",  # decoding and converting it would take more than limits.max_image_decode_bytes
    "too_small",  # shorter side below cfg.min_side
    "too_large",  # longer side above cfg.max_side
    "aspect_ratio",  # long/short side above cfg.max_aspect_ratio
    "single_color",  # pixel standard deviation below cfg.min_pixel_std
)
# Reasons found only after the pixels were decoded (for the image.decoded counter).
_AFTER_DECODE = frozenset({"single_color"})

# Short side (px) of the reduced copy used for the colour check and the perceptual hash: from
# 128 px on, pHash is within 2 bits of imagehash.phash of the stored image on the shared photos
# (64 px gave up to 22 bits on flat graphics).
_STATS_SIDE = 128
# A JPEG stored unchanged is decoded DCT-scaled to at least this (1/4 size for 640 x 480 photos):
# pHash within 2 bits there, at about half the cost of a full decode.
_DRAFT_SIDE = 64


# Resize: box-reduce by int(factor / gap) before the bicubic pass (Pillow's thumbnail uses 2.0).
_REDUCING_GAP = 1.5

# EXIF orientation -> the transpose that makes the pixels upright (as ImageOps.exif_transpose).
_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


class ImageRejected(Exception):
    """``process_image`` dropped the image: ``reason`` is one of REJECT_REASONS, ``detail`` the evidence."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


@dataclass
class ProcessedImage:
    """What ``process_image`` makes of one image's bytes."""

    data: bytes = field(repr=False)  # stored bytes (resized/re-encoded, or the original JPEG stripped of metadata)
    sha256: str  # of ``data``
    width: int  # pixels of the stored image
    height: int
    format: str  # of ``data``: "jpeg" | "webp" | "png"
    phash: str  # imagehash.phash of the stored pixels, 16 hex digits
    original_sha256: str  # of the input bytes
    original_format: str  # sniffed from the input bytes
    original_width: int
    original_height: int
    original_data: bytes | None = field(default=None, repr=False)  # the input bytes when cfg.keep_originals


@dataclass
class ResolvedImage:
    """An image ready to attach to the ImageNodes that reference ``url``."""

    url: str
    provenance: Provenance  # of the WARC record that held the bytes (fetched images: the archive record)
    data: bytes = field(repr=False)
    sha256: str
    width: int
    height: int
    format: str
    phash: str
    original_sha256: str
    source: str  # "warc" | "fetch"
    original_format: str = ""
    original_data: bytes | None = field(default=None, repr=False)  # only with cfg.keep_originals

    @classmethod
    def of(cls, p: ProcessedImage, url: str, provenance: Provenance, source: str) -> "ResolvedImage":
        return cls(
            url=url,
            provenance=provenance,
            data=p.data,
            sha256=p.sha256,
            width=p.width,
            height=p.height,
            format=p.format,
            phash=p.phash,
            original_sha256=p.original_sha256,
            source=source,
            original_format=p.original_format,
            original_data=p.original_data,
        )

    def apply_to(self, node: ImageNode) -> ImageNode:
        """A copy of ``node`` with the resolved fields and the stored bytes set (HTML fields kept)."""
        return dataclasses.replace(
            node,
            sha256=self.sha256,
            width=self.width,
            height=self.height,
            format=self.format,
            phash=self.phash,
            source=self.source,
            original_sha256=self.original_sha256,
            original_format=self.original_format or None,
            data=self.data,
            original_data=self.original_data,
        )


# ---------------------------------------------------------------------------------------------
# Pure per-image logic


def _min_not_none(*values: int | None) -> int | None:
    present = [v for v in values if v is not None]
    return min(present) if present else None


def _looks_like_svg(data: bytes) -> bool:
    head = data[:1024].lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    return head.startswith(b"<svg") or (head.startswith((b"<?xml", b"<!doctype svg", b"<!--")) and b"<svg" in head)


def _url_keyword(url: str, keywords: list[str] | None) -> str | None:
    if not keywords:
        return None
    parts = urlsplit(url)
    # Path and query only: a host like "iconic-photos.example" says nothing about the image.
    where = (parts.path + "?" + parts.query).lower()
    for kw in keywords:
        if kw.lower() in where:
            return kw
    return None


_WHITE = (255, 255, 255)


def _on_white(rgba: Image.Image) -> Image.Image:
    """RGBA composited on white (same pixels as ``Image.alpha_composite`` on a white RGBA, in half the time)."""
    out = Image.new("RGB", rgba.size, _WHITE)
    out.paste(rgba, (0, 0), rgba)
    return out


def _palette_on_white(im: Image.Image) -> Image.Image | None:
    """A P image with transparency, composited on white in its palette (256 entries instead of
    every pixel), then expanded to RGB. None when the palette or transparency is not the plain kind."""
    trns = im.info.get("transparency")
    if not isinstance(trns, (int, bytes)):
        return None
    try:
        pal = im.getpalette("RGB")
    except ValueError:  # a palette Pillow cannot express as RGB: the per-pixel path handles it
        return None
    if not pal:
        return None
    rgb = np.asarray(pal, dtype=np.uint16).reshape(-1, 3)
    alpha = np.full(len(rgb), 255, dtype=np.uint16)
    if isinstance(trns, int):
        if 0 <= trns < len(rgb):
            alpha[trns] = 0
    else:
        given = np.frombuffer(trns, dtype=np.uint8)[: len(rgb)]
        alpha[: len(given)] = given
    a = alpha[:, None]
    blended = ((rgb * a + 255 * (255 - a) + 127) // 255).astype(np.uint8)
    out = im.copy()
    out.info.pop("transparency", None)
    out.putpalette(blended.tobytes(), "RGB")
    return out.convert("RGB")


_INT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")
_STRIP_PIXELS = 1 << 18  # integer and float images are converted this many pixels at a time (~10 MiB of float64 work)


def _strips(im: Image.Image):
    """Horizontal strips of ``im`` as numpy arrays (a few MiB each, never a whole-image copy)."""
    w, h = im.size
    rows = max(1, _STRIP_PIXELS // w)
    for y in range(0, h, rows):
        yield y, np.asarray(im.crop((0, y, w, min(h, y + rows))))


def _gray8(im: Image.Image) -> Image.Image:
    """An I;16 / I / F image as 8-bit grey: 16-bit samples / 257, 32-bit integers likewise when
    any exceeds 255, floats stretched from their minimum to their maximum."""
    mode = im.mode
    w, h = im.size
    out = np.empty((h, w), dtype=np.uint8)
    lo = hi = 0.0
    if mode == "F":
        lo = min(float(a.min()) for _, a in _strips(im))
        hi = max(float(a.max()) for _, a in _strips(im))
    divide = mode != "I" or max(int(a.max()) for _, a in _strips(im)) > 255
    for y, a in _strips(im):
        arr = a.astype(np.float64)
        if mode == "F":
            arr = (arr - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(arr)
        elif divide:
            arr = arr / 257.0  # 16-bit samples to 8 bits
        out[y : y + len(a)] = np.clip(arr + 0.5, 0, 255).astype(np.uint8)
    return Image.fromarray(out, "L")


def _to_rgb(im: Image.Image) -> Image.Image:
    """Any Pillow mode to RGB; transparency is composited on white (web pages are mostly white)."""
    mode = im.mode
    if mode == "RGB":
        return im
    if mode == "P":
        if "transparency" not in im.info:
            return im.convert("RGB")
        rgb = _palette_on_white(im)
        if rgb is not None:
            return rgb
        im = im.convert("RGBA")
        mode = im.mode
    if mode in _INT_MODES:
        return _gray8(im).convert("RGB")
    if mode == "RGBA":
        return _on_white(im)
    if mode in ("LA", "PA", "RGBa", "La"):
        return _on_white(im.convert("RGBA"))
    # L, 1, CMYK (Adobe inversion handled by the JPEG decoder), YCbCr, LAB, HSV
    return im.convert("RGB")


def _strip_jpeg_metadata(data: bytes) -> bytes:
    """The JPEG without EXIF/XMP (APP1), IPTC (APP13) and comments; pixels untouched.

    Keeps a camera's GPS position and serial numbers out of the corpus without re-encoding.
    Returns the input unchanged if the marker structure is not the plain one we expect.
    """
    if not data.startswith(b"\xff\xd8"):
        return data
    out = [b"\xff\xd8"]
    i, n = 2, len(data)
    while i + 4 <= n:
        if data[i] != 0xFF:
            return data
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker == 0xDA:  # start of scan: the rest is entropy-coded data
            out.append(data[i:])
            return b"".join(out)
        if 0xD0 <= marker <= 0xD7 or marker == 0x01:
            out.append(data[i : i + 2])
            i += 2
            continue
        seg_len = int.from_bytes(data[i + 2 : i + 4], "big")
        if seg_len < 2 or i + 2 + seg_len > n:
            return data
        if marker not in (0xE1, 0xED, 0xFE):
            out.append(data[i : i + 2 + seg_len])
        i += 2 + seg_len
    return data


# imagehash.phash, the numbers: a 32 x 32 grey thumbnail (Lanczos), its 2-D DCT-II (scipy.fftpack
# convention, unnormalised: 2 * sum x[n] cos(pi k (2n + 1) / 64)), the 8 x 8 lowest frequencies, each
# bit = coefficient > their median, hex in row-major bit order. Only the 8 needed rows of the DCT
# matrix are applied, as two small matrix products instead of two full scipy transforms.
_PHASH_SIDE = 32
_DCT8 = 2.0 * np.cos(np.pi * np.arange(8)[:, None] * (2 * np.arange(_PHASH_SIDE)[None, :] + 1) / (2 * _PHASH_SIDE))


def _phash_hex(small_rgb: Image.Image) -> str:
    """``str(imagehash.phash(small_rgb))``: 64-bit pHash, 16 hex digits, without the scipy round trip."""
    grey = small_rgb.convert("L").resize((_PHASH_SIDE, _PHASH_SIDE), Image.Resampling.LANCZOS)
    px = np.asarray(grey, dtype=np.float64)
    low = _DCT8 @ px @ _DCT8.T
    bits = (low > np.median(low)).ravel()
    return np.packbits(bits).tobytes().hex()


def _stats_copy(im: Image.Image) -> Image.Image:
    """A reduced copy (short side >= _STATS_SIDE) for the colour check and the perceptual hash."""
    factor = max(1, min(im.size) // _STATS_SIDE)
    return im.reduce(factor) if factor > 1 else im


_LEVELS = np.arange(256, dtype=np.float64)


def _max_channel_std(rgb: Image.Image) -> float:
    """Largest per-channel pixel standard deviation, from the histogram (a uniform orange has a
    large spread across channels but none within one)."""
    hist = np.asarray(rgb.histogram(), dtype=np.float64).reshape(3, 256)
    n = hist.sum(axis=1)
    mean = hist @ _LEVELS / n
    var = hist @ (_LEVELS * _LEVELS) / n - mean * mean
    return float(np.sqrt(np.maximum(var, 0.0)).max())


def _encode(im: Image.Image, fmt: str, quality: int, icc_profile: bytes | None) -> bytes:
    buf = io.BytesIO()
    extra = {"icc_profile": icc_profile} if icc_profile else {}
    if fmt == "jpeg":
        im.save(buf, "JPEG", quality=quality, optimize=False, progressive=False, **extra)
    elif fmt == "webp":
        im.save(buf, "WEBP", quality=quality, method=4, **extra)
    else:
        im.save(buf, "PNG", compress_level=6, **extra)
    return buf.getvalue()


def _dct_scale(w: int, h: int, size: tuple[int, int]) -> int:
    """Largest JPEG DCT scaling denominator (8, 4, 2, 1) whose decode, ceil(w / s) x ceil(h / s),
    is still at least ``size`` on both sides, so the final resize only ever shrinks."""
    for s in (8, 4, 2):
        if w // s >= 1 and h // s >= 1 and -(-w // s) >= size[0] and -(-h // s) >= size[1]:
            return s
    return 1


# ---------------------------------------------------------------------------------------------
# Decode memory: what an image will cost, from its header, before any pixel is decoded

_MiB = 1 << 20


def _mode_bytes(mode: str) -> int:
    """Bytes per pixel Pillow stores for ``mode``: one for 1/L/P, two for I;16 and BGR;15/16,
    three for BGR;24, four for every other mode (RGB too: Pillow pads it to 32 bits)."""
    if mode in ("1", "L", "P"):
        return 1
    if mode.startswith("I;16") or mode in ("BGR;15", "BGR;16"):
        return 2
    if mode == "BGR;24":
        return 3
    return 4


def _to_rgb_bytes(mode: str, n: int, resized: bool, transparent: bool) -> int:
    """Peak bytes ``_to_rgb`` (or, before a resize, the grey conversion) adds to an ``n``-pixel
    image of ``mode``: the converted copy plus the copies made on the way."""
    if mode == "RGB" or (resized and mode == "L"):
        return 0
    if mode in _INT_MODES:  # converted in strips to L (grey is resized as grey), then RGB
        return n + (0 if resized else 4 * n) + 16 * _MiB
    if mode in ("PA", "LA", "La", "RGBa") or (mode == "P" and transparent):
        return 9 * n  # a palette copy or an RGBA copy, then RGB
    return 4 * n  # RGBA, P, 1, L, CMYK, YCbCr, ... -> RGB


def _resize_bytes(w: int, h: int, size: tuple[int, int], pixel: int) -> int:
    """Peak bytes of ``resize(size, BICUBIC, reducing_gap=_REDUCING_GAP)`` from w x h: the box
    reduce (when the factor is >= 2 gaps), the horizontal pass and the result."""
    fx = int(w / size[0] / _REDUCING_GAP) or 1
    fy = int(h / size[1] / _REDUCING_GAP) or 1
    rw, rh = -(-w // fx), -(-h // fy)
    reduced = rw * rh if fx > 1 or fy > 1 else 0
    return pixel * (reduced + size[0] * rh + size[0] * size[1])


def _jpeg_frame(data: bytes) -> tuple[int, int]:
    """(SOF marker, components in the first scan) from the markers before the first scan; (0, 0)
    when the structure is not the plain one."""
    i, n, sof = 2, len(data), 0
    while i + 4 <= n:
        if data[i] != 0xFF:
            return sof, 0
        marker = data[i + 1]
        if marker == 0xFF:
            i += 1
            continue
        if 0xD0 <= marker <= 0xD7 or marker == 0x01:
            i += 2
            continue
        if marker == 0xDA:
            return sof, data[i + 4] if i + 4 < n else 0
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            sof = marker
        i += 2 + int.from_bytes(data[i + 2 : i + 4], "big")
    return sof, 0


def _jpeg_coefficient_bytes(im: Image.Image, data: bytes, w: int, h: int) -> int:
    """libjpeg's whole-image coefficient buffer (2 bytes x 64 per 8 x 8 block of every component,
    at full size whatever the DCT scale) for progressive and multi-scan JPEGs; 0 for the usual
    single-scan baseline, which libjpeg decodes a row of blocks at a time."""
    layers = getattr(im, "layer", None) or [(0, 1, 1, 0)]
    sof, first_scan = _jpeg_frame(data)
    progressive = sof in (0xC2, 0xC6, 0xCA, 0xCE) or bool(im.info.get("progressive"))
    if not progressive and first_scan >= len(layers):
        return 0
    hmax = max(max(1, l[1]) for l in layers)
    vmax = max(max(1, l[2]) for l in layers)
    blocks = 0
    for _, hs, vs, _ in layers:
        hs, vs = max(1, hs), max(1, vs)
        bw = -(-(-(-w * hs // hmax)) // 8)
        bh = -(-(-(-h * vs // vmax)) // 8)
        blocks += (-(-bw // hs) * hs) * (-(-bh // vs) * vs)
    return blocks * 128


def _tiff_buffer_bytes(im: Image.Image, w: int, h: int) -> int:
    """libtiff's strip or tile buffer (one strip may be the whole image, one tile larger than it),
    and the RGBA raster Pillow decodes YCbCr/JPEG-compressed TIFFs through."""
    tags = getattr(im, "tag_v2", {})
    bits = tags.get(258, (8,))
    bits = max(bits) if isinstance(bits, tuple) and bits else int(bits or 8)
    samples = int(tags.get(277, 1) or 1)
    if 322 in tags and 323 in tags:
        bw, bh = int(tags[322]), int(tags[323])
    else:
        bw, bh = w, min(h, int(tags.get(278, h) or h))
    raw = -(-(bw * samples * bits) // 8) * bh
    rgba = 4 * bw * bh if tags.get(262) == 6 or tags.get(259) in (6, 7) else 0
    return raw + rgba


def decode_bytes(
    im: Image.Image, fmt: str, data: bytes, size: tuple[int, int] | None, full: tuple[int, int]
) -> int:
    """Peak bytes ``process_image`` holds for an opened (not yet loaded) image: Pillow's decoded
    image at ``im.size`` (after any JPEG draft), the decoder's own buffers for the ``full`` size
    the header declares, the conversion to RGB and, when ``size`` is given, the resize to it."""
    w, h = im.size
    n = w * h
    mode = im.mode
    pixel = _mode_bytes(mode)
    decoded = n * pixel
    if fmt == "jpeg":
        decoded += _jpeg_coefficient_bytes(im, data, *full)
    elif fmt == "png":
        decoded += 64 * w  # unfilter rows
    elif fmt == "gif":
        decoded += n  # the frame buffer beside the image
    elif fmt == "bmp":
        if im.info.get("compression") in (1, 2):  # RLE: Pillow's Python decoder grows a byte per pixel, then copies it
            decoded += 3 * n
    elif fmt == "tiff":
        decoded += _tiff_buffer_bytes(im, w, h)
    elif fmt == "webp":
        decoded += _WEBP_DECODER_BYTES * n
    resized = size is not None
    convert = _to_rgb_bytes(mode, n, resized, "transparency" in im.info)
    if resized:
        src_pixel = 1 if mode == "L" or mode in _INT_MODES else 4
        after = 4 * size[0] * size[1] * 3  # RGB of the result, its transpose, the encode
        work = convert + _resize_bytes(w, h, size, src_pixel) + after
    else:
        work = convert + 4 * n * 2  # RGB stored: its transpose and the encoded output
    return decoded + work


# libwebp's animation decoder (Pillow's only WebP path) keeps a canvas and a copy of the previous
# frame at 4 bytes per pixel each, and Pillow copies the frame out of it (4 more) before decoding
# it into the image; one more for the decoder's own rows (measured: 15.4 bytes/px with the image).
_WEBP_DECODER_BYTES = 13


def _webp_canvas(data: bytes) -> tuple[int, int] | None:
    """Canvas size a WebP declares (VP8X extended, VP8L lossless or VP8 lossy header)."""
    if len(data) < 30 or data[:4] != b"RIFF" or data[8:12] != b"WEBP":
        return None
    kind = data[12:16]
    if kind == b"VP8X":
        return 1 + int.from_bytes(data[24:27], "little"), 1 + int.from_bytes(data[27:30], "little")
    if kind == b"VP8L" and data[20] == 0x2F:
        bits = int.from_bytes(data[21:25], "little")
        return 1 + (bits & 0x3FFF), 1 + ((bits >> 14) & 0x3FFF)
    if kind == b"VP8 " and data[23:26] == b"\x9d\x01\x2a":
        return int.from_bytes(data[26:28], "little") & 0x3FFF, int.from_bytes(data[28:30], "little") & 0x3FFF
    return None


def _ico_entries(data: bytes) -> list[tuple[int, int]]:
    """Sizes of the images an ICO holds, from their own PNG or BMP headers (the directory's
    sizes stop at 256 and Pillow trusts the embedded image instead)."""
    out = []
    for k in range(int.from_bytes(data[4:6], "little")):
        e = data[6 + 16 * k : 22 + 16 * k]
        if len(e) < 16:
            break
        off = int.from_bytes(e[12:16], "little")
        emb = data[off : off + 26]
        if emb.startswith(b"\x89PNG\r\n\x1a\n") and len(emb) >= 24:
            out.append((int.from_bytes(emb[16:20], "big"), int.from_bytes(emb[20:24], "big")))
        elif len(emb) >= 12:
            w = abs(int.from_bytes(emb[4:8], "little", signed=True))
            h = abs(int.from_bytes(emb[8:12], "little", signed=True)) // 2  # image + AND mask
            out.append((w, h))
        out.append((e[0] or 256, e[1] or 256))
    return out


# Bytes per pixel the pre-open checks assume: WebP's decoder plus an RGBA image; an ICO's image in
# any mode with its conversion (icons are at most 256 x 256 px: 1 MiB at this rate).
_WEBP_OPEN_BYTES = _WEBP_DECODER_BYTES + 4
_ICO_OPEN_BYTES = 16


def _check_before_open(data: bytes, cfg: ImageConfig, limits: LimitsConfig) -> None:
    """Formats whose Pillow plugin works in ``Image.open``: ICO decodes its image there (before
    any size check could run), WebP allocates its canvas. Their sizes come from their own headers."""
    if data[:4] == b"\x00\x00\x01\x00":
        fmt, sizes, per_px = "ico", _ico_entries(data), _ICO_OPEN_BYTES
    else:
        canvas = _webp_canvas(data)
        if canvas is None:
            return
        fmt, sizes, per_px = "webp", [canvas], _WEBP_OPEN_BYTES
    if cfg.allowed_formats is not None and fmt not in cfg.allowed_formats:
        raise ImageRejected("format_not_allowed", fmt)
    for w, h in sizes:
        if limits.max_image_pixels is not None and w * h > limits.max_image_pixels:
            raise ImageRejected("decompression_bomb", f"{fmt} {w}x{h} = {w * h} px > {limits.max_image_pixels}")
        budget = limits.max_image_decode_bytes
        if budget is not None and w * h * per_px > budget:
            raise ImageRejected("decode_too_large", f"{fmt} {w}x{h}: >= {w * h * per_px / _MiB:.0f} MiB > {budget / _MiB:.0f} MiB")


def _transpose_of(im: Image.Image):
    """The transpose that makes ``im`` upright, from its EXIF orientation; None when upright."""
    try:
        orientation = im.getexif().get(0x0112, 1)
    except Exception:  # a broken EXIF block must not sink an otherwise good image
        return None
    # Orientations other than 2..8 (absent, 1, or invalid values such as 0) mean upright.
    return _TRANSPOSE.get(orientation) if isinstance(orientation, int) else None


# --- PNG through libspng -----------------------------------------------------------------------

# colour type -> (pyspng output format, channels) for the 8-bit PNGs libspng decodes to exactly
# the pixels the stage would get from Pillow: grey, RGB, palette without transparency (expanded
# as Pillow's P -> RGB does), grey + alpha, RGBA.
_SPNG_FORMATS = {0: ("L", 1), 2: ("RGB", 3), 3: ("RGB", 3), 4: ("LA", 2), 6: ("RGBA", 4)}
_MAX_PNG_CHUNKS = 4096  # more chunks than this (a hostile file of empty ones): Pillow decodes it


def _png_plain(data: bytes) -> bool:
    """Whether libspng may decode this PNG for the stage: 8 bits per sample, no tRNS (Pillow
    keeps transparency apart; libspng would drop it or not), no eXIf after the pixels (Pillow
    decodes the image to find it), every chunk CRC right (libspng is set to ignore CRCs and the
    zlib checksum, Pillow rejects the damage), at most _MAX_PNG_CHUNKS chunks."""
    if len(data) < 33 or data[24] != 8 or data[25] not in _SPNG_FORMATS:
        return False
    i, n, seen_idat = 8, len(data), False
    for _ in range(_MAX_PNG_CHUNKS):
        if i + 12 > n:
            return False
        length = int.from_bytes(data[i : i + 4], "big")
        kind = data[i + 4 : i + 8]
        end = i + 8 + length
        if end + 4 > n or zlib.crc32(data[i + 4 : end]) != int.from_bytes(data[end : end + 4], "big"):
            return False
        if kind == b"IEND":
            return seen_idat
        if kind == b"tRNS" or (kind == b"eXIf" and seen_idat):
            return False
        seen_idat = seen_idat or kind == b"IDAT"
        i = end + 4
    return False


def _spng_decode(data: bytes, im: Image.Image) -> Image.Image | None:
    """The PNG decoded by libspng as a Pillow image in the mode the stage expects next (a
    palette arrives as RGB); None when libspng fails (Pillow then decodes it and says why)."""
    fmt, _ = _SPNG_FORMATS[data[25]]
    try:
        arr = pyspng.load(data, fmt)
    except Exception:  # damaged data: the Pillow path classifies it
        return None
    if arr.shape[:2] != (im.size[1], im.size[0]):
        return None
    out = Image.fromarray(arr, fmt)
    out.info = dict(im.info)
    return out


# --- results of repeated bytes -------------------------------------------------------------------

# Per worker process: the outcome of recent inputs by their sha256 (and the config), so repeated
# logos, stock photos and re-crawled images are decoded once. The function is pure, so a cached
# result is the result; bounded by the bytes it holds.
_CACHE_BYTES = 64 << 20
_CACHE_ENTRY_OVERHEAD = 512  # the record's own fields and the key


class _ResultCache:
    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self._items: OrderedDict = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def get(self, key):
        with self._lock:
            hit = self._items.get(key)
            if hit is not None:
                self._items.move_to_end(key)
                return hit[0]
        return None

    def put(self, key, value, nbytes: int) -> None:
        nbytes += _CACHE_ENTRY_OVERHEAD
        if nbytes > self.max_bytes // 8:  # one huge result would flush everything else
            return
        with self._lock:
            if key in self._items:
                return
            self._items[key] = (value, nbytes)
            self._bytes += nbytes
            while self._bytes > self.max_bytes:
                _, (_, freed) = self._items.popitem(last=False)
                self._bytes -= freed

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self._bytes = 0

    def __len__(self) -> int:
        return len(self._items)


_RESULTS = _ResultCache(_CACHE_BYTES)


def clear_result_cache() -> None:
    """Forget every cached result (benchmarks time cold calls with it)."""
    _RESULTS.clear()


def _settings_key(cfg: ImageConfig, limits: LimitsConfig) -> str:
    return repr(cfg) + repr(limits)


def _classify_decode_error(e: Exception) -> ImageRejected:
    msg = f"{type(e).__name__}: {e}"
    if "truncated" in str(e).lower() or isinstance(e, EOFError):
        return ImageRejected("truncated", msg)
    return ImageRejected("corrupt", msg)


def process_image(
    data: bytes, url: str, cfg: ImageConfig = ImageConfig(), limits: LimitsConfig = LimitsConfig()
) -> ProcessedImage:
    """Decode, filter, resize, re-encode and hash one image.

    Returns a ``ProcessedImage``; raises ``ImageRejected(reason, detail)`` with ``reason`` from
    ``REJECT_REASONS``. Checks run cheapest first: byte size and URL keywords, then the header
    (format, dimensions, pixel cap), then the pixels (colour variance). The stored image is RGB,
    EXIF-oriented, its longest side at most ``cfg.resize_longest_side`` (never upscaled), encoded
    as ``cfg.encode_format`` ("keep": JPEG and WebP stay in their format, everything else becomes
    PNG). A JPEG that needs no change (RGB, upright, small enough) is stored as is minus its
    EXIF/XMP/comment segments: no generation loss. Animated images keep their first frame. An RGB
    ICC profile is carried over to the stored image.
    """
    n = len(data)
    if cfg.min_bytes is not None and n < cfg.min_bytes:
        raise ImageRejected("too_few_bytes", f"{n} < {cfg.min_bytes}")
    max_bytes = _min_not_none(cfg.max_bytes, limits.max_image_bytes)
    if max_bytes is not None and n > max_bytes:
        raise ImageRejected("too_many_bytes", f"{n} > {max_bytes}")
    kw = _url_keyword(url, cfg.url_keywords)
    if kw is not None:
        raise ImageRejected("url_keyword", kw)
    # Everything from here on depends on the bytes and the settings only.
    original_sha256 = hashlib.sha256(data).hexdigest()
    key = (original_sha256, len(data), _settings_key(cfg, limits))
    hit = _RESULTS.get(key)
    if hit is not None:
        if isinstance(hit, ImageRejected):
            raise ImageRejected(hit.reason, hit.detail)
        return hit
    try:
        result = _process_bytes(data, cfg, limits, original_sha256)
    except ImageRejected as r:
        _RESULTS.put(key, ImageRejected(r.reason, r.detail), len(r.detail))
        raise
    kept = len(result.data) + (len(result.original_data) if result.original_data is not None else 0)
    _RESULTS.put(key, result, kept)
    return result


def _process_bytes(data: bytes, cfg: ImageConfig, limits: LimitsConfig, original_sha256: str) -> ProcessedImage:
    """``process_image`` after the checks that look at the URL: the part worth caching."""
    if _looks_like_svg(data):
        raise ImageRejected("svg")
    _check_before_open(data, cfg, limits)

    # --- header only: nothing is decoded yet
    try:
        im = Image.open(io.BytesIO(data), formats=_OPEN_FORMATS)
    except Image.DecompressionBombError as e:
        raise ImageRejected("decompression_bomb", str(e)) from None
    except UnidentifiedImageError:
        if data.startswith(_MAGIC) or data[8:12] == b"WEBP":
            raise ImageRejected("corrupt", "image signature but no readable header") from None
        raise ImageRejected("not_an_image", repr(data[:16])) from None
    except Exception as e:  # hostile bytes: Pillow plugins raise many types on bad headers
        raise _classify_decode_error(e) from None
    fmt = _PILLOW_FORMATS.get(im.format or "", (im.format or "").lower())
    if cfg.allowed_formats is not None and fmt not in cfg.allowed_formats:
        raise ImageRejected("format_not_allowed", fmt)
    w, h = im.size
    if limits.max_image_pixels is not None and w * h > limits.max_image_pixels:
        raise ImageRejected("decompression_bomb", f"{w}x{h} = {w * h} px > {limits.max_image_pixels}")
    short, long_ = min(w, h), max(w, h)
    if short <= 0:
        raise ImageRejected("corrupt", f"{w}x{h}")
    if cfg.min_side is not None and short < cfg.min_side:
        raise ImageRejected("too_small", f"{w}x{h}")
    if cfg.max_side is not None and long_ > cfg.max_side:
        raise ImageRejected("too_large", f"{w}x{h}")
    if cfg.max_aspect_ratio is not None and long_ / short > cfg.max_aspect_ratio:
        raise ImageRejected("aspect_ratio", f"{w}x{h} = {long_ / short:.2f}")

    target = cfg.resize_longest_side
    scale = target / long_ if target is not None and long_ > target else 1.0
    # A PNG's EXIF may follow its pixels: Pillow decodes the image to look, so after the budget check.
    transpose = _transpose_of(im) if fmt in ("jpeg", "webp", "tiff") else None
    out_fmt = cfg.encode_format
    if out_fmt == "keep":
        out_fmt = fmt if fmt in ("jpeg", "webp") else "png"

    # --- pixels
    passthrough = (
        fmt == "jpeg" and im.format == "JPEG" and out_fmt == "jpeg" and scale == 1.0
        and transpose is None and im.mode == "RGB"
    )
    try:
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        if passthrough:
            # Only statistics are needed: decode at a DCT-scaled size (whole stream still
            # read, so truncation is still caught).
            im.draft(None, (_DRAFT_SIDE, _DRAFT_SIDE))
        elif im.format in ("JPEG", "MPO") and scale < 1.0:
            s = _dct_scale(w, h, size)
            if s > 1:
                # Pillow picks min(w // req_w, h // req_h) rounded down to 8, 4, 2, 1: asking
                # for (w // s, h // s) gets exactly s (asking for the target size itself gets
                # 1 whenever an odd side rounds up, e.g. 1280 x 853 -> 640 x 427).
                im.draft(None, (w // s, h // s))
        budget = limits.max_image_decode_bytes
        if budget is not None:
            resize_to = size if not passthrough and scale < 1.0 and max(im.size) > target else None
            need = decode_bytes(im, fmt, data, resize_to, (w, h))
            if need > budget:
                raise ImageRejected(
                    "decode_too_large",
                    f"{w}x{h} {im.mode} {fmt}: ~{need / _MiB:.0f} MiB to decode > {budget / _MiB:.0f} MiB",
                )
        decoded = None
        if fmt == "png":
            plain = pyspng is not None and _png_plain(data)
            if plain and (budget is None or need + w * h * _SPNG_FORMATS[data[25]][1] + len(data) <= budget):
                decoded = _spng_decode(data, im)
            # No eXIf chunk after the pixels: Pillow has what there is without decoding.
            transpose = _transpose_of(im) if not plain or "exif" in im.info else None
        if passthrough:
            im.load()
            small = _to_rgb(im)
            stored = None
        else:
            if decoded is not None:
                icc = im.info.get("icc_profile") if im.mode in ("RGB", "RGBA", "P") else None
                im = decoded
            else:
                im.load()  # an animated image opens on, and loads, its first frame
                # An RGB colour profile stays with the pixels (wide-gamut photos would shift colour
                # without it); CMYK and grey profiles do not describe the converted RGB pixels.
                icc = im.info.get("icc_profile") if im.mode in ("RGB", "RGBA", "P") else None
            if scale < 1.0 and max(im.size) > target:
                # Grey and RGB pixels are resized as they are (one grey band costs a third of its
                # RGB copy); palettes, alpha and other modes become RGB first. Antialiased bicubic:
                # visually on par with Lanczos for downscaling, ~1.5x faster. From 3x down (PNG,
                # GIF, WebP; JPEGs arrive DCT-scaled below 2x) a box reduce by 2 goes first: half
                # the time for 3-4 dB less PSNR against Lanczos (33-52 dB on the shared photos,
                # what Pillow's own gap of 2.0 gives from 4x), about what the q90 encode loses.
                src = im if im.mode in ("L", "RGB") else _gray8(im) if im.mode in _INT_MODES else _to_rgb(im)
                rgb = _to_rgb(src.resize(size, Image.Resampling.BICUBIC, reducing_gap=_REDUCING_GAP))
            else:
                rgb = _to_rgb(im)
            # EXIF orientation on the resized pixels (fewer to move); the stored image carries no EXIF.
            if transpose is not None:
                rgb = rgb.transpose(transpose)
            small = _stats_copy(rgb)
            stored = rgb
    except ImageRejected:
        raise
    except Exception as e:  # hostile bytes: truncation, bad Huffman tables, broken zlib, ...
        raise _classify_decode_error(e) from None

    std = _max_channel_std(small)
    if cfg.min_pixel_std is not None and std < cfg.min_pixel_std:
        raise ImageRejected("single_color", f"pixel std {std:.2f} < {cfg.min_pixel_std}")

    if stored is None:
        out = _strip_jpeg_metadata(data)
        ow, oh = w, h
    else:
        out = _encode(stored, out_fmt, cfg.encode_quality, icc)
        ow, oh = stored.size
    return ProcessedImage(
        data=out,
        sha256=hashlib.sha256(out).hexdigest(),
        width=ow,
        height=oh,
        format=out_fmt,
        phash=_phash_hex(small),
        original_sha256=original_sha256,
        original_format=fmt,
        original_width=w,
        original_height=h,
        original_data=data if cfg.keep_originals else None,
    )


# ---------------------------------------------------------------------------------------------
# Beam: ProcessImages


class _ProcessImageFn(beam.DoFn):
    """ImageRecord → ResolvedImage (main) or Reject (``rejects``)."""

    def __init__(self, cfg: ImageConfig, limits: LimitsConfig, source: str):
        self._cfg = cfg
        self._limits = limits
        self._source = source
        self._decoded = Metrics.counter("m3w", f"{STAGE}.decoded")
        self._kept = Metrics.counter("m3w", f"{STAGE}.kept")
        self._bytes_in = Metrics.counter("m3w", f"{STAGE}.bytes_in")
        self._bytes_out = Metrics.counter("m3w", f"{STAGE}.bytes_out")
        self._dropped = {r: Metrics.counter("m3w", f"{STAGE}.dropped_{r}") for r in REJECT_REASONS}

    def process(self, rec: ImageRecord):
        self._bytes_in.inc(len(rec.data))
        source = getattr(rec, "source", None) or self._source
        try:
            p = process_image(rec.data, rec.url, self._cfg, self._limits)
        except ImageRejected as r:
            if r.reason in _AFTER_DECODE:
                self._decoded.inc()
            self._dropped[r.reason].inc()
            yield pvalue.TaggedOutput("rejects", Reject.of(STAGE, r.reason, rec.provenance, rec.url, r.detail))
            return
        self._decoded.inc()
        self._kept.inc()
        self._bytes_out.inc(len(p.data))
        yield ResolvedImage.of(p, rec.url, rec.provenance, source)


class ProcessImages(beam.PTransform):
    """``PCollection[ImageRecord]`` → ``DoOutputsTuple``: ``images`` (ResolvedImage), ``rejects`` (Reject).

    ``source`` labels the images ("warc" for records of the input crawl, "fetch" for fetched
    ones) unless the record itself carries a ``source`` attribute.
    """

    def __init__(self, cfg: ImageConfig = ImageConfig(), limits: LimitsConfig = LimitsConfig(), source: str = "warc"):
        super().__init__()
        self._cfg = cfg
        self._limits = limits
        self._source = source

    def expand(self, records):
        return records | "DecodeFilterResizeHash" >> beam.ParDo(
            _ProcessImageFn(self._cfg, self._limits, self._source)
        ).with_outputs("rejects", main="images")


# ---------------------------------------------------------------------------------------------
# Beam: DropRepeatedImages


def image_hashes_of(doc: Document):
    """(sha256, doc_id) once per distinct resolved image of a document."""
    seen = set()
    for node in doc.images:
        if node.sha256 is not None and node.sha256 not in seen:
            seen.add(node.sha256)
            yield node.sha256, doc.doc_id


def repeated_in_docs(sha_and_doc_ids, max_docs: int):
    """(sha256, [doc_id, ...]) → (doc_id, (sha256, n_docs)) for every document, when n_docs > max_docs."""
    sha, doc_ids = sha_and_doc_ids
    # ``image_hashes_of`` sends a document once per hash: count, then yield; nothing is held, so
    # a logo in a million documents costs no memory here
    n = sum(1 for _ in doc_ids)
    if n > max_docs:
        for doc_id in doc_ids:
            yield doc_id, (sha, n)


def drop_images(doc: Document, repeated: dict[str, int]) -> tuple[Document, list[tuple[str, ImageNode, str]]]:
    """The document without repeated images and in-document duplicates, plus what went and why.

    Returns ``(new_doc, [(reason, node, detail), ...])`` with reason "repeated" or
    "duplicate_in_doc". The first occurrence of an image inside a document is kept; unresolved
    image nodes and text nodes are left as they are. The input document is not modified.
    """
    nodes, dropped, seen = [], [], set()
    for node in doc.nodes:
        if isinstance(node, ImageNode) and node.sha256 is not None:
            if node.sha256 in repeated:
                dropped.append(("repeated", node, f"sha256 {node.sha256} in {repeated[node.sha256]} documents"))
                continue
            if node.sha256 in seen:
                dropped.append(("duplicate_in_doc", node, f"sha256 {node.sha256}"))
                continue
            seen.add(node.sha256)
        nodes.append(node)
    if not dropped:
        return doc, []
    return dataclasses.replace(doc, nodes=nodes), dropped


class _DropImagesFn(beam.DoFn):
    """(doc_id, {"doc": [Document], "repeated": [(sha, n_docs)]}) → Document (main) + Reject (``rejects``)."""

    def __init__(self):
        self._repeated = Metrics.counter("m3w", f"{STAGE}.dropped_repeated")
        self._dup = Metrics.counter("m3w", f"{STAGE}.dropped_duplicate_in_doc")

    def process(self, element):
        _, joined = element
        repeated = dict(joined["repeated"])
        for doc in joined["doc"]:
            new_doc, dropped = drop_images(doc, repeated)
            for reason, node, detail in dropped:
                (self._repeated if reason == "repeated" else self._dup).inc()
                yield pvalue.TaggedOutput("rejects", Reject.of(STAGE, reason, doc.provenance, node.url, detail))
            yield new_doc


class DropRepeatedImages(beam.PTransform):
    """``PCollection[Document]`` → ``DoOutputsTuple``: ``documents`` (main), ``rejects`` (Reject).

    Counts, across the whole run, in how many distinct documents each image content hash
    appears (GroupByKey on sha256), then re-joins the verdicts to the documents by doc_id
    (CoGroupByKey). No state outside the pipeline, so it scales with the runner.
    """

    def __init__(self, cfg: ImageConfig = ImageConfig()):
        super().__init__()
        self._max_docs = cfg.max_docs_per_image

    def expand(self, docs):
        docs_by_id = docs | "KeyDocumentsById" >> beam.Map(lambda d: (d.doc_id, d))
        if self._max_docs is None:
            verdicts = docs.pipeline | "NoRepetitionLimit" >> beam.Create([])
        else:
            verdicts = (
                docs
                | "ImageHashesPerDocument" >> beam.FlatMap(image_hashes_of)
                | "GroupDocumentsByImageHash" >> beam.GroupByKey()
                | "RepeatedImagesPerDocument" >> beam.FlatMap(repeated_in_docs, self._max_docs)
            )
        return (
            {"doc": docs_by_id, "repeated": verdicts}
            | "JoinVerdictsToDocuments" >> beam.CoGroupByKey()
            | "DropRepeatedAndDuplicateImages" >> beam.ParDo(_DropImagesFn()).with_outputs("rejects", main="documents")
        )
