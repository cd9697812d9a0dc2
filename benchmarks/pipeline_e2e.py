"""End-to-end pages/s through Beam vs the same stage functions in a plain Python loop.

Both runs process the same WARCs with the same config, in the same process, one core each:
read (iter_warc) → extract_document → filter_documents (batches of 64) → a second read for the
referenced images (process_image) → attach → repeated images → image count → shard writers and the rejects file. Dedup (URLs, MinHash, paragraphs, image sets) is grouped work with no per-record equivalent, so
it is off in both, and ``--copies N`` can repeat the crawl to amortise Beam's fixed start-up cost
(graph construction, one bundle per stage) the way a real crawl does. The ratio Beam/loop is Beam's overhead (target ≤ 1.3×). The multi-process local runner
on all cores is reported beside it.

    .venv/bin/python -m benchmarks.pipeline_e2e [--copies N] [--rounds R] [WARC_DIR]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

from pipeline.config import load_config
from pipeline.extract import ExtractionError, extract_document
from pipeline.filters import BATCH_DOCS, filter_documents, image_count_reason
from pipeline.images import ImageRejected, ResolvedImage, drop_images, image_hashes_of, process_image, repeated_in_docs
from pipeline.join import choose_record
from pipeline.records import ImageRecord, Page, Reject
from pipeline.shards import write_parquet, write_wds
from pipeline.urls import normalize_url
from pipeline.warc import iter_warc, match_inputs
from schemas.document import ImageNode

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def bench_config():
    cfg = load_config()
    cfg.dedup.minhash = False
    cfg.dedup.image_set = False
    cfg.dedup.paragraph_max_per_domain = None
    cfg.language.keep = None  # keep every language: more pages reach every stage
    cfg.dedup.url = False  # --copies repeats the crawl: every copy must be full work on both sides
    cfg.text_filters.doc_min_images = None
    return cfg


def plain_loop(paths: list[str], out: str) -> int:
    """The pipeline's stage functions, called in a loop; returns the number of HTML pages read."""
    cfg = bench_config()
    rejects: list[Reject] = []
    pages: list[Page] = []
    images: dict[str, list[ImageRecord]] = {}
    n_pages = 0
    for path in paths:
        for item in iter_warc(path, cfg.limits):
            if isinstance(item, Page):
                n_pages += 1
                pages.append(item)
            elif not isinstance(item, ImageRecord):
                rejects.append(item)
    extracted = []
    for page in pages:
        try:
            extracted.append(extract_document(page, cfg.extract, cfg.limits))
        except ExtractionError as e:
            rejects.append(Reject.of("extract", str(e), page.provenance, page.url))
    docs = []
    for i in range(0, len(extracted), BATCH_DOCS):  # batched, as FilterText does
        for doc, dropped in filter_documents(extracted[i : i + BATCH_DOCS], cfg):
            rejects += dropped
            if doc is not None:
                docs.append(doc)
    # Images in a second pass over the files, for the URLs the documents cite (as Beam does, so
    # that neither side holds every image of the crawl).
    referenced = {normalize_url(n.url) for doc in docs for n in doc.nodes if isinstance(n, ImageNode)}
    for path in paths:
        for item in iter_warc(path, cfg.limits):
            if isinstance(item, ImageRecord) and (key := normalize_url(item.url)) in referenced:
                images.setdefault(key, []).append(item)
    resolved: dict[str, ResolvedImage] = {}
    for doc in docs:
        for node in doc.nodes:
            key = normalize_url(node.url) if isinstance(node, ImageNode) else None
            if key and key not in resolved and key in images:
                rec = choose_record(images[key])
                try:
                    resolved[key] = ResolvedImage.of(process_image(rec.data, rec.url, cfg.images, cfg.limits), rec.url, rec.provenance, "warc")
                except ImageRejected as e:
                    rejects.append(Reject.of("image", e.reason, rec.provenance, rec.url, e.detail))
                    resolved[key] = None
    for doc in docs:
        doc.nodes = [
            resolved[normalize_url(n.url)].apply_to(n) if isinstance(n, ImageNode) else n
            for n in doc.nodes
            if not isinstance(n, ImageNode) or resolved.get(normalize_url(n.url)) is not None
        ]
    docs_per_sha: dict[str, list[str]] = {}
    for doc in docs:
        for sha, doc_id in image_hashes_of(doc):
            docs_per_sha.setdefault(sha, []).append(doc_id)
    repeated: dict[str, dict[str, int]] = {}
    for item in docs_per_sha.items():
        for doc_id, (sha, n) in repeated_in_docs(item, cfg.images.max_docs_per_image):
            repeated.setdefault(doc_id, {})[sha] = n
    final = []
    for doc in docs:
        doc, dropped = drop_images(doc, repeated.get(doc.doc_id, {}))
        rejects += [Reject.of("image", reason, doc.provenance, node.url, detail) for reason, node, detail in dropped]
        if image_count_reason(doc, cfg) is None:
            final.append(doc)
    final.sort(key=lambda d: d.doc_id)
    with open(os.path.join(out, "loop.tar"), "wb") as f:
        write_wds(f, final)
    with open(os.path.join(out, "loop.parquet"), "wb") as f:
        write_parquet(f, final)
    with open(os.path.join(out, "loop-rejects.jsonl"), "w", encoding="utf-8") as f:
        for line in sorted(json.dumps(dict(vars(r)), sort_keys=True, ensure_ascii=False) for r in rejects):
            f.write(line + "\n")
    return n_pages


