"""Document-level dedup as Beam transforms, with no single-worker stage.

    documents ─ Summarize (MinHash band keys, image-set key, paragraph hashes; small records)
      ├─ band key → GroupByKey → star edges to each bucket's best member
      │     → min-label propagation rounds (CoGroupByKey + CombinePerKey(min))
      │     → every document whose cluster label is not itself: near_duplicate
      ├─ near-duplicate survivors: image-set key → GroupByKey → all but the best: same_image_set
      ├─ survivors of both: (domain, paragraph) → GroupByKey → paragraphs in more than
      │     ``paragraph_max_per_domain`` documents of the domain are cut from all of them (OBELICS)
      └─ CoGroupByKey(documents, drops, cuts) by doc_id → ``documents`` / ``rejects``

Only the last join moves whole documents; every other shuffle carries ids and hashes.

Survivor rule: in a cluster (or an image-set group) the document with the longest text is kept,
ties broken by the smallest ``doc_id``; this is the order of ``rank`` below. Label propagation
runs a fixed number of rounds (``minhash_cluster_rounds``); a cluster wider than that in hops may
keep more than one document, but never loses all of them (its best member always keeps its own
label). The counter ``dedup.cluster_labels_unsettled`` counts labels that still changed in the
last round: 0 means every cluster was resolved completely.
"""
from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import apache_beam as beam
from apache_beam.metrics import Metrics

from dedup.minhash import has_shingles, lsh_band_keys, minhash_signatures
from pipeline.config import DedupConfig
from pipeline.records import Reject
from pipeline.urls import domain
from schemas.document import Document, TextNode

STAGE = "dedup"
Rank = tuple  # (-len(text), doc_id, url): the smallest is a cluster's survivor (doc_id is unique)

_PARAGRAPH_SPLIT = re.compile(r"\n\s*\n")


def rank(doc: Document) -> Rank:
    return (-len(doc.text), doc.doc_id, doc.url)


def _url_of(r: Rank) -> str:
    return r[2] if len(r) > 2 else ""


def paragraphs(text: str) -> list[str]:
    """A text node's paragraphs: blocks separated by blank lines (how extraction joins blocks)."""
    return [p for p in _PARAGRAPH_SPLIT.split(text) if p.strip()]


def paragraph_hash(paragraph: str) -> str:
    """Whitespace-insensitive 64-bit hash of a paragraph, hex."""
    return hashlib.blake2b(" ".join(paragraph.split()).encode("utf-8", "surrogatepass"), digest_size=8).hexdigest()


def image_set_key(doc: Document) -> str | None:
    """Digest of the set of resolved image sha256s; None when the document has no resolved image."""
    shas = sorted({img.sha256 for img in doc.images if img.sha256})
    if not shas:
        return None
    return hashlib.blake2b("\n".join(shas).encode("ascii"), digest_size=16).hexdigest()


def remove_paragraphs(doc: Document, cut: set[str]) -> int:
    """Remove paragraphs whose hash is in ``cut`` from ``doc`` (in place); returns how many were removed.
    Text nodes left empty are removed."""
    removed = 0
    nodes = []
    for node in doc.nodes:
        if isinstance(node, TextNode):
            parts = paragraphs(node.text)
            kept = [p for p in parts if paragraph_hash(p) not in cut]
            removed += len(parts) - len(kept)
            if len(kept) == len(parts):
                nodes.append(node)
            elif kept:
                nodes.append(TextNode("\n\n".join(kept)))
            continue
        nodes.append(node)
    doc.nodes = nodes
    return removed


@dataclass
class DocSummary:
    """What dedup decisions need to know about a document (no text, no image bytes)."""

    doc_id: str
    rank: Rank
    domain: str
    band_keys: list[bytes] = field(default_factory=list)
    image_set: str | None = None
    paragraphs: list[str] = field(default_factory=list)  # distinct paragraph hashes


@dataclass
class Drop:
    reason: str  # "near_duplicate" | "same_image_set"
    survivor: str  # doc_id of the kept document
    survivor_url: str = ""


class _Summarize(beam.DoFn):
    """Batch of Documents → (doc_id, DocSummary); MinHash signatures computed for the whole batch."""

    def __init__(self, cfg: DedupConfig) -> None:
        self.cfg = cfg
        self.no_shingles = Metrics.counter("m3w", "dedup.documents_without_shingles")

    def process(self, batch: list[Document]) -> Iterator[tuple[str, DocSummary]]:
        cfg = self.cfg
        sigs = None
        if cfg.minhash:
            sigs = minhash_signatures(
                [d.text for d in batch], cfg.minhash_bands * cfg.minhash_rows, cfg.minhash_ngram, cfg.minhash_seed
            )
        for i, doc in enumerate(batch):
            keys: list[bytes] = []
            if sigs is not None:
                if has_shingles(sigs[i]):
                    keys = lsh_band_keys(sigs[i], cfg.minhash_bands, cfg.minhash_rows)
                else:
                    self.no_shingles.inc()
            paras: list[str] = []
            if cfg.paragraph_max_per_domain is not None:
                paras = sorted({paragraph_hash(p) for n in doc.nodes if isinstance(n, TextNode) for p in paragraphs(n.text)})
            yield doc.doc_id, DocSummary(
                doc.doc_id,
                rank(doc),
                domain(doc.url),
                keys,
                image_set_key(doc) if cfg.image_set else None,
                paras,
            )


