"""Fuzzing the reader (and extraction) with mutated copies of real WARCs: no crash, no hang, bounded memory.

Seeded and bounded: ``N_INPUTS`` mutated files built in memory from small real WARC/ARC files in
../shared/data/warc by bit flips, truncation, header garbage, giant Content-Length, a gzip bomb
behind Content-Encoding, and deeply nested or huge-attribute HTML. For each input:

* nothing but Page / ImageRecord / Reject comes out of ``iter_warc`` (no exception escapes);
* every Reject has a reason;
* every page and image of the original file that lies wholly before the first damaged byte still
  comes out, with the same content, and most of those wholly after the last flipped bit do too;
* each input finishes within ``PER_INPUT_SECONDS`` and the process stays under ``MAX_RSS_GROWTH``.

Pages that come out are also passed through ``pipeline.extract.extract_document``; only its own
``ExtractionError`` (a counted drop) may leave it.

``python -m tests.pipeline.test_warc_fuzz`` runs the same campaign and prints the figures as the
markdown table kept in docs/bench/fault-tolerance-fuzz.md.
"""
from __future__ import annotations

import collections
import gzip
import io
import random
import re
import time
import zlib
from dataclasses import dataclass, field

import psutil
import pytest

from pipeline.config import LimitsConfig
from pipeline.records import ImageRecord, Page, Reject
from pipeline.warc import iter_warc
from tests.conftest import shared_path

SEED = 20240601
N_INPUTS = 1000
PER_INPUT_SECONDS = 10.0
MAX_RSS_GROWTH = 500 << 20
EXTRACT_PAGES_PER_INPUT = 1  # extraction is the slow part of the campaign
EXTRACT_HOSTILE_PER_KIND = 3  # a deep or attribute-heavy page takes ~1 s to extract

SEED_FILES = [
    "warcio_test_data/example.warc.gz",
    "warcio_test_data/example.warc",
    "warcio_test_data/example-iana.org-chunked.warc",
    "warcio_test_data/example.arc.gz",
    "warcio_test_data/example.arc",
    "ipwb_samples/frogTest.warc",
    "ipwb_samples/5mementos.warc",
    "cc_whirlwind/whirlwind.warc.gz",
    "ukwa_webarchive_discovery/compression/transfer_compression_brotli.warc.gz",
    "ukwa_webarchive_discovery/compression/transfer_compression_gzip.warc.gz",
    "node_warc_tests/parseMe.warc.gz",
    "aut_test_resources/issue-493.warc",
    "jwarc_test_resources/cc.warc.gz",
    "resiliparse_tests/warcfile.warc.gz",
]


# ---------------------------------------------------------------------------------------------
# Hostile records


def warc_record(url: str, http_head: bytes, body: bytes, record_id: str) -> bytes:
    block = http_head + b"\r\n" + body
    head = (
        "WARC/1.0\r\nWARC-Type: response\r\n"
        f"WARC-Record-ID: <urn:uuid:{record_id}>\r\nWARC-Date: 2024-01-01T00:00:00Z\r\n"
        f"WARC-Target-URI: {url}\r\nContent-Type: application/http; msgtype=response\r\n"
        f"Content-Length: {len(block)}\r\n\r\n"
    ).encode()
    return head + block + b"\r\n\r\n"


_BOMB: bytes | None = None


def gzip_bomb() -> bytes:
    """About 200 KB of gzip that inflates to 200 MB of zeros."""
    global _BOMB
    if _BOMB is None:
        c = zlib.compressobj(9, zlib.DEFLATED, 31)
        zeros = b"\0" * (1 << 20)
        _BOMB = b"".join(c.compress(zeros) for _ in range(200)) + c.flush()
    return _BOMB


def hostile_records(rng: random.Random) -> list[tuple[str, bytes]]:
    html_head = b"HTTP/1.1 200 OK\r\nContent-Type: text/html; charset=utf-8\r\n"
    depth = rng.randint(2_000, 20_000)
    nested = b"<html><body>" + b"<div>" * depth + b"<p>deep text here for you</p>" + b"</div>" * depth + b"</body></html>"
    attr = b"<html><body><p>A paragraph of text.</p><img src='a.jpg' alt='" + b"A" * rng.randint(1_000_000, 4_000_000) + b"'></body></html>"
    attrs = b"<html><body><p " + b" ".join(b"a%d='x'" % i for i in range(rng.randint(2_000, 10_000))) + b">text</p></body></html>"
    return [
        ("gzip_bomb", warc_record("http://bomb.example/", html_head + b"Content-Encoding: gzip\r\n", gzip_bomb(), "b0")),
        ("deep_html", warc_record("http://deep.example/", html_head, nested, "d0")),
        ("huge_attribute", warc_record("http://attr.example/", html_head, attr, "a0")),
        ("many_attributes", warc_record("http://attrs.example/", html_head, attrs, "m0")),
        ("image_bomb", warc_record("http://img.example/x.png", b"HTTP/1.1 200 OK\r\nContent-Type: image/png\r\nContent-Encoding: gzip\r\n", gzip_bomb(), "i0")),
    ]


