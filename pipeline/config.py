"""The build configuration: one versioned YAML file (``pipeline/m3w.yaml``) mapped onto dataclasses.

Every threshold has a default here, with its source; the YAML file holds the same values with the
same comments and is what users copy and edit. ``None`` turns a check off. ``load_config`` rejects
unknown keys and wrong types with a one-line error naming the key.
"""
from __future__ import annotations

import dataclasses
import os
import types
import typing
from dataclasses import dataclass, field
from typing import Any

import yaml

CONFIG_VERSION = 1
DEFAULT_CONFIG_PATH = os.path.join(os.path.dirname(__file__), "m3w.yaml")


class ConfigError(ValueError):
    """A user mistake in the config file; the message is one line that says what to fix."""


@dataclass
class LimitsConfig:
    """Hostile-input limits; hitting one rejects the record with a counted reason."""

    max_record_bytes: int | None = 50_000_000  # larger WARC records are skipped unread (CC caps at ~1 MB)
    max_html_bytes: int | None = 5_000_000  # decoded HTML larger than this is not parsed
    max_dom_depth: int | None = 256  # deeper trees are cut here (browsers cap around 512)
    max_image_bytes: int | None = 20_000_000  # image payloads larger than this are rejected
    max_image_pixels: int | None = 89_478_485  # Pillow's own decompression-bomb limit
    # Peak bytes one image may take while decoded and converted (every buffer the image stage
    # holds at once, estimated from the header before decoding). 256 MiB keeps a worker near
    # 0.5 GB with the interpreter (issue 14: <= 1 GB for any hostile image) and admits a 60 Mpx
    # RGB photo (Pillow keeps RGB at 4 bytes per pixel).
    max_image_decode_bytes: int | None = 268_435_456
    parse_timeout_s: float | None = 10.0  # per-page extraction time limit
    max_revisit_index: int | None = 2_000_000  # URLs/digests kept per WARC to resolve revisits (~150 B each)


@dataclass
class ExtractConfig:
    """DOM walk into interleaved text and image nodes (pipeline/extract.py)."""

    remove_boilerplate: bool = True  # nav/header/footer/menus/forms/comments/related lists
    boilerplate_max_share: float = 0.5  # a boilerplate-looking element with more of the page's text than this is kept
    min_text_chars: int = 1  # drop text nodes shorter than this after whitespace collapsing
    keep_alt_text: bool = True
    min_declared_image_side: int | None = 16  # declared width/height below this: tracking pixel, spacer, UI icon
    drop_image_url_patterns: list[str] = field(
        # OBELICS drops URLs containing logo, button, icon, plugin, widget; we add common pixels/spacers.
        default_factory=lambda: ["logo", "button", "icon", "plugin", "widget", "pixel", "spacer", "sprite", "avatar", "banner"]
    )
    main_content: bool = True  # keep only the densest content block(s) (readability's text-density score)
    main_content_min_chars: int = 200  # below this the chosen block is a teaser, not the article: keep the page
    main_content_min_score: float = 15.0  # a winner below this (~3 paragraphs) is no evidence: keep the page (docs/bench/extraction.md)
    drop_title_heading: bool = True  # the heading that repeats <title> is dropped: the document keeps it as `title`


@dataclass
class LanguageConfig:
    """Offline language identification."""

    keep: list[str] | None = field(default_factory=lambda: ["en"])  # None keeps every language
    # Score = share of the text's characters read as the detected language (pipeline/langid.py).
    # 0.6 drops mixed-language pages (97% of the mostly French/German handbook pages) while keeping
    # 94% of the code-heavy Python docs (docs/bench/filters.md). OBELICS: fastText probability >= 0.8.
    min_score: float | None = 0.6
    detector: str = "resiliparse"  # or "py3langid": slower, better on short code-heavy text


