"""The config file: defaults match the dataclasses, every value is checked when it is loaded, and
each mistake is one line that names the key and says what is allowed."""
from __future__ import annotations

import dataclasses
import math
import typing

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.cli import main as build_m3w
from pipeline.config import (
    FEATURE_BITS,
    IMAGE_FORMATS,
    Config,
    ConfigError,
    Rule,
    config_from_dict,
    config_to_dict,
    dump_config,
    load_config,
)
from tests.conftest import REPO

SAMPLE = str(REPO / "samples" / "demo.warc.gz")


def test_bundled_yaml_equals_dataclass_defaults():
    assert config_to_dict(load_config()) == config_to_dict(Config())


def test_partial_file_overrides_only_given_keys(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("version: 1\nimages:\n  min_side: 150\ntext_filters:\n  node_min_words: null\n")
    cfg = load_config(str(path))
    assert cfg.images.min_side == 150 and cfg.text_filters.node_min_words is None
    assert cfg.images.max_aspect_ratio == Config().images.max_aspect_ratio
    assert load_config_from_text(tmp_path, dump_config(cfg)) == cfg  # resolved config reloads as itself


def load_config_from_text(tmp_path, text):
    p = tmp_path / "resolved.yaml"
    p.write_text(text)
    return load_config(str(p))


def one_line_error(tmp_path, text: str | bytes) -> str:
    path = tmp_path / "bad.yaml"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(ConfigError) as e:
        load_config(str(path))
    msg = str(e.value)
    assert "\n" not in msg and len(msg) < 400, msg
    return msg


# Each value below loaded without a word and then crashed the run, hung it, or switched a check off.
@pytest.mark.parametrize(
    "text, fragments",
    [
        ("output:\n  shard_size: 0\n", ["output.shard_size", "integer >= 1", "got 0"]),  # ZeroDivisionError
        ("output:\n  formats: [csv]\n", ["output.formats[0]", "'csv'", "wds, mmc4, parquet"]),  # KeyError
        ("output:\n  formats: []\n", ["output.formats", "at least one"]),
        ("dedup:\n  minhash_bands: 0\n", ["dedup.minhash_bands", "from 1 to 1024"]),
        ("dedup:\n  minhash_rows: 0\n", ["dedup.minhash_rows", "from 1 to 1024"]),
        ("dedup:\n  minhash_bands: 1000\n  minhash_rows: 1000\n", ["dedup.minhash_bands", "dedup.minhash_rows", "8192"]),
        ("language:\n  detector: foo\n", ["language.detector", "'foo'", "resiliparse"]),
        ("language:\n  keep: [EN]\n", ["language.keep[0]", "language code"]),
        ("text_filters:\n  flagged_words_file: no-such-list.txt\n", ["text_filters.flagged_words_file", "does not exist"]),
        ("text_filters:\n  url_domain_blocklist_file: /no/such/file\n", ["text_filters.url_domain_blocklist_file", "does not exist"]),
        ("text_filters:\n  url_substring_blocklist_file: /\n", ["text_filters.url_substring_blocklist_file", "not a regular file"]),
        ("text_filters:\n  gopher_top_ngram_char_frac: {0: 0.2}\n", ["text_filters.gopher_top_ngram_char_frac", "key 0", "1 to 63"]),
        ("text_filters:\n  gopher_dup_ngram_char_frac: {5: 2.0}\n", ["text_filters.gopher_dup_ngram_char_frac.5", "from 0 to 1"]),
        ("text_filters:\n  doc_min_words: 500\n  doc_max_words: 50\n", ["text_filters.doc_min_words", "text_filters.doc_max_words"]),
        ("fetch:\n  concurrency: 0\n", ["fetch.concurrency", "from 1 to 1024"]),  # hung forever
        ("fetch:\n  per_host_concurrency: 0\n", ["fetch.per_host_concurrency", "from 1 to 1024"]),  # hung forever
        ("fetch:\n  allowed_networks: [10.0.0.0/33]\n", ["fetch.allowed_networks[0]", "not an IP network"]),  # every fetch failed
        ("fetch:\n  allowed_networks: [localhost]\n", ["fetch.allowed_networks[0]", "127.0.0.1/32"]),
        ("fetch:\n  user_agent: \"m3w\\r\\nX-Evil: 1\"\n", ["fetch.user_agent", "printable ASCII"]),
        ("fetch:\n  timeout_s: .inf\n", ["fetch.timeout_s", "got inf"]),
        ("limits:\n  max_dom_depth: 0\n", ["limits.max_dom_depth", ">= 1, or null"]),  # silently no limit
        ("limits:\n  parse_timeout_s: 0\n", ["limits.parse_timeout_s", "> 0", "or null"]),  # silently no limit
        ("output:\n  rejects_sample_rate: .nan\n", ["output.rejects_sample_rate", "from 0 to 1", "nan"]),  # dropped every reject
        ("images:\n  allowed_formats: [jpg]\n", ["images.allowed_formats[0]", "did you mean jpeg?"]),
        ("images:\n  encode_quality: 0\n", ["images.encode_quality", "from 1 to 100"]),
        ("images:\n  min_side: 500\n  max_side: 100\n", ["images.min_side", "images.max_side"]),
        ("decontamination:\n  drop: all\n", ["decontamination.drop", "image, document"]),
        ("decontamination:\n  feature: phash64\n  max_hamming_distance: 100\n", ["decontamination.max_hamming_distance", "0 to 64"]),
        ("decontamination:\n  embedder: clip\n", ["decontamination.embedder", "package.module:factory"]),
        ("images:\n  min_sde: 3\n", ["unknown config key images.min_sde", "did you mean images.min_side?"]),
        ("text_filters:\n  min_side: 3\n", ["unknown config key text_filters.min_side", "did you mean images.min_side?"]),
        ("images:\n  min_side: big\n", ["images.min_side: expected an integer >= 1, or null, got 'big'"]),
        ("images:\n  min_side: 1\n  min_side: 2\n", ["'min_side' given twice"]),
        ("text_filters:\n  node_min_words: true\n", ["text_filters.node_min_words", "got true"]),
        ("images: 5\n", ["config section images", "mapping"]),
        ("- 1\n- 2\n", ["must be a mapping of sections"]),
        ("1: x\n", ["key 1 is not a name"]),
        ("version: 7\n", ["config version 7"]),
        ("images: [1\n", ["not valid YAML at line"]),
        ("a: " + "[" * 5000 + "\n", ["nests too deeply"]),
        (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\xff\xfe binary", ["not UTF-8 text"]),  # a binary file
        ("images:\n  min_side: \x07\n", ["not valid YAML"]),
    ],
)
def test_each_bad_value_is_a_one_line_error_naming_the_key(tmp_path, text, fragments):
    msg = one_line_error(tmp_path, text)
    for fragment in fragments:
        assert fragment in msg, msg


def test_null_still_turns_a_limit_off_and_valid_edges_load(tmp_path):
    path = tmp_path / "edges.yaml"
    path.write_text(
        "limits:\n  max_dom_depth: null\n  parse_timeout_s: 0.5\n"
        "output:\n  rejects_sample_rate: 0\n  formats: [parquet]\n"
        "fetch:\n  allowed_networks: [127.0.0.1/32, '::1/128', 10.0.0.1/8]\n  retries: 0\n"
        "text_filters:\n  gopher_top_ngram_char_frac: {1: 1}\n  flagged_words_file: " + str(REPO / "pipeline" / "data" / "flagged_words_en.txt") + "\n"
    )
    cfg = load_config(str(path))
    assert cfg.limits.max_dom_depth is None and cfg.limits.parse_timeout_s == 0.5
    assert cfg.output.rejects_sample_rate == 0.0 and isinstance(cfg.output.rejects_sample_rate, float)
    assert cfg.text_filters.gopher_top_ngram_char_frac == {1: 1.0}


def test_missing_file_and_directory_say_what_to_do(tmp_path):
    with pytest.raises(ConfigError, match="pass an existing file to --config"):
        load_config(str(tmp_path / "nope.yaml"))
    with pytest.raises(ConfigError, match="is a directory; pass a YAML file to --config"):
        load_config(str(tmp_path))


def test_build_reports_config_mistakes_in_one_line_before_running(tmp_path, capsys):
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(bytes(range(256)) * 4)
    zero = tmp_path / "zero.yaml"
    zero.write_text("output:\n  shard_size: 0\n")
    junk_index = tmp_path / "junk.index"
    junk_index.write_bytes(b"PK\x03\x04 not really a zip" * 100)
    out = str(tmp_path / "out")
    for extra, fragment in [
        (["--config", str(binary)], "not UTF-8 text"),
        (["--config", str(tmp_path)], "is a directory"),
        (["--config", str(zero)], "output.shard_size"),
        (["--eval-index", str(junk_index)], "not an m3w evaluation index"),
        (["--eval-index", str(REPO / "samples" / "demo.warc.gz")], "not an m3w evaluation index"),
    ]:
        assert build_m3w(["build", "--input", SAMPLE, "--output", out, *extra]) == 2, extra
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("build-m3w: error:") and fragment in err[0], (extra, err)
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_explain_reports_config_mistakes_in_one_line(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("language:\n  detector: foo\n")
    assert build_m3w(["explain", "--input", SAMPLE, "--config", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "language.detector" in err


def test_mistyped_build_flags_are_warned_about_not_passed_silently(capsys):
    # No --output: the run stops with a user error right after the flags are read.
    rc = build_m3w(["build", "--input", SAMPLE, "--shard_size", "5", "--fetch_images", "--direct_num_workers=1", "--evalindex", "x"])
    assert rc == 2
    err = capsys.readouterr().err.splitlines()
    warnings = [line for line in err if line.startswith("build-m3w: warning:")]
    assert any("--shard_size" in w and "did you mean --shard-size?" in w for w in warnings), err
    assert any("--fetch_images" in w and "did you mean --fetch-images?" in w for w in warnings), err
    assert any("--evalindex" in w and "did you mean --eval-index?" in w for w in warnings), err
    assert not any("direct_num_workers" in w for w in warnings), "a real Beam option is not warned about"
    assert err[-1].startswith("build-m3w: error: no output directory")


def test_junk_eval_index_bytes_are_a_one_line_error():
    from dedup.eval_index import EvalIndex, EvalIndexError

    for junk in [b"", b"\x00" * 100, b"hello", b"PK\x03\x04" + bytes(range(256)), open(SAMPLE, "rb").read()[:5000]]:
        with pytest.raises(EvalIndexError) as e:
            EvalIndex.from_bytes(junk)
        assert "\n" not in str(e.value) and "build-m3w eval-index" in str(e.value)


# ---------------------------------------------------------------------------------------------
# Every key, any value: it loads and is valid, or it is a ConfigError that names the key.


def _keys() -> list[tuple[str, str, typing.Any]]:
    out = []
    for sec in dataclasses.fields(Config):
        cls = typing.get_type_hints(Config)[sec.name]
        if not dataclasses.is_dataclass(cls):
            continue
        hints = typing.get_type_hints(cls, include_extras=True)
        out += [(sec.name, f.name, hints[f.name]) for f in dataclasses.fields(cls)]
    return out


KEYS = _keys()


def _rules(hint) -> list[Rule]:
    return [a for a in typing.get_args(hint) if isinstance(a, Rule)]


def _scalar_hints(hint) -> list[typing.Any]:
    """The non-None alternatives of ``hint``."""
    if typing.get_origin(hint) in (typing.Union, typing.get_origin(int | None)):
        return [a for a in typing.get_args(hint) if a is not type(None)]
    return [hint]


def _valid(value, hint) -> bool:
    """The loaded value obeys the annotation: right Python type, finite, inside its declared range."""
    if value is None:
        return type(None) in typing.get_args(hint)
    for h in _scalar_hints(hint):
        base, rules = (typing.get_args(h)[0], _rules(h)) if typing.get_origin(h) is typing.Annotated else (h, [])
        origin = typing.get_origin(base)
        if origin is list:
            if isinstance(value, list) and all(_valid(v, typing.get_args(base)[0]) for v in value):
                return all(not r.nonempty or value for r in rules)
            continue
        if origin is dict:
            kt, vt = typing.get_args(base)
            if isinstance(value, dict) and all(_valid(k, kt) and _valid(v, vt) for k, v in value.items()):
                return True
            continue
        if type(value) is not base:
            continue
        if isinstance(value, float) and not math.isfinite(value):
            return False
        for r in rules:
            if isinstance(value, (int, float)):
                if r.lo is not None and (value < r.lo or (r.lo_open and value == r.lo)):
                    return False
                if r.hi is not None and value > r.hi:
                    return False
            if r.choices is not None and value not in r.allowed_choices():
                return False
        return True
    return False


_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from([0, 1, -1, 2, 63, 64, 1024, 2**62, 2**62 + 1]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0.0, 1.0, 0.5, -0.0, 1.0000001, math.nan, math.inf, -math.inf]),
    st.text(max_size=12),
    st.sampled_from(["", " ", "en", "EN", "wds", "csv", "jpeg", "image", "phash64", "py3langid", "127.0.0.1/32", "::1",
                     "10.0.0.0/33", "thumbnail16", "a.b:c", "no/such/file", "\x00", "m3w/1.0", str(SAMPLE)]),
)
_values = st.one_of(
    _scalars,
    st.lists(_scalars, max_size=4),
    st.dictionaries(st.one_of(st.integers(-3, 70), st.text(max_size=3)), _scalars, max_size=3),
)


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.sampled_from(KEYS), _values), min_size=1, max_size=3))
def test_any_value_for_any_key_loads_valid_or_names_the_key(assignments):
    data: dict[str, dict] = {}
    for (section, name, _), value in assignments:
        data.setdefault(section, {})[name] = value
    try:
        cfg = config_from_dict(data)
    except ConfigError as e:
        msg = str(e)
        assert "\n" not in msg
        assert any(f"{s}.{k}" in msg for s, keys in data.items() for k in keys), (data, msg)
        return
    for (section, name, hint), _ in assignments:
        value = getattr(getattr(cfg, section), name)
        assert _valid(value, hint), (section, name, value)
    assert config_from_dict(yaml.safe_load(dump_config(cfg))) == cfg  # the resolved config reloads as itself


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.binary(max_size=300), st.text(max_size=300).map(str.encode)))
def test_any_file_content_loads_or_is_a_one_line_error(content):
    import tempfile

    with tempfile.NamedTemporaryFile(suffix=".yaml") as f:
        f.write(content)
        f.flush()
        try:
            load_config(f.name)
        except ConfigError as e:
            assert "\n" not in str(e)


