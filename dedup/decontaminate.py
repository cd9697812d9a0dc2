"""Drop evaluation-set images (or the documents holding them) found in the crawl.

Each resolved image is matched against an evaluation index (dedup/eval_index.py) by the Hamming
distance of its perceptual hash to the nearest evaluation image; within
``max_hamming_distance`` it is a match. ``phash64`` comes from ``ImageNode.phash`` as the image
stage computed it; any other feature is computed here from ``ImageNode.data``. With
``trim_borders`` an image with a uniform border (letterbox, frame) is also searched without it
(dedup.phash.query_codes); the calibration behind the defaults is in docs/bench/dedup.md.
With ``embedder`` set, images the hashes did not match are also embedded and matched by cosine
(``min_cosine``) against the index's dense vectors (Flamingo's own method; bring local weights).
"""
from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import apache_beam as beam
import numpy as np
from apache_beam.metrics import Metrics

from dedup import phash
from pipeline.config import DecontaminationConfig
from pipeline.records import Reject
from schemas.document import Document, ImageNode

STAGE = "decontaminate"


def match_record(
    doc: Document, img: ImageNode, eval_set: str, eval_id: str, distance: float, feature: str = ""
) -> dict[str, Any]:
    """One line of the decontamination report (``distance``: Hamming bits, or 1 - cosine for an embedder)."""
    return {
        "doc_url": doc.url,
        "doc_id": doc.doc_id,
        "image_url": img.url,
        "image_sha256": img.sha256,
        "eval_set": eval_set,
        "eval_image_id": eval_id,
        "distance": distance,
        "feature": feature,
    }


