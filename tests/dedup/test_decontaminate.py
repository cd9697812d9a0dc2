"""Decontamination on real photos: planted evaluation images are removed, and nothing else."""
from __future__ import annotations

import copy
import io
import json

import apache_beam as beam
import numpy as np
import pytest
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to
from PIL import Image, ImageOps

from dedup import phash
from dedup.decontaminate import Decontaminate
from dedup.eval_index import EvalIndex, ThumbnailEmbedder, main
from pipeline.config import DecontaminationConfig
from pipeline.images import process_image
from schemas.document import Document, ImageNode, Provenance, TextNode
from tests.conftest import shared_path

EVAL = ["astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg"]
OTHER_SKIMAGE = ["camera.png", "horse.png", "motorcycle_left.png", "coins.png", "moon.png", "hubble_deep_field.jpg"]


def _jpeg(img: Image.Image, quality: int = 95) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def _crawled(url: str, img: Image.Image) -> ImageNode:
    """An image as the build resolves it: through the real image stage."""
    out = process_image(_jpeg(img), url)
    return ImageNode(url=url, sha256=out.sha256, width=out.width, height=out.height, format=out.format,
                     phash=out.phash, data=out.data)


@pytest.fixture(scope="module")
def index_path(tmp_path_factory) -> str:
    root = shared_path("images", "skimage_data_photos")
    folder = tmp_path_factory.mktemp("evalset")
    for name in EVAL:  # an evaluation set on disk, as a user would have it
        Image.open(root / name).convert("RGB").save(folder / (name.rsplit(".", 1)[0] + ".png"))
    path = str(tmp_path_factory.mktemp("index") / "eval.npz")
    assert main(["--images", str(folder), "--name", "skimage-eval", "--output", path, "--variants", "crops", "--variants", "trim"]) == 0
    return path


@pytest.fixture(scope="module")
def planted_docs() -> tuple[list[Document], set[str]]:
    sk = shared_path("images", "skimage_data_photos")
    ukb = shared_path("images", "imagededup_tests", "base_images")
    planted = {
        "astronaut-small": Image.open(sk / "astronaut.png").convert("RGB").resize((256, 256)),
        "chelsea-letterbox": ImageOps.pad(Image.open(sk / "chelsea.png").convert("RGB"), (640, 360), color=(0, 0, 0)),
        "coffee-q30": Image.open(io.BytesIO(_jpeg(Image.open(sk / "coffee.png").convert("RGB"), 30))).convert("RGB"),
        "rocket-crop": (lambda im: im.crop((20, 15, im.width - 10, im.height - 20)))(Image.open(sk / "rocket.jpg").convert("RGB")),
    }
    clean = {name: Image.open(sk / name).convert("RGB") for name in OTHER_SKIMAGE}
    clean.update({p.name: Image.open(p).convert("RGB") for p in sorted(ukb.glob("*.jpg"))})
    docs, planted_urls = [], set()
    names = sorted(clean)
    for i, (pname, img) in enumerate(sorted(planted.items())):
        nodes = [TextNode(f"A page about picture {i}."), _crawled(f"https://site{i}.example/{pname}.jpg", img)]
        for other in names[3 * i : 3 * i + 3]:
            nodes.append(_crawled(f"https://site{i}.example/{other}", clean[other]))
        planted_urls.add(f"https://site{i}.example/{pname}.jpg")
        docs.append(Document(url=f"https://site{i}.example/", provenance=Provenance("c.warc.gz", i, 1, "2024-01-01T00:00:00Z"), nodes=nodes))
    rest = names[12:]
    docs.append(
        Document(
            url="https://clean.example/",
            provenance=Provenance("c.warc.gz", 99, 1, "2024-01-01T00:00:00Z"),
            nodes=[TextNode("No evaluation image here.")] + [_crawled(f"https://clean.example/{n}", clean[n]) for n in rest],
        )
    )
    return docs, planted_urls


def test_planted_eval_images_are_removed_and_nothing_else(index_path, planted_docs):
    docs, planted = planted_docs
    all_images = {n.url for d in docs for n in d.images}
    cfg = DecontaminationConfig(index=index_path)
    with TestPipeline() as p:
        out = p | beam.Create(docs) | Decontaminate(index_path, cfg)
        assert_that(
            out.documents | "KeptImages" >> beam.FlatMap(lambda d: [n.url for n in d.images]),
            equal_to(sorted(all_images - planted)),
            label="Kept",
        )
        assert_that(
            out.matches | "Matched" >> beam.Map(lambda m: (m["image_url"], m["eval_set"], m["eval_image_id"])),
            equal_to(
                [
                    ("https://site0.example/astronaut-small.jpg", "skimage-eval", "astronaut.png"),
                    ("https://site1.example/chelsea-letterbox.jpg", "skimage-eval", "chelsea.png"),
                    ("https://site2.example/coffee-q30.jpg", "skimage-eval", "coffee.png"),
                    ("https://site3.example/rocket-crop.jpg", "skimage-eval", "rocket.png"),
                ]
            ),
            label="Report",
        )
        assert_that(
            out.rejects | "Rejects" >> beam.Map(lambda r: (r.stage, r.reason, r.url)),
            equal_to([("decontaminate", "image", u) for u in sorted(planted)]),
            label="Rejects",
        )


