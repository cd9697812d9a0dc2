"""Loading m3w shards into training batches: readers, sample layout, augmentation, determinism."""
from __future__ import annotations

import itertools

import numpy as np
import pytest

from model.data import (
    DataConfig,
    Drop,
    Loader,
    build_interleaved,
    chunk_document,
    iter_texts,
    list_shards,
    read_parquet_documents,
    read_wds_documents,
)
from model.tokenizer import byte_tokenizer, load_tokenizer, train_bpe
from schemas.arrow import merged_positions
from tests.model.conftest import make_documents

CFG = DataConfig(image_size=32, max_tokens=128, shuffle_buffer=8, workers=1, seed=3)


@pytest.fixture(scope="module")
def tok():
    return byte_tokenizer()


def test_wds_and_parquet_shards_read_back_the_same_documents(corpus):
    wds = {d["key"]: d for f in list_shards(corpus["wds"]) for d in read_wds_documents(f)}
    pq = {d["key"]: d for f in list_shards(corpus["parquet"]) for d in read_parquet_documents(f)}
    docs = {d.doc_id: d for d in make_documents()}
    assert set(wds) == set(pq) == set(docs)
    for k, doc in docs.items():
        # OBELICS's positions: the paragraphs between two images are one text.
        nodes = merged_positions(doc.nodes)
        assert wds[k]["texts"] == pq[k]["texts"] == [getattr(n, "text", None) for n in nodes]
        expected = [getattr(n, "data", None) for n in nodes]
        assert wds[k]["images"] == pq[k]["images"] == expected
        assert sum(b is not None for b in expected) == 3


def test_interleaved_sample_layout(corpus, tok):
    raw = next(read_wds_documents(list_shards(corpus["wds"])[0]))
    cfg = DataConfig(image_size=32, max_tokens=256, max_images=2)
    built = 0
    for seed in range(12):
        try:
            s = build_interleaved(raw, tok, cfg, np.random.default_rng(seed))
        except Drop as d:  # a start chunk with no text after its image
            assert d.reason == "all_labels_masked"
            continue
        built += 1
        ids = s["input_ids"]
        assert ids.shape == (256,) and s["images"].shape == (2, 1, 32, 32, 3)
        n_img = int((ids == tok.image_id).sum())
        assert 1 <= n_img <= cfg.max_images
        assert s["num_images"] == n_img
        # Exactly the images announced by <image> tokens are filled in.
        assert [bool(s["images"][i].any()) for i in range(2)] == [i < n_img for i in range(2)]
        assert ids[0] == tok.image_id
        # Every chunk before the cut is closed by <|endofchunk|> before the next <image>.
        pos = list(np.flatnonzero(ids == tok.image_id))
        for a, b in zip(pos, pos[1:]):
            assert ids[b - 1] == tok.eoc_id
        assert not s["loss_mask"][s["targets"] == tok.image_id].any()
        assert not s["loss_mask"][s["attention_mask"] == 0].any()
        np.testing.assert_array_equal(s["targets"][:-1][s["attention_mask"][1:] == 1], ids[1:][s["attention_mask"][1:] == 1])
    assert built >= 6


def test_image_index_augmentation_pairs_images_with_next_or_previous_text():
    texts = ["intro", None, "after A", None, "after B"]
    images = [None, b"A", None, b"B", None]
    assert chunk_document(texts, images, attend_next=False) == [(b"A", ["after A"]), (b"B", ["after B"])]
    assert chunk_document(texts, images, attend_next=True) == [(b"A", ["intro"]), (b"B", ["after A"])]


def test_p_next_and_leading_space_each_apply_to_about_half(corpus, tok):
    raw = next(read_wds_documents(list_shards(corpus["wds"])[0]))
    first_chunk_text = {}
    cfg = DataConfig(image_size=16, max_tokens=64, max_images=1)
    starts = {"space": 0, "nospace": 0}
    for seed in range(120):
        try:
            s = build_interleaved(raw, tok, cfg, np.random.default_rng(seed))
        except Drop:
            continue
        text = tok.decode(s["input_ids"][1 : int(s["attention_mask"].sum())])
        starts["space" if text.startswith(" ") else "nospace"] += 1
        first_chunk_text[text.strip()[:15]] = True
    assert 0.3 <= starts["space"] / (starts["space"] + starts["nospace"]) <= 0.7, starts
    assert len(first_chunk_text) >= 2  # the text before and the text after the first image


def test_documents_without_text_to_predict_are_dropped_and_counted(tmp_path, tok):
    from model.data import write_wds_shard
    from schemas.document import Document, ImageNode, Provenance, TextNode

    docs = make_documents(4)
    prov = Provenance("x.warc", 1, 1, "2024-01-01T00:00:00Z")
    photo = next(n.data for n in docs[0].nodes if isinstance(n, ImageNode))
    empty = Document(url="http://e.com/x", provenance=prov, nodes=[TextNode("title only"), ImageNode(url="http://e.com/a.jpg", data=photo)])
    write_wds_shard(str(tmp_path / "s.tar"), [empty] + docs)
    cfg = DataConfig(image_size=16, max_tokens=64, shuffle_buffer=0, workers=1, p_next=0.0)
    loader = Loader(list_shards(tmp_path), "interleaved", tok, batch_size=2, cfg=cfg)
    batch = next(iter(loader))
    assert loader.stats["dropped_all_labels_masked"] >= 1  # the page with no text after its image
    assert (batch["loss_mask"].sum(1) > 0).all()


def _take(loader, n):
    return list(itertools.islice(iter(loader), n))


