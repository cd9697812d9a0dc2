"""Calibrate evaluation-set matching: recall per edit and false positives, per feature and threshold.

    .venv/bin/python -m benchmarks.phash_calibration [--negatives 10000] [--draws 8] [--out FILE.json]

Real images only (../shared/data): the "evaluation" originals are the scikit-image photos, the
UKBench base images, the PDQ bridge original and half of the photos found in the shared WARCs;
the other half of the WARC photos feed the negatives. Positives:
- real near duplicates: the 11 PDQ bridge edits, imagededup's mixed_images (resize, hflip,
  rotation) and scikit-image's historical re-encodings, each against its original;
- edits this script makes of every original (``--draws`` random draws each): resize 0.25–2x,
  JPEG quality 20–95, crop of up to 10% of each side, border/letterbox, colour jitter
  (brightness, contrast, saturation, gamma); flips and rotations reported, not targeted.
Negatives: ``--negatives`` crops of the negative photos (window 25–60% of each side, random
position, pairwise IoU < 0.5 within a photo, in 8 orientations) and the negative photos
themselves; none derives from an evaluation original, so every match is a false positive.

Every query goes through the build's own image stage first (``pipeline.images.process_image``:
longest side cut to 640, re-encoded, its ``phash``), so the figures are those the pipeline sees. Anchor: the first configuration (plain 64-bit
pHash at its conventional threshold) is reported beside the chosen one.
"""
from __future__ import annotations

import argparse
import glob
import hashlib
import io
import json
import os
import random
import sys
import time

import numpy as np
from PIL import Image, ImageEnhance, ImageOps

from dedup import phash

