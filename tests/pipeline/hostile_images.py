"""Hostile images made on the fly: small files whose headers declare many pixels in costly modes.

Every maker streams its pixel data through zlib (or writes run-length codes), so making a
9400 x 9400 16-bit PNG costs a few MB here, not the 177 MB its pixels take once decoded. Used by
tests/pipeline/test_images*.py and ``benchmarks.images --hostile``; nothing hostile is stored.
"""
from __future__ import annotations

import io
import struct
import zlib

from PIL import Image

# --- PNG --------------------------------------------------------------------------------------

# colour type -> samples per pixel
_PNG_SAMPLES = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def png(w: int, h: int, bit_depth: int = 8, color_type: int = 2, *, trns: bytes | None = None, interlace: int = 0) -> bytes:
    """A PNG of zero samples (all rows filter 0), any bit depth and colour type; interlace=1 is Adam7."""
    row = b"\x00" * (1 + (w * _PNG_SAMPLES[color_type] * bit_depth + 7) // 8)
    z = zlib.compressobj(9)
    if interlace:  # seven passes of reduced images; zero rows of each pass's width
        parts = []
        for x0, y0, dx, dy in ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2)):
            pw, ph = (w - x0 + dx - 1) // dx, (h - y0 + dy - 1) // dy
            if pw and ph:
                prow = b"\x00" * (1 + (pw * _PNG_SAMPLES[color_type] * bit_depth + 7) // 8)
                parts.extend(z.compress(prow) for _ in range(ph))
        idat = b"".join(parts) + z.flush()
    else:
        idat = b"".join(z.compress(row) for _ in range(h)) + z.flush()
    out = [b"\x89PNG\r\n\x1a\n", _chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, bit_depth, color_type, 0, 0, interlace))]
    if color_type == 3:
        out.append(_chunk(b"PLTE", bytes(range(256)) * 3))
    if trns is not None:
        out.append(_chunk(b"tRNS", trns))
    out += [_chunk(b"IDAT", idat), _chunk(b"IEND", b"")]
    return b"".join(out)


# --- TIFF -------------------------------------------------------------------------------------