def test_every_value_key_declares_what_is_allowed():
    """A key added without a rule would accept any number or string: each names its range or set."""
    missing = []
    for section, name, hint in KEYS:
        for h in _scalar_hints(hint):
            base = typing.get_args(h)[0] if typing.get_origin(h) is typing.Annotated else h
            if base is bool:
                continue
            items = typing.get_args(base) if typing.get_origin(base) in (list, dict) else ()
            annotated = typing.get_origin(h) is typing.Annotated and typing.get_origin(base) not in (list, dict)
            if items:
                annotated = all(typing.get_origin(i) is typing.Annotated or i is bool for i in items)
            if not annotated and not (section == "" or name == "version"):
                missing.append(f"{section}.{name}")
    assert not missing, f"annotate these with a rule from pipeline/config.py (Count, Fraction, OneOf, ...): {missing}"


def test_allowed_sets_match_the_code_that_uses_them():
    from dedup.phash import FEATURES
    from pipeline.images import _PILLOW_FORMATS

    assert set(IMAGE_FORMATS) == set(_PILLOW_FORMATS.values())
    assert FEATURE_BITS == {name: bits for name, (bits, _) in FEATURES.items()}


def test_every_key_of_the_defaults_file_says_what_it_is_and_docs_are_current():
    from pipeline.config_doc import config_markdown

    doc = config_markdown()
    rows = [line for line in doc.splitlines() if line.startswith("| `")]
    assert rows and not [r for r in rows if r.rstrip().endswith("|  |")], "uncommented keys in pipeline/m3w.yaml"
    assert (REPO / "docs" / "CONFIG.md").read_text(encoding="utf-8") == doc, "run: python -m pipeline.config_doc > docs/CONFIG.md"