@dataclass
class TextFilterConfig:
    """Paragraph- and document-level text filters (OBELICS node/doc defaults; Gopher rules).

    docs/FILTERS.md defines each measure and lists where m3w departs from its source.
    """

    # Paragraph (text node) level — OBELICS
    node_min_words: int | None = 4
    node_max_words: int | None = 1000
    node_max_char_10gram_repetition: float | None = 0.1
    node_max_word_5gram_repetition: float | None = 0.1
    node_max_special_char_ratio: float | None = 0.3
    node_min_stopword_ratio: float | None = 0.3
    node_max_flagged_word_ratio: float | None = 0.01
    # Document level — OBELICS
    doc_min_words: int | None = 10
    doc_max_words: int | None = 2000
    doc_max_char_repetition: float | None = 0.1
    doc_max_word_repetition: float | None = 0.2
    doc_max_special_char_ratio: float | None = 0.275
    doc_min_stopword_ratio: float | None = 0.35
    doc_max_flagged_word_ratio: float | None = 0.01
    # OBELICS punctuation and common-word ratios (config_filter_web_documents.yaml); off here,
    # the blend above predates them. Definitions in docs/FILTERS.md.
    node_min_punctuation_ratio: float | None = None  # OBELICS: 0.001
    node_punctuation_min_words: int | None = 12  # OBELICS: shorter paragraphs (words and marks) pass the punctuation check
    node_min_common_word_ratio: float | None = None  # OBELICS: 0.8
    doc_min_punctuation_ratio: float | None = None  # OBELICS: 0.03
    doc_min_common_word_ratio: float | None = None  # OBELICS: 0.9
    doc_min_images: int | None = 1
    doc_max_images: int | None = 30
    # Gopher quality (datatrove)
    gopher_min_mean_word_length: float | None = 3.0
    gopher_max_mean_word_length: float | None = 10.0
    gopher_max_symbol_word_ratio: float | None = 0.1  # max of '#' and ellipsis counts per word
    gopher_max_bullet_lines_ratio: float | None = 0.9  # of non-blank lines (m3w joins paragraphs by blank lines)
    gopher_max_ellipsis_lines_ratio: float | None = 0.3
    gopher_min_alpha_words_ratio: float | None = 0.8
    gopher_min_stop_words: int | None = 2
    # Gopher repetition (datatrove)
    gopher_max_dup_line_frac: float | None = 0.3
    gopher_max_dup_para_frac: float | None = 0.3
    gopher_max_dup_line_char_frac: float | None = 0.2
    gopher_max_dup_para_char_frac: float | None = 0.2
    # m3w counts the top n-gram only when it repeats (datatrove also counts a single occurrence).
    gopher_top_ngram_char_frac: dict[int, float] | None = field(default_factory=lambda: {2: 0.20, 3: 0.18, 4: 0.16})
    gopher_dup_ngram_char_frac: dict[int, float] | None = field(
        default_factory=lambda: {5: 0.15, 6: 0.14, 7: 0.13, 8: 0.12, 9: 0.11, 10: 0.10}
    )
    flagged_words_file: str | None = None  # one word per line; None = the bundled list
    common_words_file: str | None = None  # one word per line; None = wordfreq's English list (OBELICS's own is not published with its code)
    url_domain_blocklist_file: str | None = None  # one domain per line
    url_substring_blocklist_file: str | None = None  # one substring per line


@dataclass
class ImageConfig:
    """Decode, filter, resize and hash (pipeline/images.py). M3W: drop small, extreme aspect, single colour."""

    min_side: int | None = 64  # Flamingo paper: images smaller than 64 px removed
    max_side: int | None = 20_000  # OBELICS upper bound
    max_aspect_ratio: float | None = 3.0  # long/short side; OBELICS keeps 0.5–2, the paper only says "extreme"
    min_pixel_std: float | None = 2.0  # single colour: near-zero pixel standard deviation (0–255 scale)
    allowed_formats: list[str] | None = field(default_factory=lambda: ["jpeg", "png", "webp", "gif", "bmp", "tiff"])
    min_bytes: int | None = 1_000  # below this: pixels, spacers, icons
    max_bytes: int | None = 20_000_000
    url_keywords: list[str] | None = field(
        default_factory=lambda: ["logo", "icon", "button", "banner", "sprite", "avatar", "widget", "plugin"]
    )
    max_images_per_doc: int | None = 30  # OBELICS
    resize_longest_side: int | None = 640  # room for 480 px fine-tuning above Flamingo's 320 px training
    encode_format: str = "jpeg"  # "jpeg" | "webp" | "keep"
    encode_quality: int = 90
    keep_originals: bool = False
    max_docs_per_image: int | None = 10  # OBELICS: images in > 10 documents (logos, buttons) removed
    fetch: bool = False  # --fetch-images