def beam_run(paths: list[str], out: str, runner: list[str]) -> None:
    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions

    from pipeline.build import build_pipeline

    p = beam.Pipeline(options=PipelineOptions(runner))
    build_pipeline(p, paths, out, bench_config())
    p.run().wait_until_finish()


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("warcs", nargs="?", default=os.path.join(REPO, "..", "shared", "data", "warc"))
    parser.add_argument("--copies", type=int, default=3, help="repeat the input list (more work per run)")
    parser.add_argument("--rounds", type=int, default=3, help="alternated loop/Beam rounds")
    args = parser.parse_args()
    if not os.path.exists(args.warcs):
        print(f"no WARCs at {args.warcs}; pass a directory", file=sys.stderr)
        return 2
    paths = match_inputs([args.warcs])
    with tempfile.TemporaryDirectory() as tmp:
        # Each copy is a distinct path (a symlink), so Beam reads it as another file.
        all_paths = []
        for c in range(args.copies):
            for i, p in enumerate(paths):
                link = os.path.join(tmp, f"c{c}-{i}-{os.path.basename(p)}")
                os.symlink(os.path.abspath(p), link)
                all_paths.append(link)
        plain_loop(all_paths[:3], tmp)  # warm imports and caches for both sides
        # CPU seconds of this process (all its threads): the machine may be shared, wall time is
        # not fair. The host's speed also drifts, so loop and Beam alternate round by round and
        # each round's ratio compares runs made minutes apart.
        loop_cpu, beam_cpu, ratios = [], [], []
        for r in range(args.rounds):
            c = time.process_time()
            n_pages = plain_loop(all_paths, tmp)
            loop_cpu.append(time.process_time() - c)
            c = time.process_time()
            beam_run(all_paths, os.path.join(tmp, f"beam1-{r}"), ["--runner=DirectRunner"])
            beam_cpu.append(time.process_time() - c)
            ratios.append(beam_cpu[-1] / loop_cpu[-1])
            print(f"round {r + 1}: loop {loop_cpu[-1]:.1f} CPU s, Beam {beam_cpu[-1]:.1f} CPU s, ratio {ratios[-1]:.2f}x", file=sys.stderr)
        cores = os.cpu_count() or 1
        t = time.perf_counter()
        beam_run(all_paths, os.path.join(tmp, "beamN"), ["--runner=DirectRunner", "--direct_running_mode=multi_processing", f"--direct_num_workers={cores}"])
        multi_s = time.perf_counter() - t
    loop, beam = min(loop_cpu), min(beam_cpu)
    print(f"inputs: {len(all_paths)} files, {n_pages} HTML pages; load average {os.getloadavg()[0]:.1f} on {cores} cores; {args.rounds} alternated rounds")
    print(f"plain loop, 1 core:             {n_pages / loop:7.1f} pages/CPU-s  (best {loop:.1f} CPU s; rounds {', '.join(f'{x:.1f}' for x in loop_cpu)})")
    print(f"Beam local runner, in-process:  {n_pages / beam:7.1f} pages/CPU-s  (best {beam:.1f} CPU s; rounds {', '.join(f'{x:.1f}' for x in beam_cpu)})")
    print(f"Beam overhead (Beam CPU / loop CPU): best/best {beam / loop:.2f}x, per round {', '.join(f'{x:.2f}' for x in ratios)} (median {statistics.median(ratios):.2f}x)   target <= 1.3x")
    print(f"Beam local runner, {cores} processes: {n_pages / multi_s:7.1f} pages/s wall ({multi_s:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
