"""``build-m3w explain`` on real pages: every filter's value, threshold and verdict, and the same
verdict as the pipeline's filter chain."""
from __future__ import annotations

import gzip
import json

import pytest

from pipeline import explain
from pipeline import filters as F
from pipeline.config import Config, load_config
from pipeline.extract import ExtractionError, extract_document
from pipeline.records import Page
from pipeline.warc import iter_warc
from schemas.document import Provenance, to_json
from tests.conftest import shared_path

HEAPQ = "http://127.0.0.1:8765/python3.11/html/library/heapq.html"
APT_GET_FR = "http://127.0.0.1:8765/debian-handbook/html/fr-FR/sect.apt-get.html"
ARTICLE = "14cc2a0ca59c62a8c9f205a171e9ccf4ef4cf69b0c642f51c8c65c051b39024f"  # sciencealert.com


def _pydocs():
    return str(shared_path("warc", "local_wget_crawls", "pydocs.warc.gz"))


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    rc = explain.main(list(argv))
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def test_json_report_for_a_warc_page(capsys):
    rc, out, _ = _run(capsys, "--input", _pydocs(), "--url", HEAPQ, "--json")
    assert rc == 0
    (report,) = [json.loads(line) for line in out.splitlines()]
    assert report["url"] == HEAPQ and report["verdict"] == "kept" and report["reason"] is None
    assert report["config"] == {"preset": "m3w", "file": None}
    assert report["language"]["detected"] == "en" and report["language"]["pass"]
    text_nodes = [n for n in report["nodes"] if n["type"] == "text"]
    # m3w keeps a function's signature line: it is a heading of the page, which Gopher judges whole.
    first = next(n for n in text_nodes if n["text"].startswith("heapq.heappush("))
    assert first["verdict"] == "kept"
    doc_filters = [c["filter"] for c in report["document"]["checks"]]
    assert "gopher_dup_10gram_char_frac" in doc_filters and "doc_max_words" in doc_filters
    assert all(c["pass"] and c["source"] == "preset m3w" for c in report["document"]["checks"])


def test_obelics_preset_judges_paragraphs_and_names_its_thresholds_source(capsys):
    rc, out, _ = _run(capsys, "--input", _pydocs(), "--url", HEAPQ, "--preset", "obelics", "--json")
    assert rc == 0
    (report,) = [json.loads(line) for line in out.splitlines()]
    assert report["config"] == {"preset": "obelics", "file": None}
    text_nodes = [n for n in report["nodes"] if n["type"] == "text"]
    # OBELICS: the signature line is too short a paragraph.
    first = next(n for n in text_nodes if n["text"].startswith("heapq.heappush("))
    assert first["verdict"] == "dropped" and first["reason"] == "node_min_words"
    words = next(c for c in first["checks"] if c["filter"] == "node_min_words")
    assert words == {"filter": "node_min_words", "value": 2, "bound": "min", "threshold": 4, "pass": False, "source": "preset obelics"}
    doc_filters = [c["filter"] for c in report["document"]["checks"]]
    assert "doc_min_stopword_ratio" in doc_filters and not any(f.startswith("gopher_") for f in doc_filters)


def test_text_report_names_every_filter_and_the_verdict(capsys):
    rc, out, _ = _run(capsys, "--input", str(shared_path("warc", "local_wget_crawls", "handbook-fr-de.warc.gz")), "--url", APT_GET_FR)
    assert rc == 0
    assert out.splitlines()[1].startswith("verdict: DROPPED by language")
    for name in [c.name for c in F.node_checks(Config().text_filters) + F.doc_checks(Config().text_filters)]:
        assert name in out
    assert "min 50" in out and "max 100000" in out  # thresholds printed beside values
    assert "config: preset m3w" in out and "preset m3w" in out.splitlines()[-3]  # and where each came from


@pytest.mark.parametrize("preset", ["m3w", "obelics"])
def test_explain_agrees_with_the_pipeline_on_real_pages(preset):
    cfg = load_config(preset=preset)
    pages = [r for r in iter_warc(str(shared_path("warc", "local_wget_crawls", "handbook-fr-de.warc.gz"))) if isinstance(r, Page)]
    checked = 0
    for page in pages[::3]:
        try:
            doc = extract_document(page)
        except ExtractionError:
            continue
        kept, rejects = F.filter_document(doc, cfg)
        report = explain.explain_document(doc, cfg)
        assert report["verdict"] == ("kept" if kept else "dropped"), doc.url
        if kept is None:
            assert (report["reason"], report["detail"]) == (rejects[-1].reason, rejects[-1].detail)
        else:
            dropped = {n["index"] for n in report["nodes"] if n["verdict"] == "dropped"}
            assert dropped == {int(r.detail.rsplit("node ", 1)[1].rstrip(")")) for r in rejects}
        checked += 1
    assert checked >= 80


def _article_doc():
    root = shared_path("extraction", "article_benchmark")
    url = json.loads((root / "ground-truth.json").read_text())[ARTICLE]["url"]
    path = root / "html" / f"{ARTICLE}.html.gz"
    return url, path


def test_html_input_with_url(capsys):
    url, path = _article_doc()
    rc, out, _ = _run(capsys, "--input", str(path), "--url", url, "--json")
    assert rc == 0
    report = json.loads(out)
    assert report["url"] == url and report["verdict"] == "kept"


def test_jsonl_from_extract_accepted(tmp_path, capsys):
    url, path = _article_doc()
    html = gzip.decompress(path.read_bytes()).decode("utf-8", "replace")
    doc = extract_document(Page(url, Provenance(str(path), 0, 1, ""), html))
    lines = tmp_path / "docs.jsonl"
    lines.write_text(json.dumps(to_json(doc)) + "\n")
    rc, out, _ = _run(capsys, "--input", str(lines), "--json")
    assert rc == 0 and json.loads(out)["doc_id"] == doc.doc_id


def test_config_file_changes_thresholds(tmp_path, capsys):
    cfg = tmp_path / "strict.yaml"
    cfg.write_text("version: 1\ntext_filters:\n  doc_max_words: 100\n")
    rc, out, _ = _run(capsys, "--input", _pydocs(), "--url", HEAPQ, "--config", str(cfg), "--json")
    assert rc == 0
    report = json.loads(out)
    assert report["verdict"] == "dropped" and report["reason"] == "doc_max_words"
    sources = {c["filter"]: c["source"] for c in report["document"]["checks"]}
    assert sources["doc_max_words"] == str(cfg) and sources["doc_min_words"] == "preset m3w"
    assert report["config"] == {"preset": "m3w", "file": str(cfg)}


@pytest.mark.parametrize(
    "args, message",
    [
        (["--input", "/no/such/file.warc.gz"], "not found"),
        (["--url", "http://example.invalid/"], "no document with URL"),
        (["--config", "/no/such/config.yaml"], "config file"),
    ],
)
def test_user_errors_are_one_line_with_status_2(capsys, args, message):
    argv = args if args[0] == "--input" else ["--input", _pydocs(), *args]
    rc, out, err = _run(capsys, *argv)
    assert rc == 2 and message in err and len(err.strip().splitlines()) == 1


def test_build_m3w_dispatches_explain(capsys):
    from pipeline.cli import main

    assert main(["explain", "--input", _pydocs(), "--url", HEAPQ]) == 0
    assert "verdict: KEPT" in capsys.readouterr().out
