"""The funnel report: what was kept and why the rest was dropped, built from Beam metrics."""
from __future__ import annotations

import json
from typing import Any

from apache_beam.metrics.metric import MetricsFilter

# Funnel rows, in data order: (label, counter name). Counters absent from a run read 0.
FUNNEL = [
    ("WARC records read", "read.records"),
    ("HTML pages", "read.html_pages"),
    ("image records in the crawl", "read.images"),
    ("pages after URL dedup", "extract.pages"),
    ("documents extracted", "extract.documents"),
    ("documents after text filters", "text_filter.kept"),
    ("image URLs referenced", "join.images_referenced"),
    ("referenced images found in the crawl", "join.images_in_crawl"),
    ("referenced images missing from the crawl", "join.images_missing"),
    ("images fetched", "fetch.fetched"),
    ("images kept after image filters", "image.kept"),
    ("documents with images attached", "join.documents"),
    ("documents written", "output.documents"),
    ("images written", "output.images"),
    ("shards written", "output.shards"),
]


def counters_from_result(result: Any) -> dict[str, int]:
    """All ``m3w`` counters of a finished pipeline, committed values (attempted where unsupported)."""
    out: dict[str, int] = {}
    for c in result.metrics().query(MetricsFilter().with_namespace("m3w"))["counters"]:
        value = c.committed if c.committed is not None else c.attempted
        out[c.key.metric.name] = out.get(c.key.metric.name, 0) + int(value or 0)
    return dict(sorted(out.items()))


def build_report(counters: dict[str, int], **extra: Any) -> dict[str, Any]:
    funnel = [{"stage": label, "counter": name, "count": counters.get(name, 0)} for label, name in FUNNEL]
    dropped: dict[str, dict[str, int]] = {}
    for name, value in counters.items():
        stage, _, what = name.partition(".")
        if what.startswith(("dropped_", "nodes_dropped_")) and value:
            dropped.setdefault(stage, {})[what] = value
    return {"funnel": funnel, "dropped": dropped, "counters": counters, **extra}


def format_report(report: dict[str, Any]) -> str:
    lines = ["m3w funnel"]
    width = max([len(r["stage"]) for r in report["funnel"]] + [len(f"{s}.{r}") for s, rs in report["dropped"].items() for r in rs])
    for row in report["funnel"]:
        lines.append(f"  {row['stage']:<{width}}  {row['count']:>10,}")
    if report["dropped"]:
        lines.append("dropped, by stage and reason")
        for stage, reasons in sorted(report["dropped"].items()):
            for reason, value in sorted(reasons.items(), key=lambda kv: -kv[1]):
                lines.append(f"  {stage + '.' + reason:<{width}}  {value:>10,}")
    return "\n".join(lines)


def write_report(path: str, report: dict[str, Any]) -> None:
    from pipeline.shards import atomic_write

    blob = json.dumps(report, indent=2, sort_keys=True).encode() + b"\n"
    atomic_write(path, lambda f: f.write(blob))
