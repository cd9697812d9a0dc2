"""build-m3w --fetch-images end to end: a crawl whose page references images it does not hold."""
from __future__ import annotations

import collections
import glob
import gzip
import io
import json
import os

import webdataset as wds
import yaml
from warcio.statusandheaders import StatusAndHeaders
from warcio.warcwriter import WARCWriter

from pipeline.cli import main as build_m3w
from pipeline.fetch import ARCHIVE_DIR, ARCHIVE_NAME
from schemas.samples import unpack_images
from tests.conftest import REPO
from tests.pipeline.test_fetch import IMAGE, Server

PAGE_URL = "http://pages.example/article.html"


def write_crawl(path: str, image_base: str) -> None:
    html = f"""<!doctype html><html><head><title>Harbour</title></head><body><article>
<p>The harbour at dawn, photographed from the old lighthouse on the northern pier.</p>
<img src="{image_base}/img/harbour.jpg" alt="harbour">
<p>Boats leaving for the morning catch while the fog lifts over the water.</p>
<img src="{image_base}/private/boats.jpg" alt="boats">
<img src="{image_base}/noai.jpg" alt="nets">
</article></body></html>""".encode()
    with open(path, "wb") as f:
        w = WARCWriter(f, gzip=True)
        headers = StatusAndHeaders("200 OK", [("Content-Type", "text/html; charset=utf-8")], protocol="HTTP/1.1")
        w.write_record(w.create_warc_record(PAGE_URL, "response", payload=io.BytesIO(html), http_headers=headers))


def spine_config(tmp_path, **sections) -> str:
    """tests/data/spine.yaml (keep everything) fetching from 127.0.0.1 fast, with ``sections``
    merged in; the path of the written file."""
    cfg = yaml.safe_load((REPO / "tests" / "data" / "spine.yaml").read_text())
    cfg["fetch"] = {"allowed_networks": ["127.0.0.1/32"], "timeout_s": 2.0, "per_host_rate": None, "retries": 0}
    for name, values in sections.items():
        cfg.setdefault(name, {}).update(values)
    path = tmp_path / "m3w.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


def build_fetching(crawl: str, out: str, cfg_path: str) -> int:
    return build_m3w(["build", "--input", crawl, "--output", out, "--config", cfg_path, "--fetch-images",
                      "--direct_running_mode=in_memory"])


def test_build_fetches_missing_images_politely_and_archives_them(tmp_path):
    server = Server()
    try:
        crawl = str(tmp_path / "crawl.warc.gz")
        write_crawl(crawl, server.base)
        out = str(tmp_path / "out")
        assert build_fetching(crawl, out, spine_config(tmp_path)) == 0
    finally:
        server.close()

    samples = list(wds.WebDataset(sorted(glob.glob(os.path.join(out, "wds", "*.tar"))), shardshuffle=False))
    (sample,) = samples
    doc = json.loads(sample["json"])
    # stored as served: an upright RGB JPEG within the size limit is not re-encoded
    assert [b for b in unpack_images(sample, len(doc["nodes"])) if b is not None] == [IMAGE]
    images = [n for n in doc["nodes"] if n["type"] == "image"]
    assert [(n["url"], n["source"]) for n in images] == [(server.base + "/img/harbour.jpg", "fetch")]
    assert server.hits["/private/boats.jpg"] == 0  # robots.txt said no: never requested
    archived = glob.glob(os.path.join(out, "fetched", "*.warc.gz"))
    assert len(archived) == 1 and not glob.glob(os.path.join(out, "fetched", "*.tmp-*"))
    rejects = []
    for path in glob.glob(os.path.join(out, "**", "rejects*"), recursive=True):
        if os.path.isfile(path):
            opener = gzip.open if path.endswith(".gz") else open
            with opener(path, "rt") as f:
                rejects += [json.loads(line) for line in f if line.strip()]
    fetch_rejects = sorted((r["reason"], r["url"], r["warc_filename"], r["warc_record_offset"]) for r in rejects if r["stage"] == "fetch")
    assert fetch_rejects == [  # located at the page that cites them
        ("robots_disallowed", server.base + "/private/boats.jpg", crawl, 0),
        ("x_robots_tag", server.base + "/noai.jpg", crawl, 0),
    ]


def _read_rejects(out: str) -> list[dict]:
    rows = []
    for path in glob.glob(os.path.join(out, "rejects", "*")):
        opener = gzip.open if path.endswith(".gz") else open
        with opener(path, "rt") as f:
            rows += [json.loads(line) for line in f if line.strip()]
    return rows