# ---------------------------------------------------------------------------------------------
# Presets: versioned recipes, overridden key by key


def test_every_preset_loads_names_itself_and_sets_only_real_keys():
    from pipeline.config import preset_names, preset_path, read_yaml

    assert preset_names()[0] == "m3w" and {"obelics", "mmc4"} <= set(preset_names())
    for name in preset_names():
        cfg = load_config(preset=name)
        assert cfg.preset == name and read_yaml(preset_path(name))["version"] == 1
        assert config_from_dict(yaml.safe_load(dump_config(cfg))) == cfg


def test_presets_hold_their_published_thresholds():
    m3w, obelics, mmc4 = (load_config(preset=n) for n in ("m3w", "obelics", "mmc4"))
    # M3W: Gopher's 50-100,000 words, no 2,000-word cap; images >= 64 px, aspect <= 3, single colour.
    assert (m3w.text_filters.doc_min_words, m3w.text_filters.doc_max_words) == (50, 100_000)
    assert (m3w.images.min_side, m3w.images.max_aspect_ratio, m3w.images.min_pixel_std) == (64, 3.0, 2.0)
    assert m3w.text_filters.gopher_min_stop_words == 2 and m3w.text_filters.gopher_dup_ngram_char_frac[10] == 0.10
    # OBELICS (config_filter_web_documents.yaml)
    tf = obelics.text_filters
    assert (tf.node_min_words, tf.node_max_words, tf.doc_min_words, tf.doc_max_words) == (4, 1000, 10, 2000)
    assert (tf.node_min_punctuation_ratio, tf.node_punctuation_min_words, tf.doc_min_punctuation_ratio) == (0.001, 12, 0.03)
    assert (tf.node_min_common_word_ratio, tf.doc_min_common_word_ratio) == (0.8, 0.9)
    assert (tf.doc_min_images, tf.doc_max_images, tf.gopher_min_stop_words) == (1, 30, None)
    assert (obelics.images.min_side, obelics.images.max_side, obelics.images.max_aspect_ratio) == (150, 20_000, 2.0)
    assert obelics.images.allowed_formats == ["jpeg", "png", "webp"] and obelics.language.min_score == 0.8
    # MMC4: min side 150, aspect 0.5-2
    assert (mmc4.images.min_side, mmc4.images.max_aspect_ratio) == (150, 2.0)


