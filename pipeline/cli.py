"""``build-m3w``: build, extract, explain, eval-index, verify.

User mistakes (missing input, empty glob, unwritable output, bad config) end with one line on
stderr that says what to do, and exit code 2; bugs keep their traceback.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
import uuid
from typing import Any

USAGE = """build-m3w COMMAND ...

commands:
  build       WARC files -> filtered, deduplicated, sharded corpus (webdataset + Parquet)
  presets     list the corpus recipes --preset accepts (m3w, obelics, mmc4)
  extract     print the extracted, unfiltered documents of WARC or HTML files as JSON lines
  explain     show every filter's measured value, threshold and verdict for one document
  eval-index  build a FAISS index of evaluation-set images for decontamination
  verify      check a corpus directory against its manifest
"""


class UserError(Exception):
    """A mistake the user can fix; printed as one line."""


def _fail(msg: str) -> int:
    print(f"build-m3w: error: {msg}", file=sys.stderr)
    return 2


# ---------------------------------------------------------------------------------------------
# build


def _check_output_writable(output: str) -> None:
    if "://" in output:
        return  # remote filesystems are checked by the runner at write time
    try:
        os.makedirs(output, exist_ok=True)
        probe = os.path.join(output, f".m3w-write-test-{uuid.uuid4().hex}")
        with open(probe, "wb"):
            pass
        os.remove(probe)
    except OSError as e:
        raise UserError(f"cannot write to output directory {output!r} ({e.strerror}); pass a writable --output") from None


def _default_runner_args(argv: list[str]) -> list[str]:
    """The local engine on all cores unless the user chose a runner; named explicitly, so that
    Beam's DirectRunner never tries Prism first (see pipeline/engine.py)."""
    from pipeline.engine import LOCAL_RUNNER

    if any(a.startswith("--runner") for a in argv):
        return []
    args = [f"--runner={LOCAL_RUNNER}"]
    if any(a.startswith("--direct_running_mode") for a in argv):
        return args
    workers = os.cpu_count() or 1
    if workers == 1:
        return args
    # Worker processes log their start-up chatter at INFO/WARNING; errors still come through.
    return args + [
        "--direct_running_mode=multi_processing",
        f"--direct_num_workers={workers}",
        "--default_sdk_harness_log_level=ERROR",
    ]


def _check_paths_reach_workers(options: Any, inputs: list[str], output: str) -> None:
    """A cluster's workers do not run in this directory: a relative path would name another file there."""
    from pipeline.engine import workers_share_cwd

    if workers_share_cwd(options):
        return
    for path in [*inputs, output]:
        if "://" not in path and not os.path.isabs(path):
            raise UserError(f"{path!r} is a relative path and this runner's workers do not run in this directory; pass absolute paths or URIs")


def build_arg_parser() -> argparse.ArgumentParser:
    """build-m3w build's own flags; everything else on the command line is a Beam pipeline option."""
    parser = argparse.ArgumentParser(prog="build-m3w build", add_help=False)
    parser.add_argument("--input", nargs="+", action="extend", default=[], help="WARC/ARC files, directories, globs or URIs")
    parser.add_argument("--output", help="output directory (local path or any Beam FileSystem URI)")
    parser.add_argument("--format", default=None, help="comma-separated output formats: wds,mmc4,parquet")
    parser.add_argument("--shard-size", dest="shard_size", type=int, default=None, help="documents per shard")
    parser.add_argument("--preset", default=None, help="corpus recipe: m3w (default), obelics, mmc4 (`build-m3w presets`)")
    parser.add_argument("--config", dest="m3w_config", default=None, help="YAML file whose keys override the preset's")
    parser.add_argument("--eval-index", dest="eval_index", default=None, help="FAISS evaluation-set index")
    parser.add_argument("--fetch-images", dest="fetch_images", action="store_true", help="fetch images the crawl lacks")
    return parser


