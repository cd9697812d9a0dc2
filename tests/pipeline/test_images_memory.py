"""Decode memory is bounded by bytes: hostile images under the pixel cap are counted rejects
before decoding, every other image is processed within limits.max_image_decode_bytes.

The hostile inputs (tests/pipeline/hostile_images.py) are made here, a few hundred KB each; the
ones that once took 1.3-2.4 GB run in a child process whose address space is capped, so that a
regression fails the test instead of taking the machine's memory.
"""
from __future__ import annotations

import glob
import gzip
import io
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import webdataset as wds
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from pipeline.config import ImageConfig, LimitsConfig
from pipeline.images import REJECT_REASONS, ImageRejected, process_image
from tests.conftest import REPO
from tests.pipeline import hostile_images as H
from schemas.samples import unpack_images

URL = "http://example.com/photos/a.png"
MiB = 1 << 20
# Beyond the image's own buffers a call allocates a little: numpy statistics, the encoded output.
SLACK_MB = 8

needs_peak = pytest.mark.skipif(not H.can_measure_peak(), reason="kernel cannot reset the peak RSS (/proc/self/clear_refs)")


@needs_peak
def test_every_hostile_image_is_a_counted_reject_before_decoding_in_a_capped_process():
    # 1.5 GB of address space above what the interpreter holds once the stage is imported: the
    # unbounded decoder took 1.3-2.4 GB of *resident* memory for each of these.
    script = textwrap.dedent(
        """
        import json, resource
        import pipeline.images
        from tests.pipeline import hostile_images as H

        cap = H._status_kb("VmSize") * 1024 + 1536 * 2**20
        resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
        print(json.dumps({name: H.measure_case(pipeline.images, name) for name in H.CASES}))
        """
    )
    res = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert set(out) == set(H.CASES)
    for name, r in out.items():
        reason, seconds, mb, n_bytes = r["reason"], r["seconds"], r["growth_mb"], r["bytes"]
        want = "format_not_allowed" if "not allowed" in name else "decode_too_large"
        assert reason == want, (name, reason)
        assert mb < 16, (name, mb)  # nothing decoded (an accepted one would take >= 88 MB)
        assert seconds < 1.0, (name, seconds)
        assert n_bytes < 1_000_000, name  # small files, as in the reproduction


def test_pixel_cap_still_comes_first_and_budget_can_be_lifted():
    data = H.png(9400, 9400, 16, 0)
    with pytest.raises(ImageRejected) as e:
        process_image(data, URL, ImageConfig(min_bytes=None), LimitsConfig(max_image_pixels=9400 * 9400 - 1))
    assert e.value.reason == "decompression_bomb"
    with pytest.raises(ImageRejected) as e:
        process_image(data, URL, ImageConfig(min_bytes=None))
    assert e.value.reason == "decode_too_large"
    assert "9400x9400 I;16 png" in e.value.detail and "MiB" in e.value.detail


def test_16bit_and_float_images_convert_in_strips_like_the_whole_array():
    # 1500 x 1100 spans several conversion strips; the stored pixels equal the whole-array formula.
    rng = np.random.default_rng(3)
    y, x = np.mgrid[0:1100, 0:1500]
    grey16 = ((x * 40 + y * 17) % 65536).astype(np.uint16) ^ rng.integers(0, 2000, (1100, 1500)).astype(np.uint16)
    floats = np.sin(x / 70.0) * np.cos(y / 50.0) * 1e4 + 3e3
    cfg = ImageConfig(min_bytes=None, resize_longest_side=None, encode_format="png")
    for arr, mode in ((grey16, "I;16"), (floats.astype(np.float32), "F")):
        buf = io.BytesIO()
        Image.fromarray(arr, mode).save(buf, "TIFF", compression="tiff_adobe_deflate")
        got = np.asarray(Image.open(io.BytesIO(process_image(buf.getvalue(), URL, cfg).data)).convert("L"))
        a = arr.astype(np.float64)
        if mode == "F":
            a = (a - a.min()) * (255.0 / (a.max() - a.min()))
        else:
            a = a / 257.0
        want = np.clip(a + 0.5, 0, 255).astype(np.uint8)
        assert np.array_equal(got, want), mode


