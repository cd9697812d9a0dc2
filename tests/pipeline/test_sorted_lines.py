"""Rejects and the decontamination report are written from spilled runs, not a shuffle of their
lines: every line once, byte-identical files whatever the batching, spill size or worker count,
no temporary run left behind."""
from __future__ import annotations

import json
import os
import random

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions

from pipeline.shards import WriteSortedJsonLines, lines_num_files, stable_hash


def lines(n: int) -> list[str]:
    rng = random.Random(7)
    return [json.dumps({"i": i, "reason": rng.choice(["a", "b", "ü"]), "pad": "x" * rng.randrange(50)}, ensure_ascii=False) for i in range(n)]


def write(tmp, name: str, all_lines: list[str], batch: int, spill_bytes: int, rows_per_file: int, options: list[str]) -> dict[str, bytes]:
    out = str(tmp / name)
    batches = [all_lines[i : i + batch] for i in range(0, len(all_lines), batch)]
    with beam.Pipeline(options=PipelineOptions(options)) as p:
        _ = (
            p
            | beam.Create(batches, reshuffle=True)
            | WriteSortedJsonLines(out, "rejects/rejects", rows_per_file=rows_per_file, spill_bytes=spill_bytes)
        )
    folder = os.path.join(out, "rejects")
    return {f: open(os.path.join(folder, f), "rb").read() for f in sorted(os.listdir(folder))}


def test_files_are_the_same_whatever_the_batching_spill_size_and_workers(tmp_path):
    data = lines(5000)
    a = write(tmp_path, "a", data, batch=5000, spill_bytes=1 << 30, rows_per_file=1500, options=[])
    shuffled = data[::-1]
    b = write(tmp_path, "b", shuffled, batch=7, spill_bytes=4096, rows_per_file=1500, options=[])
    c = write(
        tmp_path, "c", data, batch=333, spill_bytes=20_000, rows_per_file=1500,
        options=["--direct_running_mode=multi_processing", "--direct_num_workers=2"],
    )
    assert a == b == c
    assert list(a) == [f"rejects-{i:05d}-of-00004.jsonl" for i in range(4)]  # 5000 / 1500 → 4 files (a power of two)
    got = [line.decode() for blob in a.values() for line in blob.splitlines()]
    assert sorted(got) == sorted(data)  # every line once, no run file among the outputs
    for i, blob in enumerate(a.values()):
        keys = [(stable_hash(line), line) for line in blob.decode().splitlines()]
        assert keys == sorted(keys)
        assert all(h * 4 >> 64 == i for h, _ in keys)  # file i holds the i-th quarter of the hash range


def test_file_counts_keep_near_rows_per_file():
    assert [lines_num_files(n, 100) for n in (1, 100, 101, 250, 400, 401)] == [1, 1, 2, 4, 4, 8]
    assert lines_num_files(10**12, 1) == 1024


def test_no_line_no_file(tmp_path):
    out = tmp_path / "empty"
    with beam.Pipeline() as p:
        _ = p | beam.Create([[]]) | WriteSortedJsonLines(str(out), "rejects/rejects")
    assert not (out / "rejects").exists() or not os.listdir(out / "rejects")