def unknown_flag_warnings(beam_args: list[str], parser: argparse.ArgumentParser) -> list[str]:
    """One line per flag left for Beam that Beam does not know: a mistyped build-m3w flag
    (``--shard_size``, ``--fetch_image``) would otherwise be dropped without a word."""
    import difflib

    from apache_beam.options.pipeline_options import PipelineOptions

    ours = [s for a in parser._actions for s in a.option_strings if s.startswith("--")]
    beam = set(PipelineOptions([]).get_all_options())
    out = []
    for arg in beam_args:
        if not arg.startswith("--") or arg == "--":
            continue
        name = arg[2:].split("=", 1)[0]
        if name.replace("-", "_") in beam:
            continue
        dashed = "--" + name.replace("_", "-").lower()
        near = [dashed] if dashed in ours else difflib.get_close_matches(dashed, ours, n=1, cutoff=0.75)
        if near:
            out.append(f"--{name} is not a build-m3w flag; did you mean {near[0]}? (passed to Beam, which ignores it)")
        else:
            out.append(f"--{name} is neither a build-m3w flag nor a Beam option Beam knows; it is passed to Beam as is")
    return out


def _apply_flags(app: argparse.Namespace, resolved: Any) -> None:
    """--format, --shard-size, --eval-index, --fetch-images over the config, checked by the same
    rules as the file and recorded as the source of their keys."""
    if app.format:
        formats = [f.strip() for f in app.format.split(",") if f.strip()]
        from pipeline.config import OUTPUT_FORMATS

        bad = [f for f in formats if f not in OUTPUT_FORMATS]
        if bad:
            raise UserError(f"unknown output format {bad[0]!r}; use --format with any of {','.join(OUTPUT_FORMATS)}")
        resolved.set("output.formats", formats, "--format")
    if app.shard_size is not None:
        if app.shard_size < 1:
            raise UserError("--shard-size must be a positive number of documents")
        resolved.set("output.shard_size", app.shard_size, "--shard-size")
    if app.eval_index:
        if "://" not in app.eval_index and not os.path.exists(app.eval_index):
            raise UserError(f"evaluation index {app.eval_index!r} not found; build one with `build-m3w eval-index`")
        resolved.set("decontamination.index", app.eval_index, "--eval-index")
    if app.fetch_images:
        resolved.set("images.fetch", True, "--fetch-images")


def _check_perplexity_model(cfg: Any) -> None:
    """Load the KenLM model now (a wrong file is one line here); say so when the check is off."""
    tf = cfg.text_filters
    if tf.perplexity_model is None:
        if tf.doc_max_perplexity is not None:
            print(
                "build-m3w: note: text_filters.doc_max_perplexity is set but no perplexity_model: the perplexity check is off",
                file=sys.stderr,
            )
        return
    from pipeline.perplexity import PerplexityError, load

    try:
        load(tf.perplexity_model)
    except PerplexityError as e:
        raise UserError(str(e)) from None


def _check_eval_index(cfg: Any) -> None:
    """Read the evaluation index now, so a wrong file is one line here, not a worker's traceback."""
    from dedup.eval_index import EvalIndex, EvalIndexError, load_embedder

    dc = cfg.decontamination
    try:
        index = EvalIndex.load(dc.index)
        index._feature(dc.feature)
        embedder = load_embedder(dc.embedder, dc.embedder_weights)
    except EvalIndexError as e:
        raise UserError(str(e)) from None
    if embedder is not None and embedder.name not in index.dense:
        raise UserError(
            f"evaluation index {dc.index} has no {embedder.name!r} vectors; rebuild it with `build-m3w eval-index --embedder {dc.embedder}`"
        )