def test_large_valid_images_under_the_budget_are_kept():
    # A 4000 x 3000 RGBA PNG (~12 Mpx) and a progressive 4:4:4 JPEG of the same size: real work,
    # well under 256 MiB, so both are processed as before.
    rng = np.random.default_rng(1)
    small = rng.integers(0, 255, (300, 400, 4), dtype=np.uint8)
    big = Image.fromarray(small, "RGBA").resize((4000, 3000), Image.Resampling.BILINEAR)
    buf = io.BytesIO()
    big.save(buf, "PNG", compress_level=1)
    got = process_image(buf.getvalue(), URL, ImageConfig(max_bytes=None), LimitsConfig(max_image_bytes=None))
    assert (got.width, got.height) == (640, 480)
    buf = io.BytesIO()
    big.convert("RGB").save(buf, "JPEG", quality=90, progressive=True, subsampling=0)
    got = process_image(buf.getvalue(), URL)
    assert (got.width, got.height) == (640, 480)


# --- property: any format, mode and size is processed within the budget or is a counted reject --

_FORMAT_MODES = {
    "PNG": ["1", "L", "LA", "P", "RGB", "RGBA", "I;16"],
    "JPEG": ["L", "RGB", "CMYK"],
    "GIF": ["P", "L"],
    "WEBP": ["RGB", "RGBA"],
    "BMP": ["1", "L", "P", "RGB", "RGBA"],
    "TIFF": ["1", "L", "LA", "P", "RGB", "RGBA", "CMYK", "I;16", "I", "F"],
}