# ---------------------------------------------------------------------------------------------
# Mutations: each returns (mutated bytes, offset of the first damaged byte, offset of the last
# damaged byte when later offsets are unchanged, else None)


def _plain(data: bytes) -> bytes:
    return gzip.decompress(data) if data[:2] == b"\x1f\x8b" else data


def bit_flips(rng, data):
    out = bytearray(data)
    spots = sorted(rng.randrange(len(out)) for _ in range(rng.randint(1, 16)))
    for i in spots:
        out[i] ^= 1 << rng.randrange(8)
    return bytes(out), spots[0], spots[-1]


def truncation(rng, data):
    cut = rng.randrange(1, len(data))
    return data[:cut], cut, None


def header_garbage(rng, data):
    data = _plain(data)
    starts = [m.start() for m in re.finditer(rb"WARC/1\.[01]\r\n|filedesc://|\nhttp://", data)] or [0]
    at = rng.choice(starts) + rng.randint(0, 40)
    at = min(at, len(data))
    junk = bytes(rng.randrange(256) for _ in range(rng.randint(1, 200)))
    if rng.random() < 0.3:
        junk = b"WARC-Type: " + junk + b"\r\nContent-Length: -5\r\n"
    return data[:at] + junk + data[at:], at, None


def giant_content_length(rng, data):
    data = _plain(data)
    lengths = list(re.finditer(rb"Content-Length: *(\d+)", data, re.I))
    if not lengths:
        return truncation(rng, data)
    m = rng.choice(lengths)
    big = rng.choice([b"99999999999999", b"2147483648", b"18446744073709551616", b"-1", b"1e9", str(int(m.group(1)) * 1000).encode()])
    return data[: m.start(1)] + big + data[m.end(1) :], m.start(1), None


def hostile_append(rng, data, records):
    """A real file followed by hostile records: everything in the file must still come out."""
    name, rec = rng.choice(records)
    data = _plain(data)
    if data.startswith(b"WARC/1") and b"\r\n" in data[:20]:
        return data + rec, len(data), name
    return rec, 0, name  # ARC or LF-only seeds: the hostile record alone


MUTATIONS = {
    "bit_flips": bit_flips,
    "truncation": truncation,
    "header_garbage": header_garbage,
    "giant_content_length": giant_content_length,
}


# ---------------------------------------------------------------------------------------------
# The campaign


@dataclass
class FuzzReport:
    inputs: int = 0
    by_mutation: collections.Counter = field(default_factory=collections.Counter)
    crashes: list[str] = field(default_factory=list)
    extract_crashes: list[str] = field(default_factory=list)
    lost_valid_records: list[str] = field(default_factory=list)
    rejects: collections.Counter = field(default_factory=collections.Counter)
    extract_drops: collections.Counter = field(default_factory=collections.Counter)
    after_damage_expected: int = 0  # pages/images wholly after the last flipped bit
    after_damage_recovered: int = 0
    pages: int = 0
    images: int = 0
    pages_extracted: int = 0
    slowest_s: float = 0.0
    slowest_what: str = ""
    rss_start: int = 0
    rss_peak: int = 0
    seconds: float = 0.0


def _items(data: bytes, name: str, limits: LimitsConfig):
    return list(iter_warc(name, limits, fileobj=io.BytesIO(data), filename=name))


def _content_key(item):
    return (type(item).__name__, item.url, item.provenance.warc_record_offset, item.html if isinstance(item, Page) else item.data)