def run_build(argv: list[str]) -> dict[str, Any]:
    """Run the build pipeline; returns the report. Raises UserError for user mistakes."""
    import apache_beam as beam

    from pipeline.build import build_pipeline
    from pipeline.config import ConfigError, dump_config, resolve_config
    from pipeline.engine import engine_name
    from pipeline.outputs import OutputError, remove_stale_files
    from pipeline.report import build_report, format_report, run_counters, write_report
    from pipeline.shards import atomic_write
    from pipeline.warc import InputError, match_inputs

    if any(a in ("-h", "--help") for a in argv):
        print(
            "usage: build-m3w build --input GLOB... --output DIR [--preset NAME] [--config FILE]\n"
            "                       [--format wds,mmc4,parquet] [--shard-size N] [--eval-index INDEX] [--fetch-images] [beam options]\n"
            "--preset picks the recipe (m3w, the default; obelics; mmc4: `build-m3w presets`); --config FILE overrides it key by key.\n"
            "Beam options pass through, e.g. --runner DataflowRunner --project P --region R --temp_location gs://...,\n"
            "or --runner FlinkRunner --flink_master HOST:PORT. Default: Beam's FnApiRunner on all cores, never Prism."
        )
        return {}
    parser = build_arg_parser()
    app, beam_args = parser.parse_known_args(argv)
    for warning in unknown_flag_warnings(beam_args, parser):
        print(f"build-m3w: warning: {warning}", file=sys.stderr)
    beam_args += _default_runner_args(beam_args)
    options = _pipeline_options(beam_args)
    if not app.input:
        raise UserError("no input given; pass --input with WARC files, directories or globs")
    if not app.output:
        raise UserError("no output directory given; pass --output DIR")
    try:
        resolved = resolve_config(app.m3w_config, app.preset)
        cfg = resolved.config
        _apply_flags(app, resolved)
    except ConfigError as e:
        raise UserError(str(e)) from None
    if cfg.decontamination.index:
        _check_eval_index(cfg)
    _check_perplexity_model(cfg)
    try:
        inputs = match_inputs(app.input)
    except InputError as e:
        raise UserError(str(e)) from None
    _check_output_writable(app.output)
    _check_paths_reach_workers(options, inputs, app.output)
    try:
        remove_stale_files(app.output, "before", inputs=inputs)
    except OutputError as e:
        raise UserError(str(e)) from None
    config_blob = dump_config(cfg, resolved).encode()
    atomic_write(os.path.join(app.output, "config.yaml"), lambda f: f.write(config_blob))
    print(f"build-m3w: {len(inputs)} input file(s) -> {app.output}", file=sys.stderr)
    print(f"build-m3w: engine: {engine_name(options)}", file=sys.stderr)
    started = time.time()
    p = beam.Pipeline(options=options)
    build_pipeline(p, inputs, app.output, cfg)
    result = p.run()
    result.wait_until_finish()
    remove_stale_files(app.output, "after", inputs=inputs)
    counters, metrics_note = run_counters(result, app.output)
    report = build_report(
        counters,
        **metrics_note,
        inputs=inputs,
        output=app.output,
        formats=cfg.output.formats,
        seconds=round(time.time() - started, 1),
    )
    # The written report is a pure function of inputs and config (no timings, no output path).
    write_report(os.path.join(app.output, "report.json"), {k: v for k, v in report.items() if k not in ("seconds", "output")})
    print(format_report(report))
    print(f"shards:   {os.path.join(app.output, '{' + ','.join(_dirs(cfg.output.formats)) + '}')}")
    print(f"manifest: {os.path.join(app.output, 'manifest.json')}")
    print(f"report:   {os.path.join(app.output, 'report.json')}")
    print(f"rejects:  {os.path.join(app.output, 'rejects')}")
    return report


def _dirs(formats: list[str]) -> list[str]:
    from pipeline.layout import FORMAT_DIRS

    return [FORMAT_DIRS[f] for f in formats]


def _pipeline_options(argv: list[str]) -> Any:
    from apache_beam.options.pipeline_options import PipelineOptions, SetupOptions

    options = PipelineOptions(argv)
    # DoFns reference module-level code of m3w; workers import it from the installed package.
    options.view_as(SetupOptions).save_main_session = False
    return options