@dataclass
class FetchConfig:
    """The image fetcher for URLs the crawl lacks (pipeline/fetch.py)."""

    user_agent: str = "m3w-image-fetcher/0.1 (+https://github.com/m3w)"  # product token "m3w-image-fetcher" is matched in robots.txt
    timeout_s: float = 10.0  # per attempt: connect + headers + body (img2dataset default)
    max_bytes: int = 20_000_000  # body cap; same as images.max_bytes
    retries: int = 2  # extra attempts on 5xx, 429, timeouts and dropped connections
    backoff_s: float = 0.5  # wait before retry n is backoff_s * 2**n
    per_host_concurrency: int = 2  # requests in flight per host
    per_host_rate: float | None = 4.0  # requests started per second per host (robots.txt and retries included)
    concurrency: int = 32  # fetch threads per worker
    respect_robots: bool = True  # robots.txt (RFC 9309) and X-Robots-Tag noai/noimageai/noindex/noimageindex
    max_crawl_delay_s: float = 10.0  # a robots.txt Crawl-delay above this is capped (slower hosts would stall a worker)
    max_robots_bytes: int = 500_000  # RFC 9309 asks crawlers to parse at least 500 KiB
    max_redirects: int = 5  # RFC 9309 / browsers follow at least 5
    allow_private_addresses: bool = False  # only for tests against a loopback server
    allowed_networks: list[str] | None = None  # CIDRs exempt from the private-address refusal (a test server, an intranet mirror)
    # Caps applied before any request (a page with 5,000 <img> must not cost 5,000 requests):
    candidate_margin: int = 10  # per document, candidates fetched past images.max_images_per_doc in DOM order, for ones that fail
    max_candidates_per_doc: int | None = 100  # a document's image URLs fetched at most, whatever the image cap (null: no cap)
    max_requests_per_host: int | None = 10_000  # per run, robots.txt/retries/redirect hops included: ~42 min of one host at 4 req/s
    declared_pixel_ratio: float = 2.0  # declared sizes are CSS px: a 2x (retina) file is assumed before images.min_side is applied


@dataclass
class DedupConfig:
    """Deduplication (dedup/)."""

    url: bool = True  # exact URL dedup, newest capture kept (OBELICS)
    minhash: bool = True
    minhash_ngram: int = 5  # word 5-gram shingles (datatrove)
    # 14 bands x 8 rows (datatrove): S-curve midpoint (1/b)^(1/r) ≈ 0.72; pairs at Jaccard 0.8 are
    # caught with p = 0.92, at 0.9 with p > 0.999, at 0.5 with p = 0.05 (docs/bench/dedup.md)
    minhash_bands: int = 14
    minhash_rows: int = 8
    minhash_seed: int = 1  # salt of the shingle hashes; change it and every signature changes
    minhash_batch_size: int = 256  # documents per vectorised signature batch
    minhash_cluster_rounds: int = 4  # min-label propagation rounds over LSH star edges (cluster hops reached)
    paragraph_max_per_domain: int | None = 2  # OBELICS: a paragraph seen > 2 times in a domain is removed
    image_set: bool = True  # documents with an identical image set deduplicated (OBELICS)