DATA = os.environ.get("M3W_SHARED_DATA", os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data"))
IMG = os.path.join(DATA, "images")
TARGETS = {"resize": 0.99, "jpeg": 0.99, "colour": 0.99, "border": 0.99, "crop": 0.90}

# (feature, index variants) configurations compared
# (feature, index-side variants, query-side border trim); the first is the anchor
CONFIGS = [
    ("phash64", [], False),
    ("phash64", ["crops"], True),
    ("phash64", ["crops", "trim"], True),
    ("phash256", ["crops", "trim"], True),
]
EVAL_SET_SIZES = [5_000, 40_000, 100_000]  # COCO Karpathy test, COCO val2014, a large mix
# Installer screenshots and documentation figures: near copies of one another, so they serve as
# negatives only (an evaluation set of photos is what the index holds in practice).
NEGATIVE_ONLY_WARCS = ("handbook-fr-de.warc.gz", "pydocs.warc.gz")


# ---------------------------------------------------------------------------------------------
# Real images


def _open(path: str) -> Image.Image | None:
    try:
        with open(path, "rb") as f:
            return phash.decode_rgb(f.read())
    except (OSError, ValueError):
        return None


def warc_photos(min_side: int = 100) -> list[tuple[str, Image.Image]]:
    """Distinct decodable images (short side >= min_side, not single-colour) in the shared WARCs."""
    from warcio.archiveiterator import ArchiveIterator

    out, seen = [], set()
    files = sorted(f for f in glob.glob(os.path.join(DATA, "warc", "**", "*"), recursive=True) if f.endswith((".warc.gz", ".warc", ".arc.gz")))
    for path in files:
        try:
            with open(path, "rb") as fh:
                for rec in ArchiveIterator(fh, arc2warc=True):
                    if rec.rec_type not in ("response", "resource"):
                        continue
                    try:
                        data = rec.content_stream().read()
                        img = phash.decode_rgb(data)
                    except Exception:  # damaged records and non-images are expected here
                        continue
                    digest = hashlib.sha1(data).hexdigest()
                    if digest in seen or min(img.size) < min_side:
                        continue
                    if np.asarray(img.convert("L"), dtype=np.float32).std() < 8:
                        continue
                    seen.add(digest)
                    out.append((f"warc:{os.path.basename(path)}:{digest[:10]}", img))
        except Exception as e:  # a damaged test WARC stops its own iteration only
            print(f"# {os.path.basename(path)}: stopped at {type(e).__name__}", file=sys.stderr)
    return out


def originals_and_negative_sources() -> tuple[list[tuple[str, Image.Image]], list[tuple[str, Image.Image]]]:
    """Evaluation originals: scikit-image photos (one of the motorcycle stereo pair), the PDQ
    original, UKBench 00120 and half of the other WARC photos. Negative sources: the other UKBench
    photos, the other half of the WARC photos, and every screenshot/figure."""
    evals, negs = [], []
    for p in sorted(glob.glob(os.path.join(IMG, "skimage_data_photos", "*"))):
        img = _open(p) if os.path.isfile(p) else None
        if img is not None and "motorcycle_right" not in p:
            evals.append((f"skimage:{os.path.basename(p)}", img))
    for p in sorted(glob.glob(os.path.join(IMG, "imagededup_tests", "base_images", "*.jpg"))):
        item = (f"ukbench:{os.path.basename(p)}", _open(p))
        (evals if "00120" in p else negs).append(item)
    evals.append(("pdq:aaa-orig.jpg", _open(os.path.join(IMG, "pdq_bridge_mods", "aaa-orig.jpg"))))
    photos, figures = [], []
    for item in warc_photos():
        (figures if any(w in item[0] for w in NEGATIVE_ONLY_WARCS) else photos).append(item)
    rng = random.Random(0)
    rng.shuffle(photos)
    half = len(photos) // 2
    return evals + photos[:half], negs + photos[half:] + figures


def real_pairs() -> list[tuple[str, str, Image.Image]]:
    """(kind, original id, edited image) for the real near duplicates in the shared data."""
    out = []
    for p in sorted(glob.glob(os.path.join(IMG, "pdq_bridge_mods", "*.jpg"))):
        if not p.endswith("aaa-orig.jpg"):
            out.append((f"real:pdq:{os.path.basename(p)[:-4]}", "pdq:aaa-orig.jpg", _open(p)))
    for p in sorted(glob.glob(os.path.join(IMG, "imagededup_tests", "mixed_images", "ukbench00120_*.jpg"))):
        kind = os.path.basename(p)[len("ukbench00120_") : -4]
        out.append((f"real:imagededup:{kind}", "ukbench:ukbench00120.jpg", _open(p)))
    for p in sorted(glob.glob(os.path.join(IMG, "skimage_data_photos", "historical_variants", "*"))):
        stem = os.path.splitext(os.path.basename(p))[0]
        cur = [q for q in glob.glob(os.path.join(IMG, "skimage_data_photos", stem + ".*"))]
        img = _open(p) if not p.endswith(".txt") else None
        if img is not None and cur:
            out.append(("real:skimage_historical", f"skimage:{os.path.basename(cur[0])}", img))
    return [x for x in out if x[2] is not None]


# ---------------------------------------------------------------------------------------------
# Edits


def _jpeg(img: Image.Image, q: int) -> Image.Image:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=q)
    return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")