def test_a_file_overrides_its_preset_key_by_key(tmp_path):
    from pipeline.config import resolve_config

    path = tmp_path / "mine.yaml"
    path.write_text("images:\n  min_side: 200\ntext_filters:\n  doc_max_words: 5000\n")
    resolved = resolve_config(str(path), "obelics")
    cfg, obelics = resolved.config, load_config(preset="obelics")
    assert cfg.preset == "obelics" and cfg.images.min_side == 200 and cfg.text_filters.doc_max_words == 5000
    assert cfg.images.max_aspect_ratio == obelics.images.max_aspect_ratio == 2.0  # the rest of the section stays
    assert resolved.source("images.min_side") == str(path) and resolved.source("images.max_side") == "preset obelics"
    assert resolved.source("fetch.timeout_s") == "default"  # obelics leaves it to the m3w defaults
    # The file may name the preset itself; the resolved config names it and lists the overrides.
    named = tmp_path / "named.yaml"
    named.write_text("preset: obelics\nimages:\n  min_side: 200\n")
    assert load_config(str(named)).images.max_aspect_ratio == 2.0
    text = dump_config(cfg, resolved)
    assert text.startswith("# m3w build config: preset obelics") and "images.min_side, text_filters.doc_max_words" in text
    assert load_config_from_text(tmp_path, text) == cfg