def _bucket_edges(item: tuple[bytes, Iterable[Rank]]) -> Iterator[tuple[Rank, Rank]]:
    """A band bucket → star edges between its best member and every other member, both ways."""
    # Two passes over the group, nothing held: a bucket of a million copies costs no memory.
    head = min(item[1])
    for m in item[1]:
        if m != head:
            yield m, head
            yield head, m


def _spread_label(item: tuple[Rank, dict[str, list[Any]]]) -> Iterator[tuple[Rank, Rank]]:
    """One propagation step at node v: v's label goes to v and to each neighbour of v."""
    v, grouped = item
    labels = grouped["label"]
    if not labels:
        return
    label = min(labels)
    yield v, label
    for u in grouped["adj"]:
        yield u, label


class _CountUnsettled(beam.DoFn):
    def __init__(self) -> None:
        self.unsettled = Metrics.counter("m3w", "dedup.cluster_labels_unsettled")

    def process(self, item: tuple[Rank, dict[str, list[Rank]]]) -> Iterator[None]:
        _, grouped = item
        if grouped["before"] != grouped["after"]:
            self.unsettled.inc()
        return iter(())


class ClusterNearDuplicates(beam.PTransform):
    """PCollection[(doc_id, DocSummary)] → PCollection[(doc_id, Drop)] for every document of a
    MinHash-LSH cluster except the cluster's best (smallest-rank) member."""

    def __init__(self, rounds: int) -> None:
        super().__init__()
        self.rounds = rounds

    def expand(self, summaries: beam.PCollection) -> beam.PCollection:
        edges = (
            summaries
            | "BandKeys" >> beam.FlatMap(lambda kv: [(k, kv[1].rank) for k in kv[1].band_keys])
            | "GroupBands" >> beam.GroupByKey()
            | "BucketEdges" >> beam.FlatMap(_bucket_edges)
            | "DistinctEdges" >> beam.Distinct()
        )
        # Round 0: every node starts as its own label; each round takes the minimum over neighbours.
        labels = edges | "InitialLabels" >> beam.Map(lambda e: (e[0], e[0])) | "InitialMin" >> beam.CombinePerKey(min)
        adjacency = edges | "AdjacencyByTarget" >> beam.Map(lambda e: (e[1], e[0]))
        previous = labels
        for r in range(self.rounds):
            previous = labels
            labels = (
                {"adj": adjacency, "label": labels}
                | f"JoinLabels{r}" >> beam.CoGroupByKey()
                | f"SpreadLabels{r}" >> beam.FlatMap(_spread_label)
                | f"MinLabel{r}" >> beam.CombinePerKey(min)
            )
        # Labels that still moved in the last round: their clusters are wider than the rounds
        # reach and may keep extra survivors (raise minhash_cluster_rounds when this is not 0).
        _ = (
            {"before": previous, "after": labels}
            | "JoinLastRounds" >> beam.CoGroupByKey()
            | "CountUnsettledLabels" >> beam.ParDo(_CountUnsettled())
        )
        return (
            labels
            | "NotOwnLabel" >> beam.Filter(lambda kv: kv[0] != kv[1])
            | "NearDuplicateDrops" >> beam.Map(lambda kv: (kv[0][1], Drop("near_duplicate", kv[1][1], _url_of(kv[1]))))
        )


def _survivors(item: tuple[str, dict[str, list[Any]]]) -> Iterator[tuple[str, DocSummary]]:
    doc_id, grouped = item
    if grouped["drop"]:
        return
    for s in grouped["summary"]:
        yield doc_id, s


def _image_set_drops(item: tuple[str, Iterable[Rank]]) -> Iterator[tuple[str, Drop]]:
    head = min(item[1])  # members are distinct documents (one image-set key each): two passes, nothing held
    for m in item[1]:
        if m != head:
            yield m[1], Drop("same_image_set", head[1], _url_of(head))


def _paragraph_cuts(max_docs: int):
    def cuts(item: tuple[tuple[str, str], Iterable[str]]) -> Iterator[tuple[str, str]]:
        (_, para), doc_ids = item
        # a document sends each of its paragraphs once: count, then yield, nothing held
        if sum(1 for _ in doc_ids) > max_docs:
            for d in doc_ids:
                yield d, para

    return cuts


_DROP_ORDER = {"near_duplicate": 0, "same_image_set": 1}