def edit(kind: str, img: Image.Image, rng: random.Random) -> tuple[str, Image.Image]:
    w, h = img.size
    if kind == "resize":
        # Never below the 64 px short side the image stage keeps (images.min_side).
        s = max(rng.uniform(0.25, 2.0), 64 / min(w, h))
        return f"resize {s:.2f}", img.resize((max(8, round(w * s)), max(8, round(h * s))), Image.Resampling.BICUBIC)
    if kind == "jpeg":
        q = rng.randint(20, 95)
        return f"jpeg q{q}", _jpeg(img, q)
    if kind == "crop":
        fx, fy = rng.uniform(0, 0.10), rng.uniform(0, 0.10)
        x0, y0 = rng.uniform(0, fx) * w, rng.uniform(0, fy) * h
        box = (round(x0), round(y0), round(x0 + (1 - fx) * w), round(y0 + (1 - fy) * h))
        return f"crop {max(fx, fy):.3f}", img.crop(box)
    if kind == "border":
        colour = rng.choice([(0, 0, 0), (255, 255, 255), (128, 128, 128), (20, 20, 20)])
        if rng.random() < 0.5:  # letterbox / pillarbox onto 16:9, 4:3 or square
            ar = rng.choice([16 / 9, 4 / 3, 1.0, 9 / 16])
            cw, ch = (max(w, round(h * ar)), h) if w / h < ar else (w, max(h, round(w / ar)))
            canvas = Image.new("RGB", (cw, ch), colour)
            canvas.paste(img, ((cw - w) // 2, (ch - h) // 2))
            return "letterbox", canvas
        b = rng.uniform(0.03, 0.15)
        return f"border {b:.2f}", ImageOps.expand(img, border=max(1, round(b * min(w, h))), fill=colour)
    if kind == "colour":
        out = ImageEnhance.Brightness(img).enhance(rng.uniform(0.75, 1.25))
        out = ImageEnhance.Contrast(out).enhance(rng.uniform(0.7, 1.3))
        out = ImageEnhance.Color(out).enhance(rng.uniform(0.5, 1.5))
        g = rng.uniform(0.8, 1.25)
        out = out.point([round(255 * (i / 255) ** g) for i in range(256)] * 3)
        return "colour", out
    if kind == "hflip":
        return "hflip", ImageOps.mirror(img)
    if kind == "rotate90":
        return "rotate90", img.transpose(Image.Transpose.ROTATE_90)
    if kind == "rotate5":
        a = rng.uniform(-5, 5)
        return f"rotate {a:.1f}", img.rotate(a, resample=Image.Resampling.BICUBIC, expand=False)
    raise ValueError(kind)


EDITS = ["resize", "jpeg", "crop", "border", "colour", "hflip", "rotate5", "rotate90"]


def as_crawled(img: Image.Image) -> tuple[Image.Image, str] | None:
    """What the build makes of an image (pipeline.images.process_image, default config): the
    stored image decoded and its phash64; None when the image stage would reject it."""
    from pipeline.images import ImageRejected, process_image

    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=95)  # web images arrive encoded; q95 adds little loss
    try:
        out = process_image(buf.getvalue(), "https://example.org/photo.jpg")
    except ImageRejected:
        return None
    return phash.decode_rgb(out.data), out.phash


def query_codes(feature: str, img: Image.Image, trim: bool) -> list[np.ndarray] | None:
    """Codes of a crawled image, as Decontaminate takes them (dedup.phash.query_codes)."""
    crawled = as_crawled(img)
    if crawled is None:
        return None
    stored, stage_hex = crawled
    return phash.query_codes(feature, stored, stage_hex, trim)


def min_distance(
    codes: list[list[np.ndarray]],
    db: np.ndarray,
    rows: np.ndarray | None = None,
    own: np.ndarray | None = None,
    histogram: np.ndarray | None = None,
) -> np.ndarray:
    """Smallest distance of each query (over its codes) to the index, or to its own original's entries."""
    flat = np.stack([c for cs in codes for c in cs])
    owner = np.repeat(np.arange(len(codes)), [len(cs) for cs in codes])
    d = hamming(flat, db)
    if own is not None:
        d = np.where(rows[None, :] == own[owner][:, None], d, 10**6)
    best = np.full(len(codes), 10**6, dtype=np.int64)
    np.minimum.at(best, owner, d.min(axis=1))
    if histogram is not None:
        histogram += np.bincount(d.ravel(), minlength=histogram.size)[: histogram.size]
    return best


# ---------------------------------------------------------------------------------------------
# Negatives


def negative_images(sources: list[tuple[str, Image.Image]], n: int, seed: int = 1) -> list[Image.Image]:
    rng = random.Random(seed)
    orientations = [
        lambda im: im,
        ImageOps.mirror,
        ImageOps.flip,
        lambda im: im.transpose(Image.Transpose.ROTATE_90),
        lambda im: im.transpose(Image.Transpose.ROTATE_180),
        lambda im: im.transpose(Image.Transpose.ROTATE_270),
        lambda im: im.transpose(Image.Transpose.TRANSPOSE),
        lambda im: im.transpose(Image.Transpose.TRANSVERSE),
    ]
    out = [img for _, img in sources if min(img.size) >= 64 and max(img.size) <= 3 * min(img.size)]
    boxes: dict[int, list[tuple[float, float, float, float]]] = {i: [] for i in range(len(sources))}
    tries = 0
    while len(out) < n and tries < n * 50:
        tries += 1
        i = rng.randrange(len(sources))
        img = sources[i][1]
        fw, fh = rng.uniform(0.25, 0.6), rng.uniform(0.25, 0.6)
        x0, y0 = rng.uniform(0, 1 - fw), rng.uniform(0, 1 - fh)
        box = (x0, y0, x0 + fw, y0 + fh)
        if any(_iou(box, b) >= 0.5 for b in boxes[i]):
            continue
        w, h = img.size
        crop = img.crop((round(box[0] * w), round(box[1] * h), round(box[2] * w), round(box[3] * h)))
        cw, ch = crop.size
        if min(cw, ch) < 64 or max(cw, ch) > 3 * min(cw, ch):
            continue  # the image stage drops these (images.min_side, images.max_aspect_ratio)
        if np.asarray(crop.convert("L"), dtype=np.float32).std() < 8:
            continue  # nor does it keep near single-colour images
        boxes[i].append(box)
        for o in rng.sample(orientations, 8):
            out.append(o(crop))
            if len(out) >= n:
                break
    return out


def _iou(a: tuple[float, float, float, float], b: tuple[float, float, float, float]) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union else 0.0


# ---------------------------------------------------------------------------------------------


_POP = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)