# ---------------------------------------------------------------------------------------------
# presets


def run_presets(argv: list[str]) -> int:
    """``build-m3w presets``: each bundled recipe, what it is and its file."""
    from pipeline.config import DEFAULT_PRESET, preset_names, preset_path, preset_summary

    if argv:
        raise UserError(f"`build-m3w presets` takes no arguments, got {argv[0]!r}; pass --preset NAME to build")
    for name in preset_names():
        default = " (default)" if name == DEFAULT_PRESET else ""
        print(f"{name}{default}: {preset_summary(name)}")
        print(f"    {preset_path(name)}")
    return 0


# ---------------------------------------------------------------------------------------------
# extract


def run_extract(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="build-m3w extract",
        description="Print the extracted, unfiltered documents of WARC or HTML files as JSON lines.",
    )
    parser.add_argument("inputs", nargs="+", help="WARC/ARC files or .html files")
    parser.add_argument("--base-url", default=None, help="URL of an HTML file (default: its file:// URL)")
    parser.add_argument("--preset", default=None, help="corpus recipe whose extract settings apply (default m3w)")
    parser.add_argument("--config", default=None, help="YAML file whose keys override the preset's")
    args = parser.parse_args(argv)

    from pipeline.config import ConfigError, load_config
    from pipeline.extract import ExtractionError
    from pipeline.extract_guard import GuardedExtractor
    from pipeline.records import Page
    from pipeline.warc import iter_warc
    from schemas.document import Provenance, to_json

    try:
        cfg = load_config(args.config, args.preset)
    except ConfigError as e:
        raise UserError(str(e)) from None
    out = sys.stdout
    # A page that stalls costs parse_timeout_s; no threads here, so the child is a cheap fork.
    extractor = GuardedExtractor(cfg.extract, cfg.limits, fork=True)
    for path in args.inputs:
        if not os.path.exists(path):
            raise UserError(f"input {path!r} not found; pass existing WARC or HTML files")
        if path.endswith((".html", ".htm", ".html.gz")):
            import gzip

            raw = gzip.open(path).read() if path.endswith(".gz") else open(path, "rb").read()
            url = args.base_url or "file://" + os.path.abspath(path)
            prov = Provenance(path, 0, len(raw), "", "")
            pages = [Page(url=url, provenance=prov, html=raw.decode("utf-8", "replace"))]
        else:
            pages = (r for r in iter_warc(path, cfg.limits) if isinstance(r, Page))
        for page in pages:
            try:
                doc = extractor.extract(page)
            except ExtractionError as e:
                print(f"build-m3w: skipped {page.url}: {e}", file=sys.stderr)
                continue
            out.write(json.dumps(to_json(doc), ensure_ascii=False) + "\n")
    return 0


# ---------------------------------------------------------------------------------------------


class _BeamImportNoise(logging.Filter):
    """Beam warns on import when its optional GCP clients are absent; local runs don't need them."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("apitools not found")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    for handler in logging.getLogger().handlers:
        handler.addFilter(_BeamImportNoise())
    logging.getLogger("apache_beam").setLevel(logging.ERROR)  # runner internals; our errors still raise
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0 if argv else 2
    cmd, rest = argv[0], argv[1:]
    try:
        if cmd == "build":
            run_build(rest)
            return 0
        if cmd == "presets":
            return run_presets(rest)
        if cmd == "extract":
            return run_extract(rest)
        if cmd == "explain":
            from pipeline.explain import main as explain_main

            return explain_main(rest)
        if cmd == "eval-index":
            from dedup.eval_index import main as eval_index_main

            return eval_index_main(rest)
        if cmd == "verify":
            from pipeline.verify import main as verify_main

            return verify_main(rest)
    except UserError as e:
        return _fail(str(e))
    except BrokenPipeError:
        return 0
    return _fail(f"unknown command {cmd!r}; run `build-m3w --help` for the list")


if __name__ == "__main__":
    sys.exit(main())
