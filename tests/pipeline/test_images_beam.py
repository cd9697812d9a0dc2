"""ProcessImages and DropRepeatedImages as Beam composites (TestPipeline + assert_that)."""
from __future__ import annotations

import apache_beam as beam
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from pipeline.config import ImageConfig
from pipeline.images import DropRepeatedImages, ProcessImages
from pipeline.records import ImageRecord
from schemas.document import Document, ImageNode, Provenance, TextNode
from tests.conftest import shared_path

PROV = Provenance("crawl.warc.gz", 0, 100, "2024-01-01T00:00:00Z")


def counters(result) -> dict[str, int]:
    res = result.metrics().query(MetricsFilter().with_namespace("m3w"))["counters"]
    return {c.key.metric.name: c.committed for c in res}


def test_process_images_splits_kept_images_from_rejects_with_reasons():
    images = shared_path("images")
    files = {
        "http://a.example/ukbench09380.png": images / "imagededup_tests/formats_images/ukbench09380.png",
        "http://a.example/giphy.gif": images / "imagededup_tests/formats_images/giphy.gif",
        "http://a.example/orig.jpg": images / "pdq_bridge_mods/aaa-orig.jpg",
        "http://a.example/corrupt.jpg": images / "imagededup_tests/mixed_images/ukbench09268_corrupt.jpg",
        "http://a.example/truncated.jpg": images / "skimage_data_photos/truncated.jpg",
        "http://a.example/site-logo.png": images / "skimage_data_photos/coffee.png",
    }
    records = [ImageRecord(url, PROV, p.read_bytes(), "image/jpeg") for url, p in files.items()]
    records[2].source = "fetch"  # as FetchImages labels its records
    bytes_in = sum(len(r.data) for r in records)
    p = TestPipeline()
    out = p | beam.Create(records) | ProcessImages(ImageConfig(), source="warc")
    assert_that(
        out.images | "Summary" >> beam.Map(lambda r: (r.url, r.width, r.height, r.format, r.source, r.provenance.warc_filename)),
        equal_to([
            ("http://a.example/ukbench09380.png", 640, 480, "jpeg", "warc", "crawl.warc.gz"),
            ("http://a.example/giphy.gif", 314, 400, "jpeg", "warc", "crawl.warc.gz"),
            ("http://a.example/orig.jpg", 640, 402, "jpeg", "fetch", "crawl.warc.gz"),
        ]),
        label="KeptImages",
    )
    assert_that(
        out.rejects | "Reasons" >> beam.Map(lambda r: (r.stage, r.reason, r.url, r.warc_filename)),
        equal_to([
            ("image", "not_an_image", "http://a.example/corrupt.jpg", "crawl.warc.gz"),
            ("image", "too_few_bytes", "http://a.example/truncated.jpg", "crawl.warc.gz"),
            ("image", "url_keyword", "http://a.example/site-logo.png", "crawl.warc.gz"),
        ]),
        label="Rejects",
    )
    result = p.run()
    result.wait_until_finish()
    c = counters(result)
    assert c["image.kept"] == 3 and c["image.decoded"] == 3
    assert c["image.dropped_not_an_image"] == 1 and c["image.dropped_url_keyword"] == 1
    assert c["image.bytes_in"] == bytes_in
    assert 0 < c["image.bytes_out"] < bytes_in


def _img(url: str, sha: str | None) -> ImageNode:
    return ImageNode(url=url, sha256=sha, width=100 if sha else None, height=100 if sha else None)


def _doc(i: int, nodes) -> Document:
    return Document(url=f"http://site{i}.example/page", provenance=Provenance("c.warc.gz", i, 10, "2024-01-01"), nodes=nodes)


def test_drop_repeated_images_counts_documents_across_the_run():
    # "logo" appears in 12 documents (> 10): removed everywhere. "shared" in 3: kept.
    # doc 0 also holds "photo0" twice (second copy removed) and one unresolved image (left alone).
    docs = []
    for i in range(12):
        nodes = [TextNode(f"text {i}"), _img(f"http://site{i}.example/logo.png", "logo"), _img(f"http://site{i}.example/p{i}.jpg", f"photo{i}")]
        if i < 3:
            nodes.append(_img("http://cdn.example/shared.jpg", "shared"))
        if i == 0:
            nodes += [_img("http://site0.example/copy.jpg", "photo0"), _img("http://site0.example/lazy.jpg", None)]
        docs.append(_doc(i, nodes))
    # the logo twice in one more document still counts that document once
    docs.append(_doc(12, [_img("http://x.example/a.png", "logo"), _img("http://x.example/b.png", "logo")]))

    p = TestPipeline()
    out = p | beam.Create(docs) | DropRepeatedImages(ImageConfig(max_docs_per_image=10))
    summary = out.documents | "Summary" >> beam.Map(
        lambda d: (d.doc_id, tuple(n.url if isinstance(n, ImageNode) else n.text for n in d.nodes))
    )
    expected = []
    for i in range(12):
        urls = [f"text {i}", f"http://site{i}.example/p{i}.jpg"]
        if i < 3:
            urls.append("http://cdn.example/shared.jpg")
        if i == 0:
            urls.append("http://site0.example/lazy.jpg")
        expected.append((docs[i].doc_id, tuple(urls)))
    expected.append((docs[12].doc_id, ()))
    assert_that(summary, equal_to(expected), label="Documents")
    assert_that(
        out.rejects | "Reasons" >> beam.Map(lambda r: (r.reason, r.url, r.warc_record_offset)),
        equal_to(
            [("repeated", f"http://site{i}.example/logo.png", i) for i in range(12)]
            + [("repeated", "http://x.example/a.png", 12), ("repeated", "http://x.example/b.png", 12)]
            + [("duplicate_in_doc", "http://site0.example/copy.jpg", 0)]
        ),
        label="Rejects",
    )
    result = p.run()
    result.wait_until_finish()
    c = counters(result)
    assert c["image.dropped_repeated"] == 14 and c["image.dropped_duplicate_in_doc"] == 1


def test_drop_repeated_images_without_a_limit_only_removes_in_document_duplicates():
    docs = [_doc(i, [_img("http://a.example/logo.png", "logo"), _img("http://a.example/logo2.png", "logo")]) for i in range(15)]
    p = TestPipeline()
    out = p | beam.Create(docs) | DropRepeatedImages(ImageConfig(max_docs_per_image=None))
    assert_that(
        out.documents | beam.Map(lambda d: [n.url for n in d.images]),
        equal_to([["http://a.example/logo.png"]] * 15),
    )
    p.run().wait_until_finish()