def test_document_mode_drops_the_whole_page(index_path, planted_docs):
    from dedup.decontaminate import _DecontaminateFn

    docs, _ = planted_docs
    fn = _DecontaminateFn(index_path, DecontaminationConfig(index=index_path, drop="document"))
    fn.setup()
    kept, rejects, matches = [], [], []
    for doc in docs:
        for out in fn.process(copy.deepcopy(doc)):
            if isinstance(out, beam.pvalue.TaggedOutput):
                (rejects if out.tag == "rejects" else matches).append(out.value)
            else:
                kept.append(out)
    assert [d.url for d in kept] == ["https://clean.example/"]
    assert [(r.reason, r.url) for r in rejects] == [("document", f"https://site{i}.example/") for i in range(4)]
    assert len(matches) == 4


def test_index_holds_several_sets_and_round_trips(index_path, tmp_path):
    ukb = shared_path("images", "imagededup_tests", "base_images")
    path = str(tmp_path / "two.npz")
    with open(index_path, "rb") as f:
        open(path, "wb").write(f.read())
    manifest = tmp_path / "ukbench.jsonl"
    manifest.write_text("\n".join(json.dumps({"id": p.stem, "path": str(p)}) for p in sorted(ukb.glob("*.jpg"))[:3]))
    assert main(["--images", str(manifest), "--name", "ukbench", "--output", path, "--append", "--variants", "crops", "--variants", "trim"]) == 0
    assert main(["--images", str(manifest), "--name", "ukbench", "--output", path, "--append", "--variants", "crops", "--variants", "trim"]) == 2
    index = EvalIndex.load(path)
    assert index.set_sizes() == {"skimage-eval": 4, "ukbench": 3}
    first = sorted(ukb.glob("*.jpg"))[0]
    code = phash.phash64(phash.decode_rgb(first.read_bytes()))
    dist, sets, ids = index.search(code[None, :])
    assert (int(dist[0]), sets[0], ids[0]) == (0, "ukbench", first.stem)
    dist, sets, ids = index.search([str(phash.imagehash.phash(Image.open(first).convert("RGB")))])
    assert sets == ["ukbench"]


def test_dense_embedder_finds_the_same_photo_by_cosine():
    sk = shared_path("images", "skimage_data_photos")
    imgs = [(n, Image.open(sk / n).convert("RGB")) for n in EVAL]
    index = EvalIndex()
    emb = ThumbnailEmbedder()
    index.add_images(iter(imgs), "skimage", ["phash64"], [], emb)
    again = EvalIndex.from_bytes(index.to_bytes())
    q = emb.embed([imgs[1][1].resize((200, 150))])
    sim, sets, ids = again.search_dense(q, emb.name)
    assert ids == ["chelsea.png"] and sim[0] > 0.95
    assert np.isclose(np.linalg.norm(q), 1.0)


def test_dense_embedder_path_matches_what_hashes_miss(tmp_path, planted_docs):
    from dedup.decontaminate import _DecontaminateFn

    sk = shared_path("images", "skimage_data_photos")
    folder = tmp_path / "evalset"
    folder.mkdir()
    for name in EVAL:
        Image.open(sk / name).convert("RGB").save(folder / (name.rsplit(".", 1)[0] + ".png"))
    path = str(tmp_path / "dense.npz")
    assert main(["--images", str(folder), "--name", "skimage-eval", "--output", path, "--embedder", "thumbnail16"]) == 0
    # Hash matching off (no distance is negative): every match comes from the embedder.
    cfg = DecontaminationConfig(index=path, max_hamming_distance=-1, embedder="thumbnail16", min_cosine=0.95)
    fn = _DecontaminateFn(path, cfg)
    fn.setup()
    docs, _ = planted_docs
    matches = []
    for doc in docs:
        for out in fn.process(copy.deepcopy(doc)):
            if isinstance(out, beam.pvalue.TaggedOutput) and out.tag == "matches":
                matches.append(out.value)
    found = {(m["image_url"].rsplit("/", 1)[-1], m["eval_image_id"], m["feature"]) for m in matches}
    # Resized and recompressed copies keep their thumbnail; nothing unrelated comes close.
    assert ("astronaut-small.jpg", "astronaut.png", "thumbnail16") in found
    assert ("coffee-q30.jpg", "coffee.png", "thumbnail16") in found
    assert all(name.split("-")[0] == eval_id.split(".")[0] for name, eval_id, _ in found)