def test_same_seed_same_samples_across_worker_counts_and_resume(corpus, tok):
    files = list_shards(corpus["wds"])
    one = _take(Loader(files, "interleaved", tok, 4, CFG), 5)
    three = _take(Loader(files, "interleaved", tok, 4, DataConfig(**{**CFG.__dict__, "workers": 3})), 5)
    for a, b in zip(one, three):
        for k in a:
            np.testing.assert_array_equal(a[k], b[k])
    other = _take(Loader(files, "interleaved", tok, 4, DataConfig(**{**CFG.__dict__, "seed": 4})), 1)
    assert not np.array_equal(other[0]["input_ids"], one[0]["input_ids"])
    # Resume from the position after batch 2: batches 3.. come out identical.
    first = Loader(files, "interleaved", tok, 4, CFG)
    _take(first, 2)
    resumed = _take(Loader(files, "interleaved", tok, 4, CFG, start=first.state()["position"]), 3)
    for a, b in zip(one[2:], resumed):
        np.testing.assert_array_equal(a["input_ids"], b["input_ids"])
        np.testing.assert_array_equal(a["images"], b["images"])


def test_hosts_read_disjoint_documents_that_cover_the_corpus(corpus):
    from model.data import raw_stream

    files = list_shards(corpus["wds"])
    n_docs = len(make_documents())
    keys = [set(d["key"] for d in itertools.islice(raw_stream(files, "interleaved", 5, h, 3), 8)) for h in range(3)]
    assert not (keys[0] & keys[1]) and not (keys[0] & keys[2]) and not (keys[1] & keys[2])
    assert len(keys[0] | keys[1] | keys[2]) == n_docs


def test_pairs_and_videos_batches(corpus, tok):
    cfg = DataConfig(image_size=24, max_tokens=48, frames=3, shuffle_buffer=4, workers=2)
    pairs = next(iter(Loader(list_shards(corpus["pairs"]), "pairs", tok, 3, cfg)))
    assert pairs["images"].shape == (3, 1, 1, 24, 24, 3) and pairs["images"].any()
    assert (pairs["input_ids"][:, 0] == tok.image_id).all()
    videos = next(iter(Loader(list_shards(corpus["videos"]), "videos", tok, 2, cfg)))
    assert videos["images"].shape == (2, 1, 3, 24, 24, 3)
    # Frames of one clip differ (they are different photos here), and share one crop/flip.
    assert not np.array_equal(videos["images"][0, 0, 0], videos["images"][0, 0, 1])


def test_bpe_trained_on_the_corpus_keeps_flamingo_tokens(corpus, tmp_path):
    files = list_shards(corpus["wds"])
    tok = train_bpe(iter_texts(files, "interleaved"), vocab_size=600)
    tok.save(tmp_path / "tokenizer.json")
    back = load_tokenizer(tmp_path / "tokenizer.json")
    assert back.vocab_size == tok.vocab_size <= 600
    assert {back.image_id, back.eoc_id, back.pad_id} <= set(range(4))
    text = " Gaming used to be so simple."
    assert back.decode(back.encode(text)) == text
    assert len(back.encode(text)) < len(text.encode()) / 1.5  # merges learned from our text


def test_tokenizer_command_trains_a_bpe_on_the_shards(corpus, tmp_path, capsys):
    from model.train import main

    out = tmp_path / "tok.json"
    assert main(["tokenizer", "--shards", str(corpus["wds"]), str(corpus["parquet"]), "--vocab-size", "500", "--out", str(out)]) == 0
    tok = load_tokenizer(out)
    assert tok.vocab_size <= 500 and tok.decode(tok.encode(" simple game")) == " simple game"
    assert "<image>" in capsys.readouterr().err


def test_shards_written_by_the_pipeline_load_into_batches(tmp_path, tok):
    """The contract with `build-m3w`: its own shard writers' output feeds the trainer."""
    from pipeline.shards import write_parquet, write_wds

    docs = make_documents(6)
    with open(tmp_path / "p.tar", "wb") as f:
        write_wds(f, docs)
    with open(tmp_path / "p.parquet", "wb") as f:
        write_parquet(f, docs)
    wds = {d["key"]: d for d in read_wds_documents(str(tmp_path / "p.tar"))}
    pq = {d["key"]: d for d in read_parquet_documents(str(tmp_path / "p.parquet"))}
    for doc in docs:
        nodes = merged_positions(doc.nodes)
        expected = [getattr(n, "data", None) for n in nodes]
        assert wds[doc.doc_id]["images"] == pq[doc.doc_id]["images"] == expected
        assert wds[doc.doc_id]["texts"] == pq[doc.doc_id]["texts"] == [getattr(n, "text", None) for n in nodes]
    cfg = DataConfig(image_size=16, max_tokens=64, shuffle_buffer=0, workers=1)
    for f in ("p.tar", "p.parquet"):
        batch = next(iter(Loader([str(tmp_path / f)], "interleaved", tok, 2, cfg)))
        assert batch["num_images"].min() >= 1 and batch["images"].any()


def test_a_corpus_folder_is_read_in_one_format(tmp_path):
    """build-m3w writes each document once per format; training on the folder takes one of them."""
    for rel in ("manifest.json", "wds/shard-00000-of-00001.tar", "mmc4/shard-00000-of-00001.tar", "parquet/shard-00000-of-00001.parquet"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"")
    assert list_shards(tmp_path) == [str(tmp_path / "wds" / "shard-00000-of-00001.tar")]
    (tmp_path / "manifest.json").unlink()  # a plain folder of shards: every data file in it
    assert len(list_shards(tmp_path)) == 3