class _DecontaminateFn(beam.DoFn):
    def __init__(self, index_path: str, cfg: DecontaminationConfig) -> None:
        if cfg.drop not in ("image", "document"):
            raise ValueError(f"decontamination.drop must be 'image' or 'document', not {cfg.drop!r}")
        phash.feature_bits(cfg.feature)
        self.index_path = index_path
        self.cfg = cfg
        self.index = None
        self.embedder = None
        self.checked = Metrics.counter("m3w", "decontaminate.images_checked")
        self.matched = Metrics.counter("m3w", "decontaminate.images_matched")
        self.dropped_image = Metrics.counter("m3w", "decontaminate.dropped_image")
        self.dropped_doc = Metrics.counter("m3w", "decontaminate.dropped_document")
        self.unhashed = Metrics.counter("m3w", "decontaminate.images_without_hash")
        self.undecodable = Metrics.counter("m3w", "decontaminate.images_undecodable")

    def setup(self) -> None:
        from dedup.eval_index import EvalIndex

        from dedup.eval_index import EvalIndexError, load_embedder

        self.index = EvalIndex.load(self.index_path)
        self.index._feature(self.cfg.feature)  # fail at start-up, not on the first image
        self.embedder = load_embedder(self.cfg.embedder, self.cfg.embedder_weights)
        if self.embedder is not None and self.embedder.name not in self.index.dense:
            raise EvalIndexError(
                f"decontamination.embedder {self.embedder.name!r} is not in {self.index_path}; "
                f"rebuild it with `build-m3w eval-index --embedder {self.cfg.embedder}`"
            )

    def _codes(self, images: list[ImageNode]) -> tuple[list[int], np.ndarray, list[Any]]:
        """Codes to search, each with the position (in ``images``) of the image it belongs to;
        and each image's decoded pixels (None where not needed or not available)."""
        feature, trim = self.cfg.feature, self.cfg.trim_borders
        pos: list[int] = []
        codes: list[np.ndarray] = []
        decoded: list[Any] = []
        for i, img in enumerate(images):
            pixels = None
            needs_pixels = trim or self.embedder is not None or not (feature == "phash64" and img.phash)
            if needs_pixels and img.data:
                try:
                    pixels = phash.decode_rgb(img.data)
                except (OSError, ValueError):
                    # The image stage decoded these bytes already; count the oddity, keep the image.
                    self.undecodable.inc()
            decoded.append(pixels)
            found = phash.query_codes(feature, pixels, img.phash if feature == "phash64" else None, trim)
            if not found:
                self.unhashed.inc()
                continue
            pos.extend([i] * len(found))
            codes.extend(found)
        if not codes:
            return pos, np.zeros((0, phash.feature_bits(feature) // 8), dtype=np.uint8), decoded
        return pos, np.stack(codes), decoded

    def process(self, doc: Document) -> Iterator[Any]:
        images = [n for n in doc.nodes if isinstance(n, ImageNode)]
        if not images:
            yield doc
            return
        pos, codes, decoded = self._codes(images)
        self.checked.inc(len(set(pos)))
        hits: dict[int, tuple[float, str, str, str]] = {}  # id(node) → (distance, set, eval id, feature)
        if len(pos):
            dist, sets, ids = self.index.search(codes, self.cfg.feature, self.cfg.max_hamming_distance)
            for j, i in enumerate(pos):  # an image's distance: the smallest over its codes
                if dist[j] <= self.cfg.max_hamming_distance:
                    prev = hits.get(id(images[i]))
                    if prev is None or dist[j] < prev[0]:
                        hits[id(images[i])] = (int(dist[j]), sets[j], ids[j], self.cfg.feature)
        if self.embedder is not None:
            todo = [i for i, px in enumerate(decoded) if px is not None and id(images[i]) not in hits]
            if todo:
                sims, sets, ids = self.index.search_dense(self.embedder.embed([decoded[i] for i in todo]), self.embedder.name)
                for k, i in enumerate(todo):
                    if sims[k] >= self.cfg.min_cosine:
                        hits[id(images[i])] = (round(1.0 - float(sims[k]), 4), sets[k], ids[k], self.embedder.name)
        if not hits:
            yield doc
            return
        self.matched.inc(len(hits))
        for img in images:
            if id(img) in hits:
                d, s, e, f = hits[id(img)]
                yield beam.pvalue.TaggedOutput("matches", match_record(doc, img, s, e, d, f))
        if self.cfg.drop == "document":
            self.dropped_doc.inc()
            first = next(hits[id(img)] for img in images if id(img) in hits)
            yield beam.pvalue.TaggedOutput(
                "rejects",
                Reject.of(
                    STAGE,
                    "document",
                    doc.provenance,
                    url=doc.url,
                    detail=f"{len(hits)} image(s) match evaluation sets; first: {first[1]}/{first[2]} at distance {first[0]}",
                ),
            )
            return
        kept = []
        for node in doc.nodes:
            if isinstance(node, ImageNode) and id(node) in hits:
                d, s, e, _ = hits[id(node)]
                self.dropped_image.inc()
                yield beam.pvalue.TaggedOutput(
                    "rejects",
                    Reject.of(STAGE, "image", doc.provenance, url=node.url, detail=f"{s}/{e} at distance {d}; in {doc.url}"),
                )
                continue
            kept.append(node)
        doc.nodes = kept
        yield doc


class Decontaminate(beam.PTransform):
    """PCollection[Document] (images resolved: ``phash`` and/or ``data`` set) → tagged
    ``documents``, ``rejects`` (stage "decontaminate", reason "image" or "document") and
    ``matches`` (dicts: doc_url, doc_id, image_url, image_sha256, eval_set, eval_image_id,
    distance, feature). The index is loaded once per worker, in ``DoFn.setup``."""

    def __init__(self, index_path: str, cfg: DecontaminationConfig) -> None:
        super().__init__()
        self.index_path = index_path
        self.cfg = cfg

    def expand(self, docs: beam.PCollection) -> Any:
        return docs | "MatchEvalImages" >> beam.ParDo(_DecontaminateFn(self.index_path, self.cfg)).with_outputs(
            "rejects", "matches", main="documents"
        )