def _make(fmt: str, mode: str, w: int, h: int, seed: int, variant: int) -> bytes:
    rng = np.random.default_rng(seed)
    base = Image.fromarray(rng.integers(0, 256, (max(1, h // 16), max(1, w // 16), 3), dtype=np.uint8)).resize((w, h))
    if mode == "I;16":
        im = Image.fromarray(np.asarray(base.convert("L")).astype(np.uint16) * 257)
    elif mode in ("I", "F"):
        im = base.convert("L").convert(mode)
    elif mode == "P":
        im = base.convert("P")
        if variant % 2:
            im.info["transparency"] = 0
    else:
        im = base.convert(mode)
    buf = io.BytesIO()
    kw = {}
    if fmt == "JPEG":
        kw = {"quality": 85, "progressive": bool(variant % 2), "subsampling": variant % 3}
    elif fmt == "TIFF":
        kw = {"compression": ["raw", "tiff_adobe_deflate", "tiff_lzw"][variant % 3]}
    elif fmt == "WEBP":
        kw = {"lossless": bool(variant % 2), "quality": 70}
    elif fmt == "PNG" and "transparency" in im.info:
        kw = {"transparency": 0}
    im.save(buf, fmt, **kw)
    return buf.getvalue()


@st.composite
def _images(draw):
    fmt = draw(st.sampled_from(sorted(_FORMAT_MODES)))
    mode = draw(st.sampled_from(_FORMAT_MODES[fmt]))
    w = draw(st.integers(64, 1800))
    h = draw(st.integers(64, 1800))
    budget_per_px = draw(st.floats(0.5, 24.0))
    resize = draw(st.sampled_from([640, 256, None]))
    return fmt, mode, w, h, draw(st.integers(0, 2**16)), draw(st.integers(0, 5)), budget_per_px, resize


@needs_peak
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_images())
def test_any_image_is_processed_within_the_byte_budget_or_rejected_with_a_reason(case):
    fmt, mode, w, h, seed, variant, budget_per_px, resize = case
    try:
        data = _make(fmt, mode, w, h, seed, variant)
    except (OSError, ValueError, KeyError):  # a mode this writer cannot store
        return
    budget = max(1, int(w * h * budget_per_px))
    cfg = ImageConfig(min_bytes=None, min_side=None, max_aspect_ratio=None, min_pixel_std=None, allowed_formats=None,
                      url_keywords=None, resize_longest_side=resize)

    def call():
        try:
            return process_image(data, URL, cfg, LimitsConfig(max_image_decode_bytes=budget))
        except ImageRejected as e:
            return e

    got, mb = H.peak_growth_mb(call)
    if isinstance(got, ImageRejected):
        assert got.reason in REJECT_REASONS
        if got.reason == "decode_too_large":
            assert mb < SLACK_MB, (fmt, mode, w, h, mb)  # rejected before any pixel was decoded
        return
    # Processed: it never took more than the budget said.
    assert mb <= budget / MiB + SLACK_MB, (fmt, mode, w, h, variant, resize, mb, budget / MiB)
    assert got.width <= (resize or w) and got.height <= (resize or h)


# --- the reproduction as a user meets it: a crawl of hostile PNGs through build-m3w -------------


@needs_peak
def test_build_over_a_crawl_of_hostile_pngs_stays_under_1gb_and_counts_every_reject(tmp_path):
    hostile = {
        "http://img.example/grey16.png": H.png(9400, 9400, 16, 0),
        "http://img.example/rgba.png": H.png(9400, 9400, 8, 6),
        "http://img.example/la16.png": H.png(9400, 9400, 16, 4),
        "http://img.example/palette.png": H.png(9400, 9400, 8, 3, trns=bytes(range(256))),
        "http://img.example/adam7.png": H.png(9400, 9400, 16, 6, interlace=1),
        "http://img.example/rgb16.png": H.png(9400, 9400, 16, 2),
        "http://img.example/float.tif": H.tiff(9400, 9400, bits=32, sample_format=3),
        "http://img.example/canvas.webp": H.webp_canvas(9400, 9400),
    }
    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (300, 400, 3), dtype=np.uint8)).save(buf, "PNG")
    images = {**hostile, "http://img.example/photo.png": buf.getvalue()}
    crawl = str(tmp_path / "hostile.warc.gz")
    H.write_crawl(crawl, images)
    assert os.path.getsize(crawl) < 3_000_000
    cfg = yaml.safe_load((REPO / "tests" / "data" / "spine.yaml").read_text())
    (tmp_path / "m3w.yaml").write_text(yaml.safe_dump(cfg))
    out = str(tmp_path / "out")
    cmd = [sys.executable, "-m", "pipeline.cli", "build", "--input", crawl, "--output", out,
           "--config", str(tmp_path / "m3w.yaml")]  # the default local runner: worker processes on every core
    # A regression is stopped at 1.5 GB before it eats the machine.
    rc, log, peak, _ = H.run_tree(cmd, cwd=REPO, kill_above=1.5e9, timeout_s=240)
    assert rc == 0, log[-3000:]
    assert peak <= 1e9, f"whole-tree peak RSS {peak / 1e6:.0f} MB"
    report = json.loads(open(os.path.join(out, "report.json")).read())
    assert report["counters"].get("image.dropped_decode_too_large") == 8, report["counters"]
    rejects = []
    for root, _, files in os.walk(os.path.join(out, "rejects")):
        for name in files:
            opener = gzip.open if name.endswith(".gz") else open
            with opener(os.path.join(root, name), "rt") as f:
                rejects += [json.loads(line) for line in f if line.strip()]
    too_large = [r for r in rejects if r["reason"] == "decode_too_large"]
    assert sorted(r["url"] for r in too_large) == sorted(hostile)
    assert all(r["stage"] == "image" and r["warc_filename"].endswith("hostile.warc.gz") and r["warc_record_offset"] > 0
               for r in too_large), too_large[0]
    samples = list(wds.WebDataset(sorted(glob.glob(os.path.join(out, "wds", "*.tar"))), shardshuffle=False))
    stored = [b for s in samples for b in unpack_images(s, len(json.loads(s["json"])["nodes"])) if b is not None]
    assert len(stored) == 1  # the one real photo is kept