class _ApplyDecisions(beam.DoFn):
    """(doc_id, {doc, drop, cut}) → Document (paragraph cuts applied) or a Reject."""

    def __init__(self) -> None:
        self.kept = Metrics.counter("m3w", "dedup.documents_kept")
        self.near = Metrics.counter("m3w", "dedup.dropped_near_duplicate")
        self.same_images = Metrics.counter("m3w", "dedup.dropped_same_image_set")
        self.no_text = Metrics.counter("m3w", "dedup.dropped_no_text_after_paragraph_dedup")
        self.paragraphs = Metrics.counter("m3w", "dedup.paragraphs_removed")

    def process(self, item: tuple[str, dict[str, list[Any]]]) -> Iterator[Any]:
        _, grouped = item
        for doc in grouped["doc"]:
            drops = sorted(grouped["drop"], key=lambda d: (_DROP_ORDER[d.reason], d.survivor))
            if drops:
                d = drops[0]
                (self.near if d.reason == "near_duplicate" else self.same_images).inc()
                yield beam.pvalue.TaggedOutput(
                    "rejects",
                    Reject.of(STAGE, d.reason, doc.provenance, url=doc.url, detail=f"kept {d.survivor_url} (doc_id {d.survivor})"),
                )
                continue
            if grouped["cut"]:
                had_text = any(isinstance(n, TextNode) for n in doc.nodes)
                n = remove_paragraphs(doc, set(grouped["cut"]))
                self.paragraphs.inc(n)
                if had_text and not any(isinstance(x, TextNode) for x in doc.nodes):
                    self.no_text.inc()
                    yield beam.pvalue.TaggedOutput(
                        "rejects",
                        Reject.of(
                            STAGE,
                            "no_text_after_paragraph_dedup",
                            doc.provenance,
                            url=doc.url,
                            detail=f"{n} paragraphs repeated across the domain removed",
                        ),
                    )
                    continue
            self.kept.inc()
            yield doc


class DeduplicateDocuments(beam.PTransform):
    """PCollection[Document] → tagged ``documents`` and ``rejects`` (stage "dedup", reasons
    "near_duplicate", "same_image_set", "no_text_after_paragraph_dedup"; detail names the survivor).

    Near duplicates: MinHash LSH over word ``minhash_ngram``-gram shingles, ``minhash_bands`` x
    ``minhash_rows``. Image sets: documents whose resolved images have the same set of sha256.
    Paragraphs: within a domain, a paragraph in more than ``paragraph_max_per_domain`` documents
    is removed from all of them. Each part is off when its config switch is off / None.
    """

    def __init__(self, cfg: DedupConfig) -> None:
        super().__init__()
        self.cfg = cfg

    def expand(self, docs: beam.PCollection) -> Any:
        cfg = self.cfg
        keyed = docs | "KeyByDocId" >> beam.Map(lambda d: (d.doc_id, d))
        summaries = (
            docs
            | "BatchForSignatures" >> beam.BatchElements(min_batch_size=1, max_batch_size=cfg.minhash_batch_size)
            | "Summarize" >> beam.ParDo(_Summarize(cfg))
        )
        drops = []
        survivors = summaries
        if cfg.minhash:
            near = summaries | "ClusterNearDuplicates" >> ClusterNearDuplicates(cfg.minhash_cluster_rounds)
            drops.append(near)
            survivors = (
                {"summary": summaries, "drop": near}
                | "JoinNearDuplicateDrops" >> beam.CoGroupByKey()
                | "NearDuplicateSurvivors" >> beam.FlatMap(_survivors)
            )
        if cfg.image_set:
            same = (
                survivors
                | "ImageSetKeys" >> beam.FlatMap(lambda kv: [(kv[1].image_set, kv[1].rank)] if kv[1].image_set else [])
                | "GroupImageSets" >> beam.GroupByKey()
                | "ImageSetDrops" >> beam.FlatMap(_image_set_drops)
            )
            drops.append(same)
            survivors = (
                {"summary": survivors, "drop": same}
                | "JoinImageSetDrops" >> beam.CoGroupByKey()
                | "ImageSetSurvivors" >> beam.FlatMap(_survivors)
            )
        all_drops = (drops or [docs.pipeline | "NoDrops" >> beam.Create([])]) | "FlattenDrops" >> beam.Flatten()
        if cfg.paragraph_max_per_domain is not None:
            cuts = (
                survivors
                | "DomainParagraphs" >> beam.FlatMap(lambda kv: [((kv[1].domain, p), kv[0]) for p in kv[1].paragraphs])
                | "GroupDomainParagraphs" >> beam.GroupByKey()
                | "RepeatedParagraphs" >> beam.FlatMap(_paragraph_cuts(cfg.paragraph_max_per_domain))
            )
        else:
            cuts = docs.pipeline | "NoCuts" >> beam.Create([])
        return (
            {"doc": keyed, "drop": all_drops, "cut": cuts}
            | "JoinDecisions" >> beam.CoGroupByKey()
            | "ApplyDecisions" >> beam.ParDo(_ApplyDecisions()).with_outputs("rejects", main="documents")
        )
