"""Throughput of process_image (decode + filter + resize + re-encode + hashes) on the real photos.

Anchor, in the same process on the same bytes: a bare Pillow loop that opens and fully decodes
each image (``Image.open(...).load()``), nothing else. Single thread = one core.

    .venv/bin/python -m benchmarks.images [--seconds 3]

Prints images/s for both and the ratio, for the whole photo set and for its JPEGs alone.
"""
from __future__ import annotations

import argparse
import io
import time
from pathlib import Path

from PIL import Image

from pipeline.config import ImageConfig
from pipeline.images import ImageRejected, process_image
from tests.conftest import SHARED_DATA

PHOTO_DIRS = [
    "images/imagededup_tests/base_images",
    "images/imagededup_tests/formats_images",
    "images/imagededup_tests/mixed_images",
    "images/pdq_bridge_mods",
    "images/skimage_data_photos",
    "images/skimage_data_photos/historical_variants",
]


def load_photos() -> list[tuple[str, bytes]]:
    out = []
    for d in PHOTO_DIRS:
        for p in sorted((SHARED_DATA / d).glob("*")):
            if p.is_file() and p.suffix.lower() in (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tiff", ".webp"):
                data = p.read_bytes()
                try:
                    Image.open(io.BytesIO(data)).load()
                except Exception:  # the corrupt/truncated fixtures are not photos
                    continue
                out.append((p.name, data))
    return out


def rate(fn, items, seconds: float) -> tuple[float, float]:
    """(images per CPU second of this process, images per wall second). Single thread, so the
    first is images/s/core even when other processes share the machine."""
    n, c0, t0 = 0, time.process_time(), time.perf_counter()
    while time.process_time() - c0 < seconds:
        for item in items:
            fn(item)
        n += len(items)
    return n / (time.process_time() - c0), n / (time.perf_counter() - t0)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=3.0)
    args = ap.parse_args(argv)
    photos = load_photos()
    if not photos:
        raise SystemExit(f"no photos under {SHARED_DATA}/images; place shared/ beside the repo")
    cfg = ImageConfig(min_bytes=None, url_keywords=None)  # measure the work, not the early exits

    def bare(item):
        Image.open(io.BytesIO(item[1])).load()

    def full(item):
        try:
            process_image(item[1], "http://bench.example/x", cfg)
        except ImageRejected:
            pass

    def longest(data):
        return max(Image.open(io.BytesIO(data)).size)

    web = [p for p in photos if longest(p[1]) <= 640]
    jpegs = [p for p in web if p[1][:3] == b"\xff\xd8\xff"]
    big = [p for p in photos if longest(p[1]) > 640]
    print(f"{len(photos)} photos, {sum(len(d) for _, d in photos) / 1e6:.1f} MB; resize_longest_side="
          f"{cfg.resize_longest_side}, encode={cfg.encode_format} q{cfg.encode_quality}; rates per CPU second (= per core)")
    groups = [("all photos", photos), ("<= 640 px", web), ("<= 640 px JPEG", jpegs), ("> 640 px", big)]
    full(photos[0])  # warm imports
    for name, items in groups:
        (a, aw) = rate(bare, items, args.seconds)
        (b, bw) = rate(full, items, args.seconds)
        print(f"{name:>15} ({len(items):2d}): bare Pillow decode {a:7.1f} img/s | process_image {b:7.1f} img/s "
              f"| ratio {b / a:.2f} | wall {aw:.1f} / {bw:.1f} img/s")


if __name__ == "__main__":
    main()