@pytest.mark.parametrize(
    "text, preset, fragment",
    [
        ("", "obelix", "unknown preset 'obelix' (did you mean obelics?)"),
        ("preset: mmc4\n", "obelics", "says 'mmc4' but --preset says 'obelics'"),
        ("preset: 3\n", None, "config key preset"),
        ("preset: c4\n", None, "unknown preset 'c4'"),
    ],
)
def test_preset_mistakes_are_one_line_errors(tmp_path, text, preset, fragment):
    path = tmp_path / "p.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as e:
        load_config(str(path), preset)
    assert fragment in str(e.value) and "\n" not in str(e.value)


def test_build_m3w_presets_lists_each_recipe(capsys):
    assert build_m3w(["presets"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("m3w (default): Flamingo's M3W")
    for name in ("obelics", "mmc4"):
        assert f"\n{name}: " in out and f"presets/{name}.yaml" in out


def test_the_resolved_config_beside_the_outputs_names_its_preset(tmp_path):
    override = tmp_path / "mine.yaml"
    override.write_text("images:\n  min_side: 100\n")
    out = tmp_path / "out"
    argv = ["build", "--input", SAMPLE, "--output", str(out), "--preset", "mmc4", "--config", str(override), "--shard-size", "2"]
    assert build_m3w([*argv, "--direct_running_mode=in_memory"]) == 0
    text = (out / "config.yaml").read_text()
    assert text.splitlines()[0] == "# m3w build config: preset mmc4 (presets/mmc4.yaml)"
    assert text.splitlines()[1] == f"# overridden by {override}: images.min_side"
    assert text.splitlines()[2] == "# set by flags: output.shard_size (--shard-size)"
    cfg = load_config(str(out / "config.yaml"))
    assert cfg.preset == "mmc4" and cfg.images.min_side == 100 and cfg.output.shard_size == 2
    expected = load_config(str(override), "mmc4")
    expected.output.shard_size = 2
    assert cfg == expected


def test_flags_are_checked_by_the_config_rules(tmp_path, capsys):
    out = str(tmp_path / "out")
    assert build_m3w(["build", "--input", SAMPLE, "--output", out, "--format", "wds,wds"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "build-m3w: error: --format: config key output.formats: 'wds' is listed twice; list each item once"


LONG_PYDOCS = ["functions", "re", "codecs", "argparse", "sqlite3", "ctypes", "multiprocessing", "ssl", "decimal", "logging"]


def test_m3w_keeps_long_pages_that_pass_gopher_where_obelics_caps_them():
    """Issue 16's acceptance for the default: real reference pages of more than 2,000 words that
    pass every Gopher rule pass m3w's text filters; OBELICS's 2,000-word cap drops them."""
    from pipeline.config import resolve_config
    from pipeline.explain import explain_document, iter_documents
    from tests.conftest import shared_path

    warc = str(shared_path("warc", "local_wget_crawls", "pydocs.warc.gz"))
    m3w, obelics = resolve_config(), resolve_config(preset="obelics")
    wanted = {f"/library/{n}.html" for n in LONG_PYDOCS}
    seen = set()
    for doc in iter_documents(warc, None, m3w.config):
        name = "/library/" + doc.url.rsplit("/library/", 1)[-1]
        if name not in wanted:
            continue
        seen.add(name)
        report = explain_document(doc, m3w.config, m3w)
        checks = {c["filter"]: c for c in report["document"]["checks"]}
        assert checks["doc_max_words"]["value"] > 2000, name
        assert all(c["pass"] for f, c in checks.items() if f.startswith("gopher_")), name
        assert report["verdict"] == "kept", (name, report["reason"], report["detail"])
        assert checks["doc_max_words"]["source"] == "preset m3w"
        capped = explain_document(doc, obelics.config, obelics)
        words = next(c for c in capped["document"]["checks"] if c["filter"] == "doc_max_words")
        assert capped["verdict"] == "dropped" and not words["pass"] and words["threshold"] == 2000, name
    assert seen == wanted


# ---------------------------------------------------------------------------------------------
# OBELICS's perplexity check: off without a model, and said so; with a local KenLM model, applied.

ARPA = """\\data\\
ngram 1=7
ngram 2=1

\\1-grams:
-1.0\t<s>\t0
-0.5\t</s>\t0
-0.7\tthe\t0
-0.8\tgarden\t0
-0.9\tgrows\t0
-1.0\tslowly\t0
-3.0\t<unk>\t0

\\2-grams:
-0.3\t<s> the

\\end\\
"""


def test_perplexity_check_is_off_without_a_model_and_explain_says_so(capsys):
    from pipeline.explain import main as explain_main

    cfg = load_config(preset="obelics")
    assert cfg.text_filters.doc_max_perplexity == 1500 and cfg.text_filters.perplexity_model is None
    assert explain_main(["--input", SAMPLE, "--preset", "obelics"]) == 0
    assert "perplexity: off: no text_filters.perplexity_model" in capsys.readouterr().out


def test_perplexity_check_drops_documents_above_the_threshold_with_a_local_model(tmp_path):
    pytest.importorskip("kenlm", reason="the optional kenlm package: pip install -e '.[perplexity]'")
    from pipeline import filters as F
    from pipeline.explain import explain_document
    from schemas.document import Document, ImageNode, Provenance, TextNode

    model = tmp_path / "tiny.arpa"
    model.write_text(ARPA)
    path = tmp_path / "pp.yaml"
    path.write_text(f"text_filters:\n  perplexity_model: {model}\n  doc_max_perplexity: 20\n")
    cfg = load_config(str(path))

    def doc(text: str) -> Document:
        return Document("https://e.org/p", Provenance("x.warc", 0, 1, ""), [TextNode(text), ImageNode("https://e.org/a.jpg")])

    import kenlm

    lm = kenlm.Model(str(model))
    from pipeline.perplexity import perplexity

    # CCNet's formula by hand: log10 P of "<s> the garden grows slowly </s>" = -0.3 -0.8 -0.9 -1.0 -0.5
    assert perplexity(lm, "The garden  grows slowly") == pytest.approx(10 ** (3.5 / 5))
    known = " ".join(["the garden grows slowly"] * 20)
    unknown = " ".join(["zebra quantum fjord"] * 30)
    assert perplexity(lm, known) < 20 < perplexity(lm, unknown)
    tf = cfg.text_filters
    tf.doc_min_words = tf.gopher_min_stop_words = tf.gopher_min_alpha_words_ratio = None
    tf.gopher_top_ngram_char_frac = tf.gopher_dup_ngram_char_frac = None
    tf.gopher_max_dup_line_frac = tf.gopher_max_dup_para_frac = tf.gopher_max_dup_line_char_frac = tf.gopher_max_dup_para_char_frac = None
    tf.node_max_char_10gram_repetition = tf.node_max_word_5gram_repetition = None
    cfg.language.keep = cfg.language.min_score = None
    kept, rejects = F.filter_document(doc(known), cfg)
    assert kept is not None
    kept, rejects = F.filter_document(doc(unknown), cfg)
    assert kept is None and rejects[-1].reason == "doc_max_perplexity" and rejects[-1].detail.endswith("(max 20)")
    report = explain_document(doc(unknown), cfg)
    assert report["reason"] == "doc_max_perplexity" and report["document"]["perplexity"]["pass"] is False


def test_a_file_that_is_not_a_kenlm_model_is_a_one_line_error(tmp_path, capsys):
    pytest.importorskip("kenlm", reason="the optional kenlm package: pip install -e '.[perplexity]'")
    bad = tmp_path / "not-a-model.bin"
    bad.write_bytes(b"\x00junk" * 100)
    path = tmp_path / "pp.yaml"
    path.write_text(f"text_filters:\n  perplexity_model: {bad}\n  doc_max_perplexity: 1500\n")
    assert build_m3w(["build", "--input", SAMPLE, "--output", str(tmp_path / "out"), "--config", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not a KenLM model" in err[0]
