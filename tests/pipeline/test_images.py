"""process_image on real photos from ../shared/data/images and on hostile inputs made here."""
from __future__ import annotations

import dataclasses
import io
import subprocess
import sys
import textwrap

import imagehash
import numpy as np
import pytest
from PIL import Image

from pipeline.config import ImageConfig, LimitsConfig
from pipeline.images import REJECT_REASONS, ImageRejected, ResolvedImage, process_image
from schemas.document import ImageNode, Provenance
from tests.conftest import REPO, shared_path

URL = "http://example.com/photos/a.jpg"
PROV = Provenance("crawl.warc.gz", 10, 20, "2024-01-01T00:00:00Z")


def read(*parts: str) -> bytes:
    return shared_path("images", *parts).read_bytes()


def reason_of(data: bytes, url: str = URL, cfg: ImageConfig = ImageConfig(), limits: LimitsConfig = LimitsConfig()) -> str:
    with pytest.raises(ImageRejected) as e:
        process_image(data, url, cfg, limits)
    return e.value.reason


def decode(data: bytes) -> Image.Image:
    im = Image.open(io.BytesIO(data))
    im.load()
    return im


def encode(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def photo(size=(200, 150), seed=0) -> np.ndarray:
    """A smooth colour gradient with noise: passes every default filter."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0 : size[1], 0 : size[0]]
    rgb = np.stack([x * 255 // size[0], y * 255 // size[1], (x + y) % 256], -1).astype(np.int16)
    return np.clip(rgb + rng.integers(-20, 20, rgb.shape), 0, 255).astype(np.uint8)


# --- formats sniffed from the bytes -----------------------------------------------------------


def test_jpeg_bytes_behind_png_and_bmp_names_are_read_as_jpeg():
    ref = process_image(read("imagededup_tests", "formats_images", "ukbench09380.jpeg"), URL)
    for name in ("ukbench09380.png", "ukbench09380.bmp"):
        got = process_image(read("imagededup_tests", "formats_images", name), f"http://example.com/{name}")
        assert got.original_format == "jpeg"
        assert (got.sha256, got.width, got.height, got.phash) == (ref.sha256, 640, 480, ref.phash)


@pytest.mark.parametrize(
    "name, fmt, size",
    [("copyleft.tiff", "tiff", (220, 220)), ("ukbench09380.webp", "webp", (640, 480)), ("giphy.gif", "gif", (314, 400))],
)
def test_tiff_webp_gif_decode_to_rgb_jpeg(name, fmt, size):
    got = process_image(read("imagededup_tests", "formats_images", name), URL)
    assert got.original_format == fmt
    stored = decode(got.data)
    assert (stored.format, stored.mode, stored.size) == ("JPEG", "RGB", size)
    assert (got.width, got.height, got.format) == (*size, "jpeg")


def test_animated_gif_keeps_its_first_frame():
    data = read("imagededup_tests", "formats_images", "giphy.gif")
    gif = Image.open(io.BytesIO(data))
    assert gif.n_frames > 1
    frames = []
    for i in range(2):
        gif.seek(i)
        frames.append(np.asarray(gif.convert("RGB"), dtype=np.float32))
    stored = np.asarray(decode(process_image(data, URL).data), dtype=np.float32)
    err = [np.abs(stored - f).mean() for f in frames]
    assert err[0] < 3.0 and err[0] < err[1]


def test_webp_and_its_jpeg_twin_get_near_identical_phash():
    a = process_image(read("imagededup_tests", "formats_images", "ukbench09380.webp"), URL)
    b = process_image(read("imagededup_tests", "formats_images", "ukbench09380.jpeg"), URL)
    assert imagehash.hex_to_hash(a.phash) - imagehash.hex_to_hash(b.phash) <= 6


# --- broken inputs ------------------------------------------------------------------------------


def test_corrupt_jpeg_from_mixed_images_is_rejected():
    assert reason_of(read("imagededup_tests", "mixed_images", "ukbench09268_corrupt.jpg")) == "not_an_image"


def test_truncated_jpegs_are_rejected_as_truncated():
    small = read("skimage_data_photos", "truncated.jpg")  # 400 bytes: caught by min_bytes by default
    assert reason_of(small) == "too_few_bytes"
    assert reason_of(small, cfg=ImageConfig(min_bytes=None)) == "truncated"
    whole = read("imagededup_tests", "base_images", "ukbench00120.jpg")
    assert reason_of(whole[: len(whole) // 2]) == "truncated"
    big = read("pdq_bridge_mods", "aaa-orig.jpg")  # takes the resize path
    assert reason_of(big[: len(big) * 2 // 3]) == "truncated"


def test_header_only_and_garbage_after_signature_is_corrupt():
    assert reason_of(b"\x89PNG\r\n\x1a\n" + b"\x00" * 2000) == "corrupt"
    gif = encode(Image.fromarray(photo()).convert("P"), "GIF")
    assert reason_of(gif[:13] + b"\x00" * 2000) in ("corrupt", "truncated")


def test_svg_and_html_are_skipped_with_their_reason():
    svg = b'<?xml version="1.0"?>\n<svg xmlns="http://www.w3.org/2000/svg" width="100" height="100">' + b" " * 1000 + b"</svg>"
    assert reason_of(svg) == "svg"
    html = b"<!doctype html><html><body>" + b"Not found " * 200 + b"</body></html>"
    assert reason_of(html) == "not_an_image"


# --- decompression bombs: rejected from the header, fast, without allocating pixels --------------


def test_decompression_bombs_rejected_fast_with_flat_memory():
    # Run in a fresh interpreter so the peak RSS says what rejecting the bombs cost.
    script = textwrap.dedent(
        """
        import io, resource, struct, time, zlib, json
        from PIL import Image
        from pipeline.config import ImageConfig
        from pipeline.images import process_image, ImageRejected

        def chunk(kind, body):
            return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

        # A real PNG bomb: 12000 x 12000 grey pixels (144 Mpx) of zeros, ~140 KB compressed.
        w = h = 12000
        z = zlib.compressobj(9)
        row = b"\\x00" * (w + 1)
        idat = b"".join(z.compress(row) for _ in range(h)) + z.flush()
        png = b"\\x89PNG\\r\\n\\x1a\\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
        # A JPEG whose frame header claims 60000 x 60000.
        buf = io.BytesIO(); Image.new("RGB", (64, 64), (200, 10, 10)).save(buf, "JPEG"); jpg = bytearray(buf.getvalue())
        sof = jpg.index(b"\\xff\\xc0"); jpg[sof + 5 : sof + 9] = struct.pack(">HH", 60000, 60000)
        # A GIF whose logical screen and frame claim 65535 x 65535.
        buf = io.BytesIO(); Image.new("P", (64, 64), 3).save(buf, "GIF"); gif = bytearray(buf.getvalue())
        gif[6:10] = struct.pack("<HH", 65535, 65535)
        desc = gif.index(b"\\x2c", 13); gif[desc + 5 : desc + 9] = struct.pack("<HH", 65535, 65535)

        out = {}
        for name, data in (("png", png), ("jpeg", bytes(jpg)), ("gif", bytes(gif))):
            before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            t = time.perf_counter()
            try:
                process_image(data, "http://example.com/bomb", ImageConfig(min_bytes=None))
                reason = None
            except ImageRejected as e:
                reason = e.reason
            out[name] = (reason, time.perf_counter() - t, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before)
        print(json.dumps(out))
        """
    )
    res = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    import json

    out = json.loads(res.stdout.strip().splitlines()[-1])
    for name, (reason, seconds, rss_growth_kb) in out.items():
        assert reason == "decompression_bomb", name
        assert seconds < 0.1, (name, seconds)
        assert rss_growth_kb < 8_000, (name, rss_growth_kb)  # a decoded bomb would take >= 144 MB


def test_pixel_cap_comes_from_limits():
    data = read("imagededup_tests", "base_images", "ukbench09040.jpg")  # 640 x 480
    assert reason_of(data, limits=LimitsConfig(max_image_pixels=640 * 480 - 1)) == "decompression_bomb"
    assert process_image(data, URL, limits=LimitsConfig(max_image_pixels=640 * 480)).width == 640


# --- modes to RGB ------------------------------------------------------------------------------


def test_grayscale_jpeg_is_stored_as_rgb():
    got = process_image(read("imagededup_tests", "ukbench00120_gray.jpg"), URL)
    assert decode(got.data).mode == "RGB"
    colour = process_image(read("imagededup_tests", "base_images", "ukbench00120.jpg"), URL)
    assert imagehash.hex_to_hash(got.phash) - imagehash.hex_to_hash(colour.phash) <= 8


@pytest.mark.parametrize("name", ["alpha_channel_image.png"])
def test_real_alpha_png_is_stored_as_rgb(name):
    got = process_image(read("imagededup_tests", name), URL)
    assert decode(got.data).mode == "RGB" and (got.width, got.height) == (640, 480)


def _half_transparent(mode: str) -> Image.Image:
    rgb = photo((200, 200))
    alpha = np.full((200, 200), 255, np.uint8)
    alpha[:, :100] = 0  # left half fully transparent
    rgba = Image.fromarray(np.dstack([rgb, alpha]), "RGBA")
    if mode == "LA":
        return rgba.convert("LA")
    if mode == "P":
        p = rgba.convert("RGB").quantize(64)
        pal = np.asarray(p).copy()
        pal[:, :100] = 63
        p = Image.fromarray(pal, "P")
        p.putpalette(rgba.convert("RGB").quantize(64).getpalette())
        p.info["transparency"] = 63
        return p
    return rgba


@pytest.mark.parametrize("mode, fmt", [("RGBA", "PNG"), ("LA", "PNG"), ("P", "PNG"), ("RGBA", "WEBP")])
def test_transparent_pixels_are_composited_on_white(mode, fmt):
    im = _half_transparent(mode)
    kw = {"transparency": 63} if mode == "P" else ({"lossless": True} if fmt == "WEBP" else {})
    got = process_image(encode(im, fmt, **kw), URL)
    px = np.asarray(decode(got.data), dtype=np.int16)
    assert px[:, :90].min() >= 245  # transparent half is white, not black
    assert px[:, 110:].std() > 20  # opaque half keeps the photo


def test_cmyk_16bit_and_bilevel_images_convert_correctly():
    rgb = Image.fromarray(photo((160, 120)))
    got = process_image(encode(rgb.convert("CMYK"), "JPEG", quality=95), URL)
    diff = np.abs(np.asarray(decode(got.data), np.int16) - np.asarray(rgb, np.int16)).mean()
    assert diff < 12  # CMYK JPEG comes back with the right colours, not inverted
    ramp = (np.tile(np.linspace(0, 65535, 256), (100, 1))).astype(np.uint16)
    got = process_image(encode(Image.fromarray(ramp, "I;16"), "PNG"), URL, ImageConfig(min_bytes=None))
    px = np.asarray(decode(got.data), np.int16)
    assert px[:, :5].mean() < 10 and px[:, -5:].mean() > 245  # full 16-bit range maps to 0..255
    bits = Image.fromarray(photo((128, 128))[..., 0] > 128).convert("1")
    assert decode(process_image(encode(bits, "PNG"), URL, ImageConfig(min_bytes=None)).data).mode == "RGB"


def test_exif_orientation_is_applied():
    # ukbench09268.jpg is stored 640 x 480 with EXIF orientation 6 (rotate 90° clockwise).
    got = process_image(read("imagededup_tests", "mixed_images", "ukbench09268.jpg"), URL)
    assert (got.width, got.height) == (480, 640)
    im = Image.fromarray(photo((300, 100)))
    exif = Image.Exif()
    exif[0x0112] = 8
    got = process_image(encode(im, "JPEG", exif=exif.tobytes(), quality=95), URL)
    stored = np.asarray(decode(got.data), np.int16)
    assert stored.shape[:2] == (300, 100)
    expect = np.asarray(im.transpose(Image.Transpose.ROTATE_90), np.int16)
    wrong = np.asarray(im.transpose(Image.Transpose.ROTATE_270), np.int16)
    assert np.abs(stored - expect).mean() < 12 < np.abs(stored - wrong).mean()


# --- filters -----------------------------------------------------------------------------------


def test_size_aspect_and_colour_filters():
    assert reason_of(read("pdq_bridge_mods", "square-128x128.jpg"), cfg=ImageConfig(min_side=150)) == "too_small"
    assert reason_of(read("pdq_bridge_mods", "aaa-orig.jpg"), cfg=ImageConfig(max_side=1000)) == "too_large"
    text = read("skimage_data_photos", "text.png")  # 448 x 172 = 2.6
    assert reason_of(text, cfg=ImageConfig(max_aspect_ratio=2.0)) == "aspect_ratio"
    assert process_image(text, URL).width == 448
    flat = encode(Image.new("RGB", (300, 200), (30, 120, 200)), "PNG")
    assert reason_of(flat, cfg=ImageConfig(min_bytes=None)) == "single_color"
    flat_jpeg = encode(Image.new("RGB", (300, 200), (250, 250, 250)), "JPEG")
    assert reason_of(flat_jpeg, cfg=ImageConfig(min_bytes=None)) == "single_color"


def test_format_byte_and_url_filters():
    webp = read("imagededup_tests", "formats_images", "ukbench09380.webp")
    assert reason_of(webp, cfg=ImageConfig(allowed_formats=["jpeg", "png"])) == "format_not_allowed"
    jpg = read("imagededup_tests", "base_images", "ukbench09040.jpg")
    assert reason_of(jpg, cfg=ImageConfig(max_bytes=len(jpg) - 1)) == "too_many_bytes"
    assert reason_of(jpg, limits=LimitsConfig(max_image_bytes=1000)) == "too_many_bytes"
    assert reason_of(jpg, cfg=ImageConfig(min_bytes=len(jpg) + 1)) == "too_few_bytes"
    assert reason_of(jpg, url="https://cdn.example.com/static/site-logo.jpg") == "url_keyword"
    assert reason_of(jpg, url="https://example.com/img?type=ICON") == "url_keyword"
    # The host name does not count: only path and query say what the image is.
    assert process_image(jpg, "https://iconic-logos.example.com/photo.jpg").width == 640
    assert process_image(jpg, "https://example.com/site-logo.jpg", ImageConfig(url_keywords=None)).width == 640


# --- resize, encode, hashes --------------------------------------------------------------------


def test_resize_keeps_aspect_and_never_upscales():
    big = process_image(read("pdq_bridge_mods", "aaa-orig.jpg"), URL)  # 1600 x 1004
    assert (big.width, big.height) == (640, 402) and (big.original_width, big.original_height) == (1600, 1004)
    assert decode(big.data).size == (640, 402)
    small = process_image(read("pdq_bridge_mods", "square-128x128.jpg"), URL)
    assert (small.width, small.height) == (128, 128)
    half = process_image(read("pdq_bridge_mods", "aaa-orig.jpg"), URL, ImageConfig(resize_longest_side=320))
    assert (half.width, half.height) == (320, 201)
    full = process_image(read("pdq_bridge_mods", "aaa-orig.jpg"), URL, ImageConfig(resize_longest_side=None))
    assert (full.width, full.height) == (1600, 1004)


def test_webp_encoding_and_kept_originals():
    data = read("skimage_data_photos", "chelsea.png")
    got = process_image(data, URL, ImageConfig(encode_format="webp", encode_quality=80, keep_originals=True))
    assert got.format == "webp" and decode(got.data).format == "WEBP"
    assert got.original_data == data and got.original_format == "png"
    assert process_image(data, URL).original_data is None
    kept = process_image(data, URL, ImageConfig(encode_format="keep"))
    assert kept.format == "png" and decode(kept.data).format == "PNG"


def test_unchanged_jpeg_is_stored_losslessly_without_its_exif():
    im = Image.fromarray(photo((320, 240)))
    exif = Image.Exif()
    exif[0x010F] = "CameraMaker"  # Make
    exif[0x0110] = "SecretModel"  # Model
    data = encode(im, "JPEG", quality=92, exif=exif.tobytes())
    got = process_image(data, URL)
    assert b"SecretModel" in data and b"SecretModel" not in got.data
    assert np.array_equal(np.asarray(decode(got.data)), np.asarray(decode(data)))  # not re-encoded
    assert got.original_sha256 != got.sha256


@pytest.mark.parametrize(
    "parts",
    [
        ("pdq_bridge_mods", "aaa-orig.jpg"),  # resized
        ("imagededup_tests", "base_images", "ukbench09380.jpg"),  # stored unchanged
        ("imagededup_tests", "formats_images", "copyleft.tiff"),  # flat graphic
        ("skimage_data_photos", "color.png"),
    ],
)
def test_hashes_describe_the_stored_bytes(parts):
    import hashlib

    data = read(*parts)
    got = process_image(data, URL)
    assert got.sha256 == hashlib.sha256(got.data).hexdigest()
    assert got.original_sha256 == hashlib.sha256(data).hexdigest()
    assert len(got.phash) == 16
    assert imagehash.hex_to_hash(got.phash) - imagehash.phash(decode(got.data)) <= 2


def test_phash_groups_near_duplicates_and_separates_distinct_photos():
    mods = ["blur-a-little.jpg", "high-contrast.jpg", "sharpen-a-little.jpg", "shrink-a-little.jpg", "high-saturation.jpg"]
    orig = imagehash.hex_to_hash(process_image(read("pdq_bridge_mods", "aaa-orig.jpg"), URL).phash)
    for m in mods:
        assert orig - imagehash.hex_to_hash(process_image(read("pdq_bridge_mods", m), URL).phash) <= 6, m
    base = shared_path("images", "imagededup_tests", "base_images")
    hashes = [imagehash.hex_to_hash(process_image(p.read_bytes(), URL).phash) for p in sorted(base.glob("*.jpg"))]
    dists = [a - b for i, a in enumerate(hashes) for b in hashes[i + 1 :]]
    assert min(dists) > 10


def test_resolved_image_applies_to_a_node():
    got = process_image(read("imagededup_tests", "base_images", "ukbench09040.jpg"), URL)
    res = ResolvedImage.of(got, URL, PROV, "warc")
    node = ImageNode(url=URL, alt="a cat", declared_width=640)
    out = res.apply_to(node)
    assert node.sha256 is None  # input untouched
    assert out.resolved and out.alt == "a cat" and out.declared_width == 640
    assert (out.sha256, out.phash, out.width, out.height, out.format, out.source) == (
        got.sha256, got.phash, 640, 480, "jpeg", "warc"
    )
    assert out.data == got.data and out.original_sha256 == got.original_sha256
    assert dataclasses.asdict(out)["url"] == URL


def test_rgb_colour_profile_is_kept_and_cmyk_profile_is_not():
    from PIL import ImageCms

    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    png = encode(Image.fromarray(photo((200, 150))), "PNG", icc_profile=icc)
    assert decode(process_image(png, URL).data).info.get("icc_profile") == icc
    cmyk = encode(Image.fromarray(photo((200, 150))).convert("CMYK"), "JPEG", icc_profile=icc)
    assert decode(process_image(cmyk, URL).data).info.get("icc_profile") is None


_SEEDS = [
    ("imagededup_tests", "base_images", "ukbench09040.jpg"),
    ("imagededup_tests", "formats_images", "giphy.gif"),
    ("imagededup_tests", "formats_images", "copyleft.tiff"),
    ("imagededup_tests", "formats_images", "ukbench09380.webp"),
    ("skimage_data_photos", "coins.png"),
]


def test_damaged_real_images_are_kept_or_rejected_never_crash():
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    seeds = [read(*parts) for parts in _SEEDS]

    @settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
    @given(
        which=st.integers(0, len(seeds) - 1),
        cut=st.floats(0.0, 1.0),
        flips=st.lists(st.tuples(st.floats(0.0, 1.0), st.integers(0, 255)), max_size=8),
    )
    def check(which, cut, flips):
        data = bytearray(seeds[which])
        for pos, value in flips:
            data[int(pos * (len(data) - 1))] = value
        data = bytes(data[: max(1, int(len(data) * cut))]) if cut < 1.0 else bytes(data)
        try:
            got = process_image(data, URL, ImageConfig(min_bytes=None))
        except ImageRejected as e:
            assert e.reason in REJECT_REASONS
            return
        assert decode(got.data).mode == "RGB" and got.width <= 640 and got.height <= 640

    check()


# --- the fast paths give the same answers as the plain ones ------------------------------------


def test_phash_is_bit_identical_to_imagehash_on_real_photos():
    from pipeline.images import _phash_hex

    names = [
        ("skimage_data_photos", "astronaut.png"),
        ("skimage_data_photos", "camera.png"),
        ("skimage_data_photos", "text.png"),
        ("pdq_bridge_mods", "aaa-orig.jpg"),
        ("imagededup_tests", "formats_images", "copyleft.tiff"),
    ]
    for parts in names:
        rgb = decode(read(*parts)).convert("RGB")
        for im in (rgb, rgb.reduce(3), rgb.resize((45, 37))):
            assert _phash_hex(im) == str(imagehash.phash(im)), (parts, im.size)


def test_palette_with_partial_alpha_is_composited_like_alpha_composite():
    rgb = Image.fromarray(photo((160, 120))).quantize(32)
    alpha = bytes(range(0, 256, 8))  # one alpha per palette entry, 0 .. 248
    data = encode(rgb, "PNG", transparency=alpha)
    src = decode(data)
    assert src.mode == "P" and isinstance(src.info["transparency"], bytes)
    white = Image.new("RGBA", src.size, (255, 255, 255, 255))
    expect = np.asarray(Image.alpha_composite(white, src.convert("RGBA")).convert("RGB"), np.int16)
    got = process_image(data, URL, ImageConfig(encode_format="keep", min_bytes=None))  # PNG: lossless
    assert np.abs(np.asarray(decode(got.data), np.int16) - expect).max() <= 1


def test_exif_rotated_large_jpeg_is_resized_then_turned_upright():
    src = decode(read("pdq_bridge_mods", "aaa-orig.jpg"))  # 1600 x 1004
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: rotate 90° clockwise to view
    got = process_image(encode(src, "JPEG", quality=95, exif=exif.tobytes()), URL)
    assert (got.width, got.height, got.original_width, got.original_height) == (402, 640, 1600, 1004)
    expect = np.asarray(src.resize((640, 402), Image.Resampling.LANCZOS).transpose(Image.Transpose.ROTATE_270), np.int16)
    assert np.abs(np.asarray(decode(got.data), np.int16) - expect).mean() < 4
    assert imagehash.hex_to_hash(got.phash) - imagehash.phash(decode(got.data)) <= 2


def test_invalid_orientation_counts_as_upright_and_keeps_the_jpeg_unchanged():
    im = Image.fromarray(photo((320, 240)))
    exif = Image.Exif()
    exif[0x0112] = 0  # outside 1..8, as cameras sometimes write
    data = encode(im, "JPEG", quality=92, exif=exif.tobytes())
    got = process_image(data, URL)
    assert (got.width, got.height) == (320, 240)
    assert np.array_equal(np.asarray(decode(got.data)), np.asarray(decode(data)))  # not re-encoded


def test_grey_image_resized_as_grey_is_stored_as_equal_rgb_channels():
    got = process_image(read("skimage_data_photos", "cell.png"), URL)  # L, 550 x 660
    assert (got.width, got.height) == (533, 640)
    px = np.asarray(decode(got.data), np.int16)
    ref = np.asarray(decode(read("skimage_data_photos", "cell.png")).resize((533, 640), Image.Resampling.LANCZOS), np.int16)
    assert np.abs(px[..., 0] - px[..., 2]).max() <= 2  # grey stays grey through the RGB JPEG
    assert np.abs(px[..., 1] - ref).mean() < 2


def test_large_jpeg_with_an_odd_side_is_decoded_at_half_size_not_resampled():
    # 1280 x 853 (a common 3:2 web size): DCT scaling at 1/2 gives 640 x 427, already within the
    # 640 px target, so that decode is stored (no full-size decode, no resampling pass).
    src = decode(read("pdq_bridge_mods", "aaa-orig.jpg")).resize((1280, 853), Image.Resampling.LANCZOS)
    data = encode(src, "JPEG", quality=90)
    got = process_image(data, URL)
    assert (got.width, got.height) == (640, 427)
    expect = np.asarray(decode(data).reduce(2), np.int16)  # 2 x 2 box average of the full decode
    # ~3 with the q90 re-encode (a full decode + bicubic resize gives ~4.6, a 1 px shift ~10)
    assert np.abs(np.asarray(decode(got.data), np.int16) - expect).mean() < 5
    assert imagehash.hex_to_hash(got.phash) - imagehash.phash(decode(got.data)) <= 2


# --- PNGs through libspng, repeated bytes from the cache ------------------------------------------


def _png_chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    out, i = [], 8
    while i < len(data):
        n = int.from_bytes(data[i : i + 4], "big")
        out.append((data[i + 4 : i + 8], data[i + 8 : i + 8 + n]))
        i += 12 + n
    return out


def _png_from_chunks(chunks) -> bytes:
    import struct
    import zlib

    return b"\x89PNG\r\n\x1a\n" + b"".join(
        struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body)) for kind, body in chunks
    )


def test_pngs_decoded_by_libspng_store_the_same_bytes_as_through_pillow(monkeypatch):
    import pipeline.images as images

    made = []
    for mode in ("L", "LA", "RGB", "RGBA", "P"):
        im = Image.fromarray(photo((900, 700), seed=5)).convert(mode)
        made.append((f"{mode}.png", encode(im, "PNG")))
        made.append((f"{mode}-small.png", encode(im.resize((300, 200)), "PNG")))
    real = [(p.name, p.read_bytes()) for p in sorted(shared_path("images").rglob("*.png"))]
    cases = made + real
    assert len(cases) >= 10
    with_spng = {}
    for name, data in cases:
        images.clear_result_cache()
        with_spng[name] = process_image(data, URL)
    monkeypatch.setattr(images, "pyspng", None)
    for name, data in cases:
        images.clear_result_cache()
        ref = process_image(data, URL)
        got = with_spng[name]
        assert (got.data, got.phash, got.width, got.height) == (ref.data, ref.phash, ref.width, ref.height), name


def test_damaged_png_and_exif_after_the_pixels_take_pillows_path(monkeypatch):
    import pipeline.images as images

    im = Image.fromarray(photo((300, 200)))
    data = encode(im, "PNG")
    chunks = _png_chunks(data)
    idat = max(i for i, (k, _) in enumerate(chunks) if k == b"IDAT")
    # Bytes flipped inside the pixel data (the chunk CRC no longer matches), the file cut short:
    # the same outcome as Pillow alone gives.
    damaged = []
    for off in (50, 400, 2000):
        bad = bytearray(data)
        bad[data.index(b"IDAT") + 4 + off] ^= 0xFF
        damaged.append(bytes(bad))
    damaged.append(data[: len(data) * 2 // 3])

    def outcome(d):
        images.clear_result_cache()
        try:
            p = process_image(d, URL)
            return p.data
        except ImageRejected as e:
            return e.reason

    got = [outcome(d) for d in damaged]
    with monkeypatch.context() as m:
        m.setattr(images, "pyspng", None)
        assert got == [outcome(d) for d in damaged]
    assert got[-1] == "truncated"
    # EXIF orientation 6 in an eXIf chunk after IDAT: still applied (stored 200 x 300).
    exif = Image.Exif()
    exif[0x0112] = 6
    moved = chunks[: idat + 1] + [(b"eXIf", exif.tobytes())] + chunks[idat + 1 :]
    got = process_image(_png_from_chunks(moved), URL)
    assert (got.width, got.height) == (200, 300)
    first = min(i for i, (k, _) in enumerate(chunks) if k == b"IDAT")
    before = chunks[:first] + [(b"eXIf", exif.tobytes())] + chunks[first:]
    got = process_image(_png_from_chunks(before), URL)
    assert (got.width, got.height) == (200, 300)


def test_repeated_bytes_come_from_the_cache_and_the_url_is_still_checked():
    import pipeline.images as images

    images.clear_result_cache()
    data = encode(Image.fromarray(photo((800, 600), seed=9)), "PNG")
    first = process_image(data, "http://a.example/one.png")
    again = process_image(data, "http://b.example/two.png")
    assert again is first  # not decoded again
    assert reason_of(data, url="http://b.example/logo.png") == "url_keyword"
    flat = encode(Image.new("RGB", (300, 300), (10, 200, 30)), "PNG")
    assert reason_of(flat, cfg=ImageConfig(min_bytes=None)) == reason_of(flat, cfg=ImageConfig(min_bytes=None)) == "single_color"
    # Other settings, other result.
    assert process_image(data, URL, ImageConfig(resize_longest_side=320)).width == 320


def test_result_cache_is_bounded_by_bytes():
    from pipeline.images import _ResultCache

    cache = _ResultCache(max_bytes=64_000)
    for i in range(1000):
        cache.put(i, object(), 1_000)
    assert len(cache) == 64_000 // 1_512
    assert cache.get(999) is not None and cache.get(0) is None
    cache.put("huge", object(), 10_000)  # over an eighth of the cache: not kept
    assert cache.get("huge") is None