def run_campaign(
    n_inputs: int = N_INPUTS, seed: int = SEED, limits: LimitsConfig = LimitsConfig(), extract: bool = True
) -> FuzzReport:
    extract_document = None
    ExtractionError = ()
    if extract:
        try:
            from pipeline.extract import ExtractionError, extract_document
        except ImportError:  # extraction not built: fuzz the reader alone
            pass
    hostile_extracted: collections.Counter = collections.Counter()
    rng = random.Random(seed)
    proc = psutil.Process()
    seeds = {}
    for rel in SEED_FILES:
        data = shared_path("warc", *rel.split("/")).read_bytes()
        reference = [i for i in _items(data, rel, limits) if not isinstance(i, Reject)]
        plain = _plain(data)
        seeds[rel] = (data, reference, plain, [i for i in _items(plain, rel, limits) if not isinstance(i, Reject)])
    records = hostile_records(rng)
    report = FuzzReport(rss_start=proc.memory_info().rss)
    report.rss_peak = report.rss_start
    started = time.perf_counter()
    names = list(MUTATIONS) + ["hostile_record"]
    for i in range(n_inputs):
        rel = rng.choice(SEED_FILES)
        data, reference, plain, plain_reference = seeds[rel]
        what = names[i % len(names)]
        if what == "hostile_record":
            mutated, damage_at, what = hostile_append(rng, data, records)
            damage_end = None
            ref = plain_reference
        else:
            mutated, damage_at, damage_end = MUTATIONS[what](rng, data)
            ref = reference if mutated[:2] == data[:2] and what in ("bit_flips", "truncation") else plain_reference
        report.inputs += 1
        report.by_mutation[what] += 1
        label = f"#{i} {what} of {rel}"
        t = time.perf_counter()
        try:
            items = _items(mutated, rel, limits)
        except BaseException as e:  # noqa: BLE001 — anything at all escaping is the failure we look for
            report.crashes.append(f"{label}: {type(e).__name__}: {str(e)[:200]}")
            continue
        took = time.perf_counter() - t
        for item in items:
            if isinstance(item, Reject):
                report.rejects[item.reason or "<no reason>"] += 1
            elif isinstance(item, Page):
                report.pages += 1
            elif isinstance(item, ImageRecord):
                report.images += 1
            else:
                report.crashes.append(f"{label}: unexpected item {type(item).__name__}")
        got = {_content_key(x) for x in items if not isinstance(x, Reject)}
        for r in ref:
            p = r.provenance
            if p.warc_record_offset + p.warc_record_length <= damage_at and _content_key(r) not in got:
                report.lost_valid_records.append(f"{label}: {r.url} at {p.warc_record_offset} (damage at {damage_at})")
            elif damage_end is not None and p.warc_record_offset > damage_end:
                report.after_damage_expected += 1
                report.after_damage_recovered += _content_key(r) in got
        if extract_document is not None:
            pages = [x for x in items if isinstance(x, Page)]
            hostile = [x for x in pages if x.url.endswith(".example/") and hostile_extracted[x.url] < EXTRACT_HOSTILE_PER_KIND]
            hostile_extracted.update(x.url for x in hostile)
            for page in hostile + [x for x in pages if x not in hostile][:EXTRACT_PAGES_PER_INPUT]:
                t2 = time.perf_counter()
                try:
                    extract_document(page, limits=limits)
                    report.pages_extracted += 1
                except ExtractionError as e:
                    report.extract_drops[e.reason] += 1
                except BaseException as e:  # noqa: BLE001
                    report.extract_crashes.append(f"{label} {page.url}: {type(e).__name__}: {str(e)[:200]}")
                took += time.perf_counter() - t2
        if took > report.slowest_s:
            report.slowest_s, report.slowest_what = took, label
        report.rss_peak = max(report.rss_peak, proc.memory_info().rss)
    report.seconds = time.perf_counter() - started
    return report


def report_markdown(r: FuzzReport) -> str:
    lines = [
        f"- inputs tried: **{r.inputs}** (seed {SEED}), by mutation: "
        + ", ".join(f"{k} {v}" for k, v in sorted(r.by_mutation.items())),
        f"- crashes (exceptions escaping `iter_warc`): **{len(r.crashes)}**; escaping `extract_document`: **{len(r.extract_crashes)}**",
        f"- valid records before the damage that were lost: **{len(r.lost_valid_records)}**",
        f"- pages and images lying wholly after the last flipped bit that still came out (resynchronisation): "
        f"{r.after_damage_recovered} of {r.after_damage_expected}",
        f"- pages out: {r.pages}, images out: {r.images}, pages extracted: {r.pages_extracted}",
        f"- slowest input: {r.slowest_s:.2f} s ({r.slowest_what}); whole campaign {r.seconds:.1f} s",
        f"- peak RSS: {r.rss_peak / 2**20:.0f} MiB (start {r.rss_start / 2**20:.0f} MiB, growth {(r.rss_peak - r.rss_start) / 2**20:.0f} MiB)",
        "",
        "| reader rejection reason | count |",
        "| --- | ---: |",
    ]
    lines += [f"| {k} | {v} |" for k, v in r.rejects.most_common()]
    if r.extract_drops:
        lines += ["", "| extraction drop reason | count |", "| --- | ---: |"]
        lines += [f"| {k} | {v} |" for k, v in r.extract_drops.most_common()]
    return "\n".join(lines)


@pytest.mark.timeout(600)
def test_fuzzed_warcs_never_crash_hang_or_lose_valid_records():
    r = run_campaign()
    assert r.inputs >= 1000
    assert not r.crashes, r.crashes[:5]
    assert not r.extract_crashes, r.extract_crashes[:5]
    assert not r.lost_valid_records, r.lost_valid_records[:5]
    assert "<no reason>" not in r.rejects
    # records after a damaged stretch are found again (resynchronisation); a flipped length field
    # can still swallow its neighbours, so this is a floor, not all of them
    assert r.after_damage_recovered >= 0.8 * r.after_damage_expected
    assert r.slowest_s < PER_INPUT_SECONDS, r.slowest_what
    assert r.rss_peak - r.rss_start < MAX_RSS_GROWTH
    # the bombs and giant lengths were seen and counted, not decoded
    assert r.rejects["html_too_large"] + r.rejects["image_too_large"] > 0


if __name__ == "__main__":
    print(report_markdown(run_campaign()))
