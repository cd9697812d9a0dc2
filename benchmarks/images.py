"""CPU cost of process_image (decode + filter + resize + re-encode + hashes) on the real photos.

Anchors, in the same process on the same bytes: a bare Pillow loop that opens and fully decodes
each image (``Image.open(...).load()``), and a bare OpenCV decode (``cv2.imdecode``, full size;
only where opencv-python-headless is installed), nothing else. Optionally other versions of
pipeline/images.py (``--baseline FILE``, repeatable, e.g. an older commit) run beside the current
one, and their stored pixels are compared with the current ones (PSNR).

    .venv/bin/python -m benchmarks.images [--rounds 15] [--baseline /tmp/images_before.py ...]
    # before/after: git show <commit>:pipeline/images.py > /tmp/images_before.py
    .venv/bin/python -m benchmarks.images --hostile [--baseline /tmp/images_before.py]

``--hostile`` instead times each hostile image of tests/pipeline/hostile_images.py (issue 14 item 6
and its class) in a fresh child process, with its peak RSS (the whole tree: it is one process),
then a ``build-m3w build`` over a crawl of eight of them with the summed RSS of its process tree
sampled every 20 ms. A baseline runs under a 4 GB address-space cap.

The machine may be shared, so wall time says little: every call is timed in CPU time of this
single-threaded process (``time.process_time_ns``), the variants run interleaved image by image,
and each image's cost is the median over the rounds. A group's rate is its image count over the
sum of those medians = images per CPU second = images/s/core. The load average is printed
before and after. Also printed: how far the stored pHash is from ``imagehash.phash`` of the
stored image (the decontamination index is built with the latter).
"""
from __future__ import annotations

import argparse
import importlib.util
import io
import os
import statistics
import sys
import time

import numpy as np
from PIL import Image

try:  # optional anchor: OpenCV is not a pipeline dependency (see docs/bench/images.md)
    import cv2
except ImportError:
    cv2 = None

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
    """(file name, bytes) of every decodable image in the shared photo folders."""
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


# Common web photo sizes (3:2 and 16:9 at the widths sites serve), made here from a real photo
# (Lanczos + JPEG q90) because the shared set has only one size per source. Reported apart.
WEB_SIZES = [(1024, 683), (1200, 800), (1280, 720), (1280, 853), (1920, 1080), (1920, 1281), (2560, 1707)]


def web_size_jpegs() -> list[tuple[str, bytes]]:
    src = Image.open(SHARED_DATA / "images/pdq_bridge_mods/aaa-orig.jpg").convert("RGB")
    out = []
    for w, h in WEB_SIZES:
        buf = io.BytesIO()
        src.resize((w, h), Image.Resampling.LANCZOS).save(buf, "JPEG", quality=90)
        out.append((f"web {w}x{h}", buf.getvalue()))
    return out


def group_of(data: bytes, target: int | None) -> str:
    """Subset label: sniffed format and whether the image is resized."""
    im = Image.open(io.BytesIO(data))
    fmt = {"JPEG": "JPEG", "PNG": "PNG"}.get(im.format, "GIF/TIFF/WebP")
    big = target is not None and max(im.size) > target
    return f"{fmt} {'>' if big else '<='} {target} px"


