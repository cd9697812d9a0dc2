"""build-m3w --fetch-images end to end: a crawl whose page references images it does not hold."""
from __future__ import annotations

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


def test_build_fetches_missing_images_politely_and_archives_them(tmp_path):
    server = Server()
    try:
        crawl = str(tmp_path / "crawl.warc.gz")
        write_crawl(crawl, server.base)
        cfg = yaml.safe_load((REPO / "tests" / "data" / "spine.yaml").read_text())
        cfg["fetch"] = {"allowed_networks": ["127.0.0.1/32"], "timeout_s": 2.0, "per_host_rate": None, "retries": 0}
        cfg_path = tmp_path / "m3w.yaml"
        cfg_path.write_text(yaml.safe_dump(cfg))
        out = str(tmp_path / "out")
        rc = build_m3w(["build", "--input", crawl, "--output", out, "--config", str(cfg_path), "--fetch-images",
                        "--direct_running_mode=in_memory"])
        assert rc == 0
    finally:
        server.close()

    samples = list(wds.WebDataset(sorted(glob.glob(os.path.join(out, "wds", "*.tar"))), shardshuffle=False))
    (sample,) = samples
    doc = json.loads(sample["json"])
    # stored as served: an upright RGB JPEG within the size limit is not re-encoded
    assert [v for k, v in sample.items() if not k.startswith("__") and k != "json"] == [IMAGE]
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
    fetch_rejects = sorted((r["reason"], r["url"]) for r in rejects if r["stage"] == "fetch")
    assert fetch_rejects == [
        ("robots_disallowed", server.base + "/private/boats.jpg"),
        ("x_robots_tag", server.base + "/noai.jpg"),
    ]
