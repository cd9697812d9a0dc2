"""`make demo`: build a corpus from the bundled sample crawl, train the tiny Flamingo on it for a
few steps, and caption one of its images with the trained model.

    python -m pipeline.demo [--output DIR] [--no-train]
"""
from __future__ import annotations

import argparse
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SAMPLE = os.path.join(REPO, "samples", "demo.warc.gz")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="m3w-demo")
    parser.add_argument("--output", default=os.path.join(REPO, "demo-output"))
    parser.add_argument("--no-train", dest="train", action="store_false", help="only build the corpus")
    parser.add_argument("--steps", type=int, default=100, help="training steps of the tiny model")
    args = parser.parse_args(argv)

    from pipeline.cli import main as build_m3w

    corpus = os.path.join(args.output, "corpus")
    print(f"== build-m3w build --input {_rel(SAMPLE)} --output {_rel(corpus)} --shard-size 2")
    rc = build_m3w(["build", "--input", SAMPLE, "--output", corpus, "--shard-size", "2"])
    if rc or not args.train:
        return rc
    from model.train import main as train_flamingo

    run_dir = os.path.join(args.output, "train")
    train_argv = ["--shards", os.path.join(corpus, "wds"), "--config", "tiny", "--steps", str(args.steps),
                  "--batch-size", "4", "--lr", "3e-3", "--vocab-size", "512", "--out", run_dir, "--no-progress", "--log-every", "25"]
    print("\n== train-flamingo " + " ".join(_rel(a) for a in train_argv))
    rc = train_flamingo(train_argv)
    if rc:
        return rc
    image = _first_image(os.path.join(corpus, "wds"), os.path.join(args.output, "caption-input.jpg"))
    print(f"\n== train-flamingo caption --checkpoint {_rel(run_dir)} --image {_rel(image)}")
    from model.train import caption

    text = caption(run_dir, image, max_new_tokens=20)
    # 100 steps of a 0.4M-parameter model on three pages: the point is the path, not the prose.
    print(f"caption: {text!r}")
    return 0


def _rel(path: str) -> str:
    return os.path.relpath(path) if os.path.isabs(path) else path


def _first_image(wds_dir: str, dest: str) -> str:
    """Copy the first stored image of the first shard to ``dest``: the picture the demo captions."""
    import json

    import webdataset as wds

    from schemas.samples import unpack_images

    shards = [os.path.join(wds_dir, n) for n in sorted(os.listdir(wds_dir)) if n.endswith(".tar")]
    for sample in wds.WebDataset(shards, shardshuffle=False):
        for data in unpack_images(sample, len(json.loads(sample["json"])["nodes"])):
            if data is not None:
                with open(dest, "wb") as f:
                    f.write(data)
                return dest
    raise SystemExit("the demo corpus holds no image to caption")


if __name__ == "__main__":
    sys.exit(main())