def _load_module(path: str, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up
    spec.loader.exec_module(mod)
    return mod


_HOSTILE_CHILD = """
import importlib.util, json, resource, sys
from tests.pipeline import hostile_images as H
path, name = sys.argv[1], sys.argv[2]
if path == "-":
    import pipeline.images as mod
else:
    spec = importlib.util.spec_from_file_location("images_under_test", path)
    mod = importlib.util.module_from_spec(spec); sys.modules[spec.name] = mod; spec.loader.exec_module(mod)
    cap = H._status_kb("VmSize") * 1024 + (4 << 30)
    resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
print(json.dumps(H.measure_case(mod, name)))
"""


def hostile(baselines: list[str]) -> None:
    """Time and peak memory of every hostile image, one fresh process each, then a build over a crawl of them."""
    import json
    import subprocess
    import tempfile

    from tests.conftest import REPO
    from tests.pipeline import hostile_images as H

    print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")
    labels = ["current"] + [os.path.basename(b) for b in baselines]
    print("| hostile input | bytes | " + " | ".join(f"{l}: outcome, ms, peak process RSS MB (growth in the call)" for l in labels) + " |")
    print("| --- | ---: |" + " --- |" * len(labels))
    for name in H.CASES:
        cells, size = [], 0
        for path in ["-"] + baselines:
            res = subprocess.run([sys.executable, "-c", _HOSTILE_CHILD, path, name], cwd=REPO, capture_output=True, text=True, timeout=600)
            try:
                r = json.loads(res.stdout.strip().splitlines()[-1])
            except (IndexError, ValueError):
                cells.append(f"failed: {res.stderr.strip().splitlines()[-1] if res.stderr.strip() else res.returncode}")
                continue
            size = r["bytes"]
            cells.append(f"{r['reason']}, {r['seconds'] * 1e3:.1f}, {r['peak_mb']:.0f} ({r['growth_mb']:+.0f})")
        print(f"| {name} | {size:,} | " + " | ".join(cells) + " |")

    with tempfile.TemporaryDirectory() as tmp:
        images = {f"http://img.example/{i}.png": H.CASES[n][0]() for i, n in enumerate(
            ["png 16-bit grey 9400²", "tiff float 9400²", "webp animated, 9400² canvas", "png 8-bit RGBA 6000²",
             "png 16-bit grey+alpha 6000²", "png palette + tRNS 6000²", "png 16-bit RGBA Adam7 6000²", "gif 9400² screen"])}
        crawl = os.path.join(tmp, "hostile.warc.gz")
        H.write_crawl(crawl, images)
        cfg = os.path.join(str(REPO), "tests", "data", "spine.yaml")
        cmd = [sys.executable, "-m", "pipeline.cli", "build", "--input", crawl, "--output", os.path.join(tmp, "out"), "--config", cfg]
        rc, log, peak, seconds = H.run_tree(cmd, cwd=REPO, kill_above=8e9, timeout_s=600)
        counted = ""
        if rc == 0:
            with open(os.path.join(tmp, "out", "report.json")) as f:
                counted = f", image.dropped_decode_too_large = {json.load(f)['counters'].get('image.dropped_decode_too_large', 0)}"
        print(f"build-m3w build (default local runner, {os.cpu_count()} worker processes) over a {os.path.getsize(crawl):,}-byte crawl "
              f"of 8 hostile images: exit {rc}, {seconds:.1f} s wall, whole-tree peak RSS {peak / 1e6:.0f} MB{counted}")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=15, help="timed calls per image and variant (median kept)")
    ap.add_argument("--baseline", action="append", default=[], help="another pipeline/images.py to time beside the current one (repeatable)")
    ap.add_argument("--hostile", action="store_true", help="time and peak memory of the hostile images instead (issue 14)")
    args = ap.parse_args(argv)
    if args.hostile:
        return hostile(args.baseline)
    photos = load_photos()
    if not photos:
        raise SystemExit(f"no photos under {SHARED_DATA}/images; place shared/ beside the repo")
    cfg = ImageConfig(min_bytes=None, url_keywords=None)  # measure the work, not the early exits

    def bare(data):
        Image.open(io.BytesIO(data)).load()

    def caller(fn, rejected):
        def run(data):
            try:
                fn(data, "http://bench.example/x", cfg)
            except rejected:
                pass

        return run

    def bare_cv2(data):
        cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)

    # The stage caches results by the input's sha256 (per worker): an image is timed cold unless
    # the same bytes came earlier in the set, as in one pass of the stage over it.
    def cold_or_warm(mod):
        clear = getattr(mod, "clear_result_cache", None)
        if clear is None:
            return None

        def prep(data, repeated):
            clear()
            if repeated:
                try:
                    mod.process_image(data, "http://bench.example/x", cfg)
                except mod.ImageRejected:
                    pass

        return prep

    import pipeline.images as current_mod

    preps = {"process_image": cold_or_warm(current_mod)}
    variants = {"bare Pillow decode": bare}
    if cv2 is not None:
        cv2.setNumThreads(1)  # CPU time per image, as for the single-threaded Pillow calls
        variants["bare cv2 decode"] = bare_cv2
    bases = []
    for j, path in enumerate(args.baseline):
        base = _load_module(path, f"images_baseline{j}")
        bases.append((os.path.basename(path), base))
        variants[f"{os.path.basename(path)} process_image"] = caller(base.process_image, base.ImageRejected)
        preps[f"{os.path.basename(path)} process_image"] = cold_or_warm(base)
    variants["process_image"] = caller(process_image, ImageRejected)

    web = web_size_jpegs()
    n_real = len(photos)
    photos = photos + web
    load_before = os.getloadavg()
    for fn in variants.values():  # warm imports and caches
        fn(photos[0][1])
    print(f"{sum(1 for i, (_, d) in enumerate(photos) if any(d == e for _, e in photos[:i]))} of {len(photos)} images repeat "
          "an earlier one byte for byte (timed as cache hits)")
    clock = time.process_time_ns
    cpu0, wall0 = time.process_time(), time.perf_counter()
    med: dict[str, list[float]] = {k: [] for k in variants}
    seen: set[bytes] = set()
    for _, data in photos:
        repeated = data in seen
        seen.add(data)
        samples = {k: [] for k in variants}
        for _ in range(args.rounds):
            for k, fn in variants.items():
                prep = preps.get(k)
                if prep is not None:
                    prep(data, repeated)
                t = clock()
                fn(data)
                samples[k].append(clock() - t)
        for k in variants:
            med[k].append(statistics.median(samples[k]) / 1e6)  # ms
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    load_after = os.getloadavg()

    groups: dict[str, list[int]] = {"all photos": list(range(n_real))}
    for i, (_, data) in enumerate(photos[:n_real]):
        groups.setdefault(group_of(data, cfg.resize_longest_side), []).append(i)
    groups[f"(made) JPEG at {len(web)} web sizes"] = list(range(n_real, len(photos)))

    print(f"{n_real} photos, {sum(len(d) for _, d in photos[:n_real]) / 1e6:.1f} MB (+ {len(web)} made at web sizes "
          f"{', '.join(f'{w}x{h}' for w, h in WEB_SIZES)}); resize_longest_side="
          f"{cfg.resize_longest_side}, encode={cfg.encode_format} q{cfg.encode_quality}")
    print(f"machine: {os.cpu_count()} CPUs, load average {load_before[0]:.1f} before / {load_after[0]:.1f} after; "
          f"this run {cpu:.1f} s CPU in {wall:.1f} s wall ({cpu / wall:.0%} of one core)")
    print("rates in images per CPU second (= images/s/core) from per-image median CPU time over "
          f"{args.rounds} interleaved rounds; ms = mean CPU ms per image")
    names = list(variants)
    header = "| subset | n | " + " | ".join(f"{k} img/s (ms)" for k in names) + " | ratio to bare |"
    print(header)
    print("|" + " --- |" * 2 + " ---: |" * (len(names) + 1))
    for g in ["all photos"] + sorted(k for k in groups if k != "all photos" and not k.startswith("(made)")) + [
        k for k in groups if k.startswith("(made)")
    ]:
        idx = groups[g]
        cells, rates = [], {}
        for k in names:
            total = sum(med[k][i] for i in idx)
            rates[k] = len(idx) / total * 1e3
            cells.append(f"{rates[k]:.0f} ({total / len(idx):.2f})")
        ratio = " / ".join(f"{rates[k] / rates[names[0]]:.2f}" for k in names[1:])
        print(f"| {g} | {len(idx)} | " + " | ".join(cells) + f" | {ratio} |")
        if g.startswith("(made)"):
            for i in idx:
                print(f"|   {photos[i][0]} | 1 | " + " | ".join(f"{1e3 / med[k][i]:.0f} ({med[k][i]:.2f})" for k in names) + " | |")

    import imagehash

    dists = []
    for _, data in photos[:n_real]:
        try:
            p = process_image(data, "http://bench.example/x", cfg)
        except ImageRejected:
            continue
        stored = Image.open(io.BytesIO(p.data))
        dists.append(imagehash.hex_to_hash(p.phash) - imagehash.phash(stored))
    print(f"stored pHash vs imagehash.phash(stored image): max {max(dists)} bits, mean {statistics.mean(float(d) for d in dists):.2f} "
          f"over {len(dists)} images")

    # Stored pixels against each baseline's stored pixels (same size only), for resized images.
    for label, base in bases:
        worst = []
        for name, data in photos:
            try:
                a, b = process_image(data, "http://bench.example/x", cfg), base.process_image(data, "http://bench.example/x", cfg)
            except (ImageRejected, base.ImageRejected):
                continue
            if a.data == b.data:
                continue
            x = np.asarray(Image.open(io.BytesIO(a.data)).convert("RGB"), np.float64)
            y = np.asarray(Image.open(io.BytesIO(b.data)).convert("RGB"), np.float64)
            if x.shape != y.shape:
                print(f"  {name}: stored size differs from {label}: {x.shape} vs {y.shape}")
                continue
            mse = float(np.mean((x - y) ** 2))
            worst.append((99.0 if mse == 0 else 10 * np.log10(255**2 / mse), name))
        if worst:
            worst.sort()
            print(f"stored pixels vs {label}: {len(worst)} images differ, PSNR min {worst[0][0]:.1f} dB ({worst[0][1]}), "
                  f"mean {statistics.mean(p for p, _ in worst):.1f} dB")


if __name__ == "__main__":
    main()