def hamming(q: np.ndarray, db: np.ndarray) -> np.ndarray:
    """int[len(q), len(db)] Hamming distances of packed codes (in blocks, to bound memory)."""
    out = np.empty((len(q), len(db)), dtype=np.int32)
    step = max(1, 4_000_000 // max(1, db.size))
    for lo in range(0, len(q), step):
        out[lo : lo + step] = _POP[np.bitwise_xor(q[lo : lo + step, None, :], db[None, :, :])].sum(axis=2, dtype=np.int32)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--negatives", type=int, default=10_000)
    ap.add_argument("--draws", type=int, default=8, help="random draws of each edit per original")
    ap.add_argument("--out", default=None, help="write all figures as JSON here")
    ap.add_argument("--configs", default=None, help="comma-separated indexes into CONFIGS (default: all)")
    args = ap.parse_args(argv)
    t0 = time.time()
    evals, neg_sources = originals_and_negative_sources()
    rng = random.Random(42)
    queries: list[tuple[str, str, Image.Image]] = [(k, o, im) for k, o, im in real_pairs()]
    for eid, img in evals:
        for kind in EDITS:
            for _ in range(args.draws if kind not in ("hflip", "rotate90") else 1):
                _, out = edit(kind, img, rng)
                queries.append((kind, eid, out))
    negatives = negative_images(neg_sources, args.negatives)
    print(f"# {len(evals)} evaluation originals, {len(queries)} positive queries, {len(negatives)} negatives "
          f"from {len(neg_sources)} photos ({time.time() - t0:.0f}s to prepare)")
    eval_row = {eid: i for i, (eid, _) in enumerate(evals)}
    results = {}
    chosen = [CONFIGS[int(i)] for i in args.configs.split(",")] if args.configs else CONFIGS
    for feature, variants, trim in chosen:
        t1 = time.time()
        codes, rows = [], []
        for i, (_, img) in enumerate(evals):
            for v in phash.variant_images(img, variants):
                codes.append(phash.compute(feature, v))
                rows.append(i)
        db, rows = np.stack(codes), np.asarray(rows)
        qc = [query_codes(feature, im, trim) for _, _, im in queries]
        kept = [i for i, c in enumerate(qc) if c is not None]
        own = np.asarray([eval_row[queries[i][1]] for i in kept])
        d_own = np.full(len(queries), 10**6, dtype=np.int64)  # rejected by the image stage: never matched
        d_own[kept] = min_distance([qc[i] for i in kept], db, rows, own)
        nc = [c for c in (query_codes(feature, im, trim) for im in negatives) if c is not None]
        bits = phash.feature_bits(feature)
        hist = np.zeros(bits + 1, dtype=np.int64)  # distances of every (negative code, index entry) pair
        d_neg = min_distance(nc, db, histogram=hist)
        pair_rate = np.cumsum(hist) / hist.sum()
        name = f"{feature} variants={'+'.join(variants) or 'none'} trim={'on' if trim else 'off'}"
        per_t = {}
        for t in range(0, (bits * 3) // 8 + 1):
            rec = {}
            for kind in sorted({k for k, _, _ in queries}):
                m = np.asarray([k == kind for k, _, _ in queries])
                rec[kind] = float((d_own[m] <= t).mean())
            real = np.asarray([k.startswith("real:") and not k.endswith(("hflip", "rotation")) for k, _, _ in queries])
            rec["real"] = float((d_own[real] <= t).mean())
            # Per image of a real evaluation set of N images (len(db)/len(evals) entries each):
            # 1 - (1 - p)^(N * entries per image), p the measured per-pair false-match rate.
            per_image = len(db) / len(evals)
            extrap = {n: float(1 - (1 - pair_rate[t]) ** (n * per_image)) for n in EVAL_SET_SIZES}
            per_t[t] = {"recall": rec, "fp_rate": float((d_neg <= t).mean()), "fp": int((d_neg <= t).sum()),
                        "pair_fp_rate": float(pair_rate[t]), "fp_rate_for_eval_set_of": extrap}
        results[name] = {"entries": len(db), "negatives": len(nc), "queries_rejected_by_image_stage": len(queries) - len(kept), "by_threshold": per_t,
                         "seconds": time.time() - t1}
        ok = [t for t, r in per_t.items() if r["fp_rate"] <= 0.001 and all(r["recall"][k] >= v for k, v in TARGETS.items())]
        best = max(per_t, key=lambda t: (per_t[t]["fp_rate"] <= 0.001, sum(per_t[t]["recall"][k] for k in TARGETS)))
        print(f"\n## {name}: {len(db)} index entries, {len(nc)} negatives and {len(kept)} positives through the "
              f"image stage ({len(queries) - len(kept)} positives rejected there, counted as misses); "
              f"thresholds meeting every target: {ok or 'none'}")
        step = 1 if bits == 64 else 4
        shown = [t for t in per_t if t % step == 0 and t <= (bits // 4 if bits == 64 else 3 * bits // 8)]
        _table(per_t, sorted({k for k, _, _ in queries}), shown)
        t_show = min(ok) if ok else best
        reals = {k: v for k, v in per_t[t_show]["recall"].items() if k.startswith("real:")}
        print(f"real near duplicates at t={t_show}: " + ", ".join(f"{k[5:]} {v:.2f}" for k, v in sorted(reals.items())))
        print("per-pair false-match rate p(t) and the per-image FP rate it implies against larger evaluation sets:")
        print("| t | p(t) | " + " | ".join(f"FP vs {n:,} eval images" for n in EVAL_SET_SIZES) + " |")
        print("|---" * (len(EVAL_SET_SIZES) + 2) + "|")
        for t in shown:
            e = per_t[t]["fp_rate_for_eval_set_of"]
            print(f"| {t} | {per_t[t]['pair_fp_rate']:.2e} | " + " | ".join(f"{e[n]:.3%}" for n in EVAL_SET_SIZES) + " |")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=1)
    print(f"\n# total {time.time() - t0:.0f}s")
    return 0


def _table(per_t: dict, kinds: list[str], ts: list[int]) -> None:
    short = [k for k in kinds if not k.startswith("real:")] + ["real"]
    print("| t | " + " | ".join(short) + " | FP rate |")
    print("|---" * (len(short) + 2) + "|")
    for t in ts:
        r = per_t[t]["recall"]
        cells = [f"{r[k]:.3f}" for k in short]
        print(f"| {t} | " + " | ".join(cells) + f" | {per_t[t]['fp_rate']:.4%} |")


if __name__ == "__main__":
    sys.exit(main())
