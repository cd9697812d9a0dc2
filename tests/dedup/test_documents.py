"""Document dedup on real page text: planted near copies go, distinct pages stay."""
from __future__ import annotations

import json

import apache_beam as beam
import numpy as np
import pytest
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from dedup.documents import ClusterNearDuplicates, DeduplicateDocuments, DocSummary, paragraph_hash, paragraphs
from pipeline.config import DedupConfig
from schemas.document import Document, ImageNode, Provenance, TextNode
from tests.conftest import shared_path


@pytest.fixture(scope="module")
def articles() -> list[tuple[str, str]]:
    truth = json.loads(shared_path("extraction", "article_benchmark", "ground-truth.json").read_text())
    out = [(v["url"], v["articleBody"]) for v in truth.values() if len(v["articleBody"].split()) >= 200]
    return out[:24]


def _doc(url: str, text: str, offset: int, images: list[str] = ()) -> Document:
    nodes = [TextNode(p) for p in text.split("\n\n") if p.strip()]
    nodes += [ImageNode(url=f"{url}/img{i}.jpg", sha256=sha) for i, sha in enumerate(images)]
    return Document(url=url, provenance=Provenance("crawl.warc.gz", offset, 1000, "2024-01-01T00:00:00Z"), nodes=nodes)


def _edit(text: str, rng: np.random.Generator, how: str) -> str:
    words = text.split(" ")
    if how == "typos":  # a few words changed, as a syndicated copy with small edits
        for i in rng.choice(len(words), size=max(2, len(words) // 100), replace=False):
            words[i] = words[i].upper() + "s"
        return " ".join(words)
    if how == "truncated":  # the last lines cut, as a mirror that dropped a footer
        return " ".join(words[: int(len(words) * 0.93)])
    if how == "appended":  # a reposting with a short trailer added
        return text + "\n\nThis article was first published elsewhere and is republished with permission."
    raise ValueError(how)


def test_planted_near_duplicates_are_removed_and_distinct_pages_kept(articles):
    rng = np.random.default_rng(0)
    docs = [_doc(url, text, i) for i, (url, text) in enumerate(articles)]
    planted = {}
    for j, how in enumerate(["typos", "truncated", "appended", "typos", "truncated", "appended"]):
        url, text = articles[j]
        copy = _edit(text, rng, how)
        d = _doc(f"https://mirror{j}.example.net/copy", copy, 1000 + j)
        planted[d.doc_id] = (d, docs[j])
        docs.append(d)
    # Survivor: the longer text of each pair; the reject names it.
    pairs = []
    for copy, orig in planted.values():
        copy_loses = len(copy.text) < len(orig.text) or (len(copy.text) == len(orig.text) and copy.doc_id > orig.doc_id)
        pairs.append((copy, orig) if copy_loses else (orig, copy))
    expected_dropped = sorted((lost.url, f"kept {kept.url}") for lost, kept in pairs)
    expected_kept = sorted({d.url for d in docs} - {u for u, _ in expected_dropped})
    cfg = DedupConfig(paragraph_max_per_domain=None, image_set=False, minhash_cluster_rounds=2)
    with TestPipeline() as p:
        out = p | beam.Create(docs) | DeduplicateDocuments(cfg)
        assert_that(out.documents | "KeptUrls" >> beam.Map(lambda d: d.url), equal_to(expected_kept), label="Kept")
        assert_that(
            out.rejects | "Reasons" >> beam.Map(lambda r: (r.stage, r.reason, r.url, r.detail.split(" (doc_id")[0])),
            equal_to([("dedup", "near_duplicate", u, kept) for u, kept in expected_dropped]),
            label="Dropped",
        )


def test_paragraph_repeated_across_a_domain_is_cut_and_image_set_duplicates_dropped(articles):
    boiler = "Sign up for our newsletter to get the best stories of the week delivered to your inbox."
    shared_twice = "Our correspondent contributed reporting from the capital for this story and the next."
    docs = []
    for i in range(4):  # four distinct articles of one site, all ending with the same trailer
        url, text = articles[10 + i]
        extra = f"\n\n{shared_twice}" if i < 2 else ""
        docs.append(_doc(f"https://www.site.example/{i}", f"{text}\n\n{boiler}{extra}", 200 + i))
    # Two pages of another site with the very same images but different text.
    a = _doc("https://photos.example/a", articles[20][1], 300, images=["aa" * 32, "bb" * 32])
    b = _doc("https://photos.example/b", articles[21][1], 301, images=["bb" * 32, "aa" * 32])
    docs += [a, b]
    loser = a if (-len(a.text), a.doc_id) > (-len(b.text), b.doc_id) else b
    cfg = DedupConfig(minhash=False)
    boiler_hash = paragraph_hash(boiler)
    with TestPipeline() as p:
        out = p | beam.Create(docs) | DeduplicateDocuments(cfg)
        assert_that(
            out.documents
            | "ParagraphsLeft"
            >> beam.Map(
                lambda d: (
                    d.url,
                    any(paragraph_hash(x) == boiler_hash for n in d.nodes if isinstance(n, TextNode) for x in paragraphs(n.text)),
                    "Our correspondent" in d.text,
                )
            ),
            equal_to(
                [(f"https://www.site.example/{i}", False, i < 2) for i in range(4)] + [((a if loser is b else b).url, False, False)]
            ),
            label="Paragraphs",
        )
        assert_that(
            out.rejects | "Rejected" >> beam.Map(lambda r: (r.reason, r.url)),
            equal_to([("same_image_set", loser.url)]),
            label="ImageSets",
        )


def test_clusters_follow_chains_of_candidate_pairs():
    # a~b, b~c, c~d share band keys pairwise only: one cluster, one survivor (the smallest rank).
    keys = {"a": [b"1"], "b": [b"1", b"2"], "c": [b"2", b"3"], "d": [b"3"], "e": [b"9"]}
    ranks = {"a": (-50, "a"), "b": (-90, "b"), "c": (-70, "c"), "d": (-10, "d"), "e": (-5, "e")}
    summaries = [(k, DocSummary(k, ranks[k], "x", v)) for k, v in keys.items()]
    p = TestPipeline()
    drops = p | beam.Create(summaries) | ClusterNearDuplicates(rounds=4)
    assert_that(
        drops | beam.Map(lambda kv: (kv[0], kv[1].reason, kv[1].survivor)),
        equal_to([(x, "near_duplicate", "b") for x in ("a", "c", "d")]),
    )
    result = p.run()
    result.wait_until_finish()
    unsettled = result.metrics().query(MetricsFilter().with_name("dedup.cluster_labels_unsettled"))["counters"]
    assert sum(c.committed for c in unsettled) == 0  # 4 rounds reach every node of the chain
