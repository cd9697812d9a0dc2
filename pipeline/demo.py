"""`make demo`: build a corpus from the bundled sample crawl, then train and caption if asked.

    python -m pipeline.demo [--output DIR] [--train]
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
    parser.add_argument("--train", action="store_true", help="also train the tiny Flamingo on the corpus and caption an image")
    args = parser.parse_args(argv)

    from pipeline.cli import main as build_m3w

    corpus = os.path.join(args.output, "corpus")
    print(f"== build-m3w build --input {os.path.relpath(SAMPLE)} --output {os.path.relpath(corpus)}")
    rc = build_m3w(["build", "--input", SAMPLE, "--output", corpus, "--shard-size", "2"])
    if rc or not args.train:
        return rc
    from model.train import main as train_flamingo

    run_dir = os.path.join(args.output, "train")
    train_argv = ["--shards", os.path.join(corpus, "wds"), "--config", "tiny", "--steps", "20", "--out", run_dir]
    print("== train-flamingo " + " ".join(train_argv))
    rc = train_flamingo(train_argv)
    if rc:
        return rc
    image = next(os.path.join(dp, f) for dp, _, fs in os.walk(os.path.join(corpus, "wds")) for f in sorted(fs) if f.endswith(".tar"))
    print(f"== train-flamingo caption --checkpoint {os.path.relpath(run_dir)} --shard-image {os.path.relpath(image)}")
    return train_flamingo(["caption", "--checkpoint", run_dir, "--shard-image", image])


if __name__ == "__main__":
    sys.exit(main())
