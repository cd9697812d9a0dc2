"""``build-m3w verify DIR``: check a corpus against its manifest.

Checks every shard the manifest lists (present, byte count, sha256), reads each one back
(webdataset and MMC4 tars with ``tarfile``, Parquet with pyarrow), counts documents and images, validates
every document against the schema, and flags files in the shard folders the manifest does not
list (leftover temporary files included). Exit code 0 when all holds, 1 otherwise.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tarfile
from collections.abc import Iterator

import msgpack
import pyarrow.parquet as pq

from pipeline.layout import FORMAT_DIRS, MANIFEST
from schemas.arrow import from_row
from schemas.document import to_json, validate
from schemas.samples import IMAGES_MEMBER, ORIGINALS_MEMBER


def _sha256(path: str) -> tuple[str, int]:
    h, n = hashlib.sha256(), 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
            n += len(chunk)
    return h.hexdigest(), n


def _check_wds(path: str) -> tuple[int, int, list[str]]:
    """Documents, stored images and schema errors of a wds shard (the 1.2 layout with an
    ``images.mp`` member per document, or the 1.0/1.1 one with a member per image)."""
    docs = images = 0
    errors: list[str] = []
    with tarfile.open(path, "r|") as tar:
        for member in tar:
            data = tar.extractfile(member).read()
            if member.name.endswith(".json"):
                docs += 1
                errors += [f"{path}:{member.name}: {e}" for e in validate(json.loads(data))]
            elif member.name.endswith("." + IMAGES_MEMBER):
                images += sum(1 for b in msgpack.unpackb(data) if b is not None)
            elif not member.name.endswith("." + ORIGINALS_MEMBER) and ".original." not in member.name:
                images += 1  # 1.0/1.1: one member per stored image
    return docs, images, errors


def _check_mmc4(path: str) -> tuple[int, int, list[str]]:
    docs = images = 0
    errors: list[str] = []
    with tarfile.open(path, "r|") as tar:
        for member in tar:
            obj = json.loads(tar.extractfile(member).read())
            docs += 1
            n_texts = len(obj["text_list"])
            for i, info in enumerate(obj["image_info"]):
                images += "image_base64" in info
                if not 0 <= info["matched_text_index"] < max(n_texts, 1):
                    errors.append(f"{path}:{member.name}: image_info[{i}].matched_text_index out of text_list")
            if len(obj["similarity_matrix"]) != len(obj["image_info"]):
                errors.append(f"{path}:{member.name}: similarity_matrix rows differ from image_info")
    return docs, images, errors


def _check_parquet(path: str) -> tuple[int, int, list[str]]:
    docs = images = 0
    errors: list[str] = []
    pf = pq.ParquetFile(path)
    for batch in pf.iter_batches(batch_size=64):
        for row in batch.to_pylist():
            docs += 1
            images += sum(1 for b in row["image_bytes"] if b is not None)
            errors += [f"{path}:{row['doc_id']}: {e}" for e in validate(to_json(from_row(row)))]
    return docs, images, errors


def _load_manifest(manifest_path: str) -> tuple[dict | None, list[str]]:
    try:
        with open(manifest_path, encoding="utf-8") as f:
            manifest = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        return None, [f"{manifest_path}: unreadable ({type(e).__name__}: {e})"]
    shards = manifest.get("shards") if isinstance(manifest, dict) else None
    if not isinstance(shards, list):
        return None, [f"{manifest_path}: malformed (no list of shards)"]
    return manifest, []


def _entry_errors(entry: object, output_dir: str) -> list[str]:
    """What makes a manifest entry unusable: missing keys, wrong types, or a path that leaves the
    shard folders (``../``, absolute paths, links), which verify never follows."""
    if not isinstance(entry, dict):
        return [f"manifest entry {entry!r}: not an object"]
    want = {"path": str, "format": str, "bytes": int, "sha256": str, "documents": int, "images": int}
    bad = [k for k, t in want.items() if not isinstance(entry.get(k), t) or isinstance(entry.get(k), bool)]
    if bad:
        return [f"manifest entry {entry.get('path')!r}: missing or malformed {', '.join(bad)}"]
    folder, _, name = entry["path"].partition("/")
    real_folder = os.path.realpath(os.path.join(output_dir, folder))
    if (
        folder not in FORMAT_DIRS.values()
        or not name
        or "/" in name
        or name in (".", "..")
        or os.path.dirname(real_folder) != os.path.realpath(output_dir)
        or os.path.islink(os.path.join(output_dir, folder, name))
    ):
        return [f"{entry['path']}: not a shard path inside {output_dir!r} (verify reads only {'/, '.join(FORMAT_DIRS.values())}/ files)"]
    if entry["format"] not in FORMAT_DIRS:
        return [f"{entry['path']}: unknown format {entry['format']!r}"]
    return []


def verify(output_dir: str) -> list[str]:
    """All mismatches between the manifest and the files (empty list: the corpus is sound)."""
    manifest_path = os.path.join(output_dir, MANIFEST)
    if not os.path.exists(manifest_path):
        return [f"{manifest_path}: missing (not an m3w corpus, or the build did not finish)"]
    manifest, errors = _load_manifest(manifest_path)
    if manifest is None:
        return errors
    listed = set()
    for entry in manifest["shards"]:
        bad = _entry_errors(entry, output_dir)
        if bad:
            errors += bad
            continue
        path = os.path.join(output_dir, entry["path"])
        listed.add(os.path.normpath(path))
        if not os.path.isfile(path):
            errors.append(f"{entry['path']}: listed in the manifest but missing")
            continue
        sha, size = _sha256(path)
        if size != entry["bytes"]:
            errors.append(f"{entry['path']}: {size} bytes, manifest says {entry['bytes']}")
        if sha != entry["sha256"]:
            errors.append(f"{entry['path']}: sha256 {sha[:12]}…, manifest says {entry['sha256'][:12]}…")
            continue  # contents are corrupt; reading them back would only repeat the point
        try:
            check = {"wds": _check_wds, "mmc4": _check_mmc4, "parquet": _check_parquet}[entry["format"]]
            docs, images, errs = check(path)
        except Exception as e:  # noqa: BLE001 - any read failure is a verification failure
            errors.append(f"{entry['path']}: unreadable ({type(e).__name__}: {e})")
            continue
        errors += errs
        if docs != entry["documents"]:
            errors.append(f"{entry['path']}: {docs} documents, manifest says {entry['documents']}")
        if images != entry["images"]:
            errors.append(f"{entry['path']}: {images} images, manifest says {entry['images']}")
    for folder in FORMAT_DIRS.values():
        for path in _files(os.path.join(output_dir, folder)):
            if os.path.normpath(path) not in listed:
                errors.append(f"{os.path.relpath(path, output_dir)}: not listed in the manifest")
    return errors


def _files(folder: str) -> Iterator[str]:
    if os.path.isdir(folder):
        for name in sorted(os.listdir(folder)):
            yield os.path.join(folder, name)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="build-m3w verify", description=__doc__.split("\n")[0])
    parser.add_argument("output_dir", help="a directory written by build-m3w build")
    args = parser.parse_args(argv)
    if not os.path.isdir(args.output_dir):
        print(f"build-m3w: error: {args.output_dir!r} is not a directory; pass the --output of a build", file=sys.stderr)
        return 2
    errors = verify(args.output_dir)
    for e in errors:
        print(e)
    if errors:
        print(f"verify: FAILED, {len(errors)} problem(s)")
        return 1
    with open(os.path.join(args.output_dir, MANIFEST), encoding="utf-8") as f:
        totals = json.load(f).get("totals")
    totals = {k: v for k, v in totals.items() if isinstance(v, dict)} if isinstance(totals, dict) else {}
    summary = ", ".join(
        f"{fmt}: {t.get('shards')} shards, {t.get('documents')} documents, {t.get('images')} images" for fmt, t in sorted(totals.items())
    )
    print(f"verify: OK ({summary or 'empty corpus'})")
    return 0
