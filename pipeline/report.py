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


NO_METRICS = (
    "the runner returned no metrics to the driver: the rows written to the shards are counted from "
    "manifest.json, every other row reads 0 (rejects/ still lists every drop)"
)


def counters_from_result(result: Any) -> dict[str, int]:
    """All ``m3w`` counters of a finished pipeline, committed values (attempted where unsupported).

    Empty when the runner returns no metrics to the driver (Beam's ``PipelineResult.metrics`` is
    not implemented for every runner).
    """
    try:
        queried = result.metrics().query(MetricsFilter().with_namespace("m3w"))["counters"]
    except NotImplementedError:
        return {}
    out: dict[str, int] = {}
    for c in queried:
        value = c.committed if c.committed is not None else c.attempted
        out[c.key.metric.name] = out.get(c.key.metric.name, 0) + int(value or 0)
    return dict(sorted(out.items()))


def counters_from_manifest(output: str) -> dict[str, int]:
    """The funnel's last rows, counted from the written corpus's manifest (its first format)."""
    from apache_beam.io.filesystems import FileSystems

    from pipeline.shards import MANIFEST

    with FileSystems.open(FileSystems.join(output, MANIFEST)) as f:
        totals = json.load(f)["totals"]
    first = next(iter(totals.values()), {"documents": 0, "images": 0, "shards": 0})
    return {"output.documents": first["documents"], "output.images": first["images"], "output.shards": first["shards"]}


def run_counters(result: Any, output: str) -> tuple[dict[str, int], dict[str, str]]:
    """The run's counters and, where the runner returned none, the report's note saying so.

    Every run counts ``read.files``, so no counters at all means no metrics reached the driver,
    never an empty crawl; the report then says so instead of showing a funnel of zeros.
    """
    counters = counters_from_result(result)
    if counters:
        return counters, {}
    return counters_from_manifest(output), {"metrics_missing": NO_METRICS}


def build_report(counters: dict[str, int], **extra: Any) -> dict[str, Any]:
    funnel = [{"stage": label, "counter": name, "count": counters.get(name, 0)} for label, name in FUNNEL]
    dropped: dict[str, dict[str, int]] = {}
    for name, value in counters.items():
        stage, _, what = name.partition(".")
        if what.startswith(("dropped_", "nodes_dropped_", "skipped_")) and value:
            dropped.setdefault(stage, {})[what] = value
    return {"funnel": funnel, "dropped": dropped, "counters": counters, **extra}


def format_report(report: dict[str, Any]) -> str:
    lines = ["m3w funnel"]
    if report.get("metrics_missing"):
        lines.append(f"  note: {report['metrics_missing']}")
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