def test_a_page_with_5000_images_costs_only_the_requests_it_can_keep(tmp_path):
    """The request flood: 5,000 <img> on one page, all missing from the crawl. Only the first
    max_images_per_doc + candidate_margin that the image filters could keep are requested (DOM
    order), each distinct URL once; everything else is a counted reject with the page's provenance."""
    server = Server()
    base = server.base
    tiny = "".join(f'<img src="{base}/img/tiny{i}.jpg" width="20" height="20">' for i in range(5))  # 40 px at 2x < 64
    wide = "".join(f'<img src="{base}/img/wide{i}.jpg" width="900" height="100">' for i in range(3))  # 9:1 > 3
    thumbs = '<img src="{0}/thumbs/a.jpg">'.format(base)  # images.url_keywords
    flood = "".join(f'<img src="{base}/photo/{i}.jpg" width="300" height="200">' + (f'<img src="{base}/photo/0.jpg">' if i % 250 == 0 else "")
                    for i in range(5000))
    text = "<p>The harbour at dawn, photographed from the old lighthouse on the northern pier.</p>"
    pages = {
        "http://pages.example/flood.html": text + tiny + wide + thumbs + flood,
        "http://pages.example/other.html": text + f'<img src="{base}/photo/0.jpg"><img src="{base}/photo/4999.jpg">',
    }
    crawl = str(tmp_path / "crawl.warc.gz")
    offsets = {}
    with open(crawl, "wb") as f:
        w = WARCWriter(f, gzip=True)
        for url, body in pages.items():
            html = f"<!doctype html><html><head><title>t</title></head><body><article>{body}</article></body></html>".encode()
            headers = StatusAndHeaders("200 OK", [("Content-Type", "text/html; charset=utf-8")], protocol="HTTP/1.1")
            offsets[url] = f.tell()
            w.write_record(w.create_warc_record(url, "response", payload=io.BytesIO(html), http_headers=headers))
    cfg_path = spine_config(tmp_path, images=dict(min_side=64, max_aspect_ratio=3.0, url_keywords=["thumbs"], max_images_per_doc=30),
                            extract={"main_content": False}, fetch={"timeout_s": 5.0, "candidate_margin": 10})
    out = str(tmp_path / "out")
    try:
        assert build_fetching(crawl, out, cfg_path) == 0
    finally:
        server.close()

    requested = {p: n for p, n in server.hits.items() if p != "/robots.txt"}
    # flood.html's first 40 candidates that may be kept, plus other.html's 4999 (within its own window)
    assert requested == {f"/photo/{i}.jpg": 1 for i in [*range(40), 4999]}
    docs = {}
    for sample in wds.WebDataset(sorted(glob.glob(os.path.join(out, "wds", "*.tar"))), shardshuffle=False):
        doc = json.loads(sample["json"])
        docs[doc["url"]] = [n["url"] for n in doc["nodes"] if n["type"] == "image"]
    flood_images = docs["http://pages.example/flood.html"]
    assert flood_images == [f"{base}/photo/{i}.jpg" for i in range(30)]  # the image cap, filled in DOM order
    assert docs["http://pages.example/other.html"] == [f"{base}/photo/0.jpg", f"{base}/photo/4999.jpg"]

    skipped = collections.Counter(r["reason"] for r in _read_rejects(out) if r["stage"] == "fetch")
    assert skipped == {"skipped_over_cap": 5000 - 41, "skipped_declared_size": 5, "skipped_declared_aspect": 3,
                       "skipped_url_pattern": 1}
    flood_rejects = [r for r in _read_rejects(out) if r["reason"] == "skipped_over_cap"]
    assert {(r["warc_filename"], r["warc_record_offset"]) for r in flood_rejects} == {(crawl, offsets["http://pages.example/flood.html"])}
    with open(os.path.join(out, "report.json")) as f:
        report = json.load(f)
    assert report["counters"]["fetch.skipped_over_cap"] == 5000 - 41
    assert report["dropped"]["fetch"]["skipped_over_cap"] == 5000 - 41  # listed with the drops in the funnel


def test_a_rerun_leaves_exactly_its_own_archive(tmp_path):
    """fetched/ after a rerun into the same output holds the new run's archive only (plus any
    file of another name, which m3w never deletes)."""
    server = Server()
    try:
        crawl = str(tmp_path / "crawl.warc.gz")
        write_crawl(crawl, server.base)
        cfg_path = spine_config(tmp_path)
        out = str(tmp_path / "out")
        archive = os.path.join(out, ARCHIVE_DIR)
        names = []
        for _ in range(2):
            assert build_fetching(crawl, out, cfg_path) == 0
            names.append(sorted(os.listdir(archive)))
            with open(os.path.join(archive, "notes.txt"), "w") as f:
                f.write("mine")
    finally:
        server.close()
    first, second = names
    assert len(first) == 1 and ARCHIVE_NAME.match(first[0])
    assert [n for n in second if n != "notes.txt"] != first and len(second) == 2 and "notes.txt" in second
    assert server.hits["/img/harbour.jpg"] == 2  # fetched again by the rerun: its archive is the new one