def tiff(
    w: int,
    h: int,
    *,
    bits: int = 8,
    samples: int = 1,
    sample_format: int = 1,
    photometric: int | None = None,
    compression: int = 8,
    tile: tuple[int, int] | None = None,
    pages: int = 1,
) -> bytes:
    """A little-endian TIFF of zero samples, one strip (or one tile) per page, deflate by default.

    sample_format 1 = unsigned, 3 = IEEE float; compression 1 = none, 8 = deflate. ``tile`` gives
    TileWidth/TileLength (a tile may be larger than the image); ``pages`` chains that many IFDs.
    """
    if photometric is None:
        photometric = 1 if samples in (1, 2) else 2
    tw, th = tile if tile else (w, h)
    # A tile larger than the image still gets only the image's worth of data: the decoder sizes
    # its buffer from the tags.
    raw_len = ((min(tw, w) * samples * bits + 7) // 8) * min(th, h)
    if compression == 8:
        z = zlib.compressobj(9)
        step = 1 << 20
        blob = b"".join(z.compress(b"\x00" * min(step, raw_len - i)) for i in range(0, raw_len, step)) + z.flush()
    else:
        blob = b"\x00" * raw_len
    out = bytearray(b"II*\x00\x00\x00\x00\x00")
    prev_link = 4
    for _ in range(pages):
        data_off = len(out)
        out += blob
        if len(out) % 2:
            out += b"\x00"
        bps_off = len(out)
        out += struct.pack("<" + "H" * samples, *([bits] * samples))
        if samples > 2 and len(out) % 2:
            out += b"\x00"
        fmt_off = len(out)
        out += struct.pack("<" + "H" * samples, *([sample_format] * samples))
        entries = [
            (256, 4, 1, w),
            (257, 4, 1, h),
            (258, 3, samples, bps_off if samples > 2 else bits | (bits << 16) if samples == 2 else bits),
            (259, 3, 1, compression),
            (262, 3, 1, photometric),
            (277, 3, 1, samples),
            (284, 3, 1, 1),
            (339, 3, samples, fmt_off if samples > 2 else sample_format | (sample_format << 16) if samples == 2 else sample_format),
        ]
        if samples in (2, 4) and photometric in (1, 2):
            entries.append((338, 3, 1, 2))  # extra sample: unassociated alpha
        if tile:
            entries += [(322, 4, 1, tw), (323, 4, 1, th), (324, 4, 1, data_off), (325, 4, 1, len(blob))]
        else:
            entries += [(273, 4, 1, data_off), (278, 4, 1, h), (279, 4, 1, len(blob))]
        entries.sort()
        ifd_off = len(out)
        struct.pack_into("<I", out, prev_link, ifd_off)
        out += struct.pack("<H", len(entries))
        for tag, typ, count, value in entries:
            if typ == 3 and count == 1:
                out += struct.pack("<HHIHH", tag, typ, count, value, 0)
            else:
                out += struct.pack("<HHII", tag, typ, count, value)
        prev_link = len(out)
        out += b"\x00\x00\x00\x00"
    return bytes(out)


# --- WebP -------------------------------------------------------------------------------------


def webp_canvas(w: int, h: int, frames: int = 2) -> bytes:
    """An animated WebP of small 16 x 16 frames on a ``w`` x ``h`` canvas (a few hundred bytes)."""
    ims = [Image.new("RGB", (16, 16), (40 * i, 90, 200)) for i in range(frames)]
    buf = io.BytesIO()
    ims[0].save(buf, "WEBP", save_all=True, append_images=ims[1:], lossless=True)
    data = bytearray(buf.getvalue())
    i = data.index(b"VP8X")
    data[i + 12 : i + 18] = (w - 1).to_bytes(3, "little") + (h - 1).to_bytes(3, "little")
    return bytes(data)


# --- GIF, BMP, ICO, JPEG ----------------------------------------------------------------------


def gif_screen(w: int, h: int) -> bytes:
    """A GIF whose logical screen is ``w`` x ``h`` with one 16 x 16 frame at its corner."""
    buf = io.BytesIO()
    Image.new("P", (16, 16), 3).save(buf, "GIF")
    data = bytearray(buf.getvalue())
    data[6:10] = struct.pack("<HH", w, h)
    return bytes(data)


def bmp_rle8(w: int, h: int) -> bytes:
    """An 8-bit RLE BMP of ``w`` x ``h`` zero pixels: runs of 255, an end of line per row."""
    row = b"\xff\x00" * (w // 255) + (bytes([w % 255, 0]) if w % 255 else b"") + b"\x00\x00"
    pixels = row * h + b"\x00\x01"
    palette = b"".join(bytes([i, i, i, 0]) for i in range(256))
    off = 14 + 40 + len(palette)
    info = struct.pack("<IiiHHIIiiII", 40, w, h, 1, 8, 1, len(pixels), 2835, 2835, 256, 0)
    return b"BM" + struct.pack("<IHHI", off + len(pixels), 0, 0, off) + info + palette + pixels


def ico_with_png(png_bytes: bytes, declared: int = 32) -> bytes:
    """An ICO whose one entry declares ``declared`` px square but holds ``png_bytes``."""
    entry = struct.pack("<BBBBHHII", declared % 256, declared % 256, 0, 0, 1, 32, len(png_bytes), 6 + 16)
    return b"\x00\x00\x01\x00\x01\x00" + entry + png_bytes


def jpeg(w: int, h: int, *, progressive: bool = False, subsampling: int = 0, mode: str = "RGB") -> bytes:
    """A flat JPEG (decodes to one colour), encoded by Pillow: costs w*h*4 bytes to make."""
    buf = io.BytesIO()
    Image.new(mode, (w, h), (90, 120, 150) if mode == "RGB" else 128).save(
        buf, "JPEG", quality=90, progressive=progressive, subsampling=subsampling
    )
    return buf.getvalue()


def jpeg_claiming(w: int, h: int, *, progressive: bool = True) -> bytes:
    """A small 4:4:4 JPEG whose frame header is patched to claim ``w`` x ``h`` (not decodable to
    the end: what matters is what its header makes a decoder allocate)."""
    data = bytearray(jpeg(16, 16, progressive=progressive))
    sof = data.index(b"\xff\xc2" if progressive else b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", h, w)
    return bytes(data)


# The reproductions of issue 14 item 6 at the sizes that blew up (9400 x 9400 = 88.4 Mpx, under
# Pillow's 89.5 Mpx cap) and variants of their class at 6000 x 6000 (36 Mpx, still over the
# default budget in these modes): name -> (maker, formats to allow beyond the defaults).
CASES = {
    "png 16-bit grey 9400²": (lambda: png(9400, 9400, 16, 0), None),
    "tiff float 9400²": (lambda: tiff(9400, 9400, bits=32, sample_format=3), None),
    "webp animated, 9400² canvas": (lambda: webp_canvas(9400, 9400), None),
    "png 8-bit RGBA 6000²": (lambda: png(6000, 6000, 8, 6), None),
    "png 16-bit grey+alpha 6000²": (lambda: png(6000, 6000, 16, 4), None),
    "png palette + tRNS 6000²": (lambda: png(6000, 6000, 8, 3, trns=bytes(range(256))), None),
    "png 16-bit RGBA Adam7 6000²": (lambda: png(6000, 6000, 16, 6, interlace=1), None),
    "tiff float 3 pages 6000²": (lambda: tiff(6000, 6000, bits=32, sample_format=3, pages=3), None),
    "tiff RGBA, one 9400² tile over 2000²": (lambda: tiff(2000, 2000, bits=8, samples=4, tile=(9408, 9408)), None),
    "gif 9400² screen": (lambda: gif_screen(9400, 9400), None),
    "bmp RLE8 9400²": (lambda: bmp_rle8(9400, 9400), None),
    "jpeg progressive 4:4:4 9400²": (lambda: jpeg_claiming(9400, 9400), None),
    "ico holding a 16-bit 9400² png (ico not allowed)": (lambda: ico_with_png(png(9400, 9400, 16, 0)), None),
    "ico holding a 16-bit 6000² png (ico allowed)": (lambda: ico_with_png(png(6000, 6000, 16, 0)), ["ico"]),
}


def _status_kb(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key):
                return int(line.split()[1])
    raise KeyError(key)


def can_measure_peak() -> bool:
    """Whether this kernel lets a process reset its peak RSS (``/proc/self/clear_refs`` 5)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_growth_mb(fn):
    """(result, peak RSS growth in MB while ``fn()`` ran): freed memory is handed back and the
    peak reset first, so the figure is what ``fn`` itself made resident."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    before = _status_kb("VmRSS")
    out = fn()
    return out, (_status_kb("VmHWM") - before) / 1024


def measure_case(images_module, name: str) -> dict:
    """Make CASES[name] and run ``images_module.process_image`` on it with the default config:
    the outcome (a reject reason, "kept" or "MemoryError"), seconds, peak RSS growth in the call
    and the process's peak RSS (MB), and the input's size."""
    import time

    from pipeline.config import ImageConfig

    make, allow = CASES[name]
    data = make()
    cfg = ImageConfig(min_bytes=None)
    if allow:
        cfg.allowed_formats = cfg.allowed_formats + allow

    def call():
        t = time.perf_counter()
        try:
            images_module.process_image(data, "http://example.com/hostile", cfg)
            outcome = "kept"
        except images_module.ImageRejected as e:
            outcome = e.reason
        except MemoryError:
            outcome = "MemoryError"
        return outcome, time.perf_counter() - t

    (outcome, seconds), growth = peak_growth_mb(call)
    return {"reason": outcome, "seconds": seconds, "growth_mb": growth, "peak_mb": _status_kb("VmHWM") / 1024, "bytes": len(data)}


# --- a crawl of them, and the whole process tree's memory while a command runs ---------------


def write_crawl(path: str, images: dict[str, bytes]) -> None:
    """A gzipped WARC: one article page referencing every URL of ``images``, then their records."""
    from warcio.statusandheaders import StatusAndHeaders
    from warcio.warcwriter import WARCWriter

    paras = "".join(
        f'<p>Paragraph {i} about the harbour, the boats and the morning fog over the water.</p><img src="{u}" alt="photo {i}">'
        for i, u in enumerate(images)
    )
    html = f"<!doctype html><html><head><title>Harbour</title></head><body><article>{paras}</article></body></html>".encode()
    with open(path, "wb") as f:
        w = WARCWriter(f, gzip=True)
        http = StatusAndHeaders("200 OK", [("Content-Type", "text/html; charset=utf-8")], protocol="HTTP/1.1")
        w.write_record(w.create_warc_record("http://pages.example/harbour.html", "response", payload=io.BytesIO(html), http_headers=http))
        for url, data in images.items():
            http = StatusAndHeaders("200 OK", [("Content-Type", "image/png")], protocol="HTTP/1.1")
            w.write_record(w.create_warc_record(url, "response", payload=io.BytesIO(data), http_headers=http))


def run_tree(cmd: list[str], cwd, kill_above: float, timeout_s: float) -> tuple[int, str, int, float]:
    """Run ``cmd``, sampling the summed RSS of its whole process tree every 20 ms; kill the tree
    past ``kill_above`` bytes or ``timeout_s``. Returns (exit code, output, peak bytes, seconds)."""
    import subprocess
    import time

    import psutil

    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    ps, peak = psutil.Process(proc.pid), 0
    while proc.poll() is None:
        total = 0
        try:
            tree = [ps] + ps.children(recursive=True)
        except psutil.Error:
            tree = []
        for p in tree:
            try:
                total += p.memory_info().rss
            except psutil.Error:
                pass
        peak = max(peak, total)
        if peak > kill_above or time.monotonic() - t0 > timeout_s:
            for p in tree[::-1]:
                try:
                    p.kill()
                except psutil.Error:
                    pass
            break
        time.sleep(0.02)
    out = proc.communicate()[0]
    return proc.returncode, out, peak, time.monotonic() - t0