@dataclass
class DecontaminationConfig:
    """Evaluation-set decontamination by FAISS nearest neighbours (dedup/eval_index.py)."""

    index: str | None = None  # --eval-index PATH
    # 256-bit pHash of the stored bytes: on 2,370 real edits and 10,000 distinct real images it meets
    # every recall target with no false match up to distance 60; 64-bit pHash (ImageNode.phash) meets
    # them only at 8, where its false-match rate per pair is 3x higher (docs/bench/dedup.md).
    feature: str = "phash256"  # "phash64" | "phash256" (the index must hold it: build-m3w eval-index --feature)
    max_hamming_distance: int = 56  # of `feature`; targets met for 42-81, first false pair at 64
    trim_borders: bool = True  # also search each bordered/letterboxed image without its border
    # Dense embeddings as Flamingo did (nearest neighbours over visual features): "thumbnail16"
    # (built in, no weights) or "package.module:factory" called with embedder_weights (a local path).
    embedder: str | None = None  # None: perceptual hashes only
    embedder_weights: str | None = None
    min_cosine: float = 0.95  # not calibrated: set it from your embedder's own positives/negatives
    drop: str = "image"  # "image" | "document"


@dataclass
class OutputConfig:
    formats: list[str] = field(default_factory=lambda: ["wds", "parquet"])
    shard_size: int = 1000  # documents per shard (target; shards are hash-assigned)
    rejects: bool = True
    rejects_sample_rate: float = 1.0  # keep this fraction of rejects (counters always count all)


@dataclass
class Config:
    version: int = CONFIG_VERSION
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    extract: ExtractConfig = field(default_factory=ExtractConfig)
    language: LanguageConfig = field(default_factory=LanguageConfig)
    text_filters: TextFilterConfig = field(default_factory=TextFilterConfig)
    images: ImageConfig = field(default_factory=ImageConfig)
    fetch: FetchConfig = field(default_factory=FetchConfig)
    dedup: DedupConfig = field(default_factory=DedupConfig)
    decontamination: DecontaminationConfig = field(default_factory=DecontaminationConfig)
    output: OutputConfig = field(default_factory=OutputConfig)


# ---------------------------------------------------------------------------------------------


def _check_type(value: Any, hint: Any, where: str) -> Any:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(hint)
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _check_type(value, a, where)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"{where}: unexpected value {value!r}")
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"config key {where}: expected a list, got {value!r}")
        (item,) = typing.get_args(hint)
        return [_check_type(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"config key {where}: expected a mapping, got {value!r}")
        kt, vt = typing.get_args(hint)
        return {_check_type(k, kt, where): _check_type(v, vt, f"{where}.{k}") for k, v in value.items()}
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint in (int, float, str, bool):
        if not isinstance(value, hint) or (hint is not bool and isinstance(value, bool)):
            raise ConfigError(f"config key {where}: expected {hint.__name__}, got {value!r}")
        return value
    raise ConfigError(f"config key {where}: unsupported type {hint}")


def _build(cls: type, data: dict[str, Any], where: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"config section {where or 'top level'}: expected a mapping")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(
            f"unknown config key {where + '.' if where else ''}{unknown[0]}; valid keys: {', '.join(sorted(names))}"
        )
    kwargs = {}
    for name, value in data.items():
        hint = hints[name]
        key = f"{where}.{name}" if where else name
        if dataclasses.is_dataclass(hint):
            kwargs[name] = _build(hint, value or {}, key)
        else:
            kwargs[name] = _check_type(value, hint, key)
    return cls(**kwargs)


def config_from_dict(data: dict[str, Any]) -> Config:
    cfg = _build(Config, data or {}, "")
    if cfg.version != CONFIG_VERSION:
        raise ConfigError(f"config version {cfg.version} is not supported; this m3w reads version {CONFIG_VERSION}")
    return cfg


def load_config(path: str | None = None) -> Config:
    """Read a config file (default: the bundled m3w.yaml); keys left out keep their defaults."""
    path = path or DEFAULT_CONFIG_PATH
    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} not found; pass an existing file to --config") from None
    except yaml.YAMLError as e:
        line = getattr(getattr(e, "problem_mark", None), "line", None)
        at = f" at line {line + 1}" if line is not None else ""
        raise ConfigError(f"config file {path} is not valid YAML{at}; fix the syntax there") from None
    return config_from_dict(data or {})


def config_to_dict(cfg: Config) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def dump_config(cfg: Config) -> str:
    """The resolved config as YAML, saved beside the outputs."""
    return yaml.safe_dump(config_to_dict(cfg), sort_keys=False)
