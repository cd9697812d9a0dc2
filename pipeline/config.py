"""The build configuration: versioned YAML recipes (``pipeline/presets/*.yaml``) mapped onto dataclasses.

A preset is a corpus recipe: ``m3w`` (the default: Flamingo's M3W as the paper and the rules it
cites define it), ``obelics`` and ``mmc4`` (as they published theirs). A user's file overrides the
preset key by key. Every threshold has a default here; ``pipeline/presets/m3w.yaml`` holds the
same values (a test keeps them equal), each commented with its source. ``None`` turns a check off.

Every value is checked when the file is loaded, so a run never starts with one that would crash
it, hang it or silently switch a check off: its type, then the rule its annotation carries (a
range, a set of allowed values, a file that must exist, a network that must parse). NaN and
infinity are refused everywhere; unknown keys are refused with the closest valid key. Each
mistake is a ``ConfigError`` with one line that names the key and says what is allowed.
"""
from __future__ import annotations

import codecs
import dataclasses
import difflib
import importlib
import ipaddress
import math
import os
import re
import types
import typing
from dataclasses import dataclass, field
from typing import Annotated, Any, Callable

import yaml

CONFIG_VERSION = 1
PRESETS_DIR = os.path.join(os.path.dirname(__file__), "presets")
DEFAULT_PRESET = "m3w"
DEFAULT_CONFIG_PATH = os.path.join(PRESETS_DIR, f"{DEFAULT_PRESET}.yaml")  # equal to the dataclass defaults
MAX_CONFIG_BYTES = 1_000_000  # a config is a few KB; anything larger is the wrong file
_INT_LIMIT = 2**62  # beyond this, sizes overflow the C and numpy code they reach


class ConfigError(ValueError):
    """A user mistake in the config file; the message is one line that says what to fix."""


# ---------------------------------------------------------------------------------------------
# Rules: what a value must be besides its type. A field's annotation carries its rule
# (``Annotated[int, Rule(lo=1)]``); the aliases below name the common ones.


def _from(module: str, attr: str) -> Callable[[], tuple[str, ...]]:
    """Allowed values read from the module that uses them, imported only when checked."""
    return lambda: tuple(getattr(importlib.import_module(module), attr))


@dataclass(frozen=True)
class Rule:
    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False  # lo itself is not allowed (a time limit of 0 s is no limit)
    choices: tuple[str, ...] | Callable[[], tuple[str, ...]] | None = None
    kind: str | None = None  # "file", "path", "uri_or_file", "cidr", "language", "pattern", "header", "embedder"
    nonempty: bool = False  # lists: at least one item (null, where allowed, turns the check off)
    unique: bool = False  # lists: no item twice

    def allowed_choices(self) -> tuple[str, ...]:
        return self.choices() if callable(self.choices) else tuple(self.choices or ())

    def describe(self, base: Any) -> str:
        """What is allowed, in words: ``an integer >= 1``, ``one of wds, parquet``."""
        if self.choices is not None:
            return "one of " + ", ".join(self.allowed_choices())
        if self.kind:
            return _KIND_WORDS[self.kind]
        noun = "an integer" if base is int else "a number"
        lo, hi = self.lo, self.hi
        if lo is not None and hi is not None and not self.lo_open:
            return f"{noun} from {_num(lo)} to {_num(hi)}"
        parts = []
        if lo is not None:
            parts.append(f"{'>' if self.lo_open else '>='} {_num(lo)}")
        if hi is not None:
            parts.append(f"<= {_num(hi)}")
        return f"{noun} {' and '.join(parts)}" if parts else f"a finite {noun[2:] if base is float else 'integer'}"

    def check(self, value: Any, key: str) -> None:
        if isinstance(value, list):
            if self.nonempty and not value:
                raise ConfigError(f"config key {key}: expected at least one item, got []")
            if self.unique and len(set(value)) != len(value):
                dup = next(v for i, v in enumerate(value) if v in value[:i])
                raise ConfigError(f"config key {key}: {dup!r} is listed twice; list each item once")
            return
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            hi = self.hi if self.hi is not None else (_INT_LIMIT if isinstance(value, int) else None)
            below = self.lo is not None and (value <= self.lo if self.lo_open else value < self.lo)
            if below or (hi is not None and value > hi):
                raise _Mismatch
            return
        if self.choices is not None:
            allowed = self.allowed_choices()
            if value not in allowed:
                near = difflib.get_close_matches(str(value), allowed, n=1)
                hint = f" (did you mean {near[0]}?)" if near else ""
                raise ConfigError(f"config key {key}: {_short(value)} is not allowed{hint}; use one of {', '.join(allowed)}")
        if self.kind:
            problem = _KIND_CHECKS[self.kind](value)
            if problem:
                raise ConfigError(f"config key {key}: {_short(value)} {problem}")


def _num(x: float) -> str:
    return f"{x:,}".replace(",", "_") if isinstance(x, int) and abs(x) >= 100_000 else str(x)


def _short(value: Any, n: int = 60) -> str:
    """``value`` as the error shows it: YAML's words for true/false/null, at most ``n`` characters."""
    s = {True: "true", False: "false", None: "null"}.get(value, repr(value)) if isinstance(value, (bool, type(None))) else repr(value)
    return s if len(s) <= n else s[: n - 1] + "…"


def _file_problem(path: str) -> str | None:
    if not path:
        return "is an empty path; name a file, or null"
    if not os.path.exists(path):
        return f"does not exist (relative paths are read from {os.getcwd()}); name an existing file"
    if not os.path.isfile(path):
        return "is not a regular file; name a text file with one entry per line"
    try:
        decoder = codecs.getincrementaldecoder("utf-8")()
        with open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                decoder.decode(chunk)
            decoder.decode(b"", final=True)
    except OSError as e:
        return f"cannot be read ({e.strerror}); name a readable file"
    except UnicodeDecodeError:
        return "is not UTF-8 text; name a text file with one entry per line"
    return None


def _path_problem(path: str) -> str | None:
    if not path or not os.path.exists(path):
        return f"does not exist (relative paths are read from {os.getcwd()}); name an existing local path"
    return None


def _uri_or_file_problem(path: str) -> str | None:
    if "://" in path:
        return None  # a FileSystem URI: the runner reads it
    if not path or not os.path.isfile(path):
        return "is not an existing file; build one with `build-m3w eval-index` or give a FileSystem URI"
    return None


def _cidr_problem(net: str) -> str | None:
    try:
        ipaddress.ip_network(net, strict=False)
    except ValueError:
        return "is not an IP network; write one such as 127.0.0.1/32, 10.0.0.0/8 or ::1/128"
    return None


_LANGUAGE = re.compile(r"^[a-z]{2,3}([_-][A-Za-z0-9]{2,8})?$")
_EMBEDDER = re.compile(r"^(thumbnail16|[A-Za-z_][\w.]*:[A-Za-z_]\w*)$")

_KIND_CHECKS: dict[str, Callable[[str], str | None]] = {
    "file": _file_problem,
    "path": _path_problem,
    "uri_or_file": _uri_or_file_problem,
    "cidr": _cidr_problem,
    "language": lambda s: None if _LANGUAGE.match(s) else "is not a language code; use lower-case ISO 639 codes such as en, fr, de",
    "pattern": lambda s: None if s.strip() else "is empty and would match every URL; remove it",
    "header": lambda s: None
    if 0 < len(s) <= 512 and s.isascii() and s.isprintable() and s.split("/", 1)[0].strip()
    else "is not a usable User-Agent; use printable ASCII such as name/1.0 (+URL), at most 512 characters",
    "embedder": lambda s: None if _EMBEDDER.match(s) else "is not an embedder; use thumbnail16 or package.module:factory",
}
_KIND_WORDS = {
    "file": "an existing UTF-8 text file",
    "path": "an existing local path",
    "uri_or_file": "an existing file or a FileSystem URI",
    "cidr": "an IP network such as 127.0.0.1/32",
    "language": "a language code such as en",
    "pattern": "a non-empty URL substring",
    "header": "a printable ASCII User-Agent",
    "embedder": "thumbnail16 or package.module:factory",
}

Count = Annotated[int, Rule(lo=0)]  # 0, 1, 2, ...
Positive = Annotated[int, Rule(lo=1)]
NonNegative = Annotated[float, Rule(lo=0)]
Fraction = Annotated[float, Rule(lo=0, hi=1)]
Seconds = Annotated[float, Rule(lo=0, hi=86_400, lo_open=True)]  # 0 would be no limit at all; null is that
Delay = Annotated[float, Rule(lo=0, hi=86_400)]
TextFile = Annotated[str, Rule(kind="file")]
NgramSize = Annotated[int, Rule(lo=1, hi=63)]  # the text chain caches n-grams up to 63 words
UrlPattern = Annotated[str, Rule(kind="pattern")]
Language = Annotated[str, Rule(kind="language")]
Network = Annotated[str, Rule(kind="cidr")]


def OneOf(*choices: str) -> Any:
    return Annotated[str, Rule(choices=tuple(choices))]


Detector = Annotated[str, Rule(choices=_from("pipeline.langid", "DETECTORS"))]
# Named here rather than imported (both modules pull in Pillow and Beam); a test keeps them equal
# to pipeline.images._PILLOW_FORMATS and dedup.phash.FEATURES.
IMAGE_FORMATS = ("bmp", "gif", "ico", "jpeg", "png", "tiff", "webp")
FEATURE_BITS = {"phash64": 64, "phash256": 256, "phash64_trim": 64, "phash256_trim": 256}
ImageFormat = Annotated[str, Rule(choices=IMAGE_FORMATS)]
ImageFeature = Annotated[str, Rule(choices=tuple(FEATURE_BITS))]
# wds: webdataset (m3w's documents + their images); mmc4: MMC4's JSON per document, images
# inside (OpenFlamingo's loader); parquet: OBELICS's columns + image bytes. docs/FORMATS.md.
OUTPUT_FORMATS = ("wds", "mmc4", "parquet")
OutputFormat = OneOf(*OUTPUT_FORMATS)


@dataclass
class LimitsConfig:
    """Hostile-input limits; hitting one rejects the record with a counted reason."""

    max_record_bytes: Positive | None = 50_000_000  # larger WARC records are skipped unread (CC caps at ~1 MB)
    max_html_bytes: Positive | None = 5_000_000  # decoded HTML larger than this is not parsed
    max_dom_depth: Positive | None = 256  # deeper trees are cut here (browsers cap around 512)
    max_image_bytes: Positive | None = 20_000_000  # image payloads larger than this are rejected
    max_image_pixels: Positive | None = 89_478_485  # Pillow's own decompression-bomb limit
    # Peak bytes one image may take while decoded and converted (every buffer the image stage
    # holds at once, estimated from the header before decoding). 256 MiB keeps a worker near
    # 0.5 GB with the interpreter (issue 14: <= 1 GB for any hostile image) and admits a 60 Mpx
    # RGB photo (Pillow keeps RGB at 4 bytes per pixel).
    max_image_decode_bytes: Positive | None = 268_435_456
    parse_timeout_s: Seconds | None = 10.0  # per-page extraction time limit
    max_revisit_index: Positive | None = 2_000_000  # URLs/digests kept per WARC to resolve revisits (~150 B each)


@dataclass
class ExtractConfig:
    """DOM walk into interleaved text and image nodes (pipeline/extract.py)."""

    remove_boilerplate: bool = True  # nav/header/footer/menus/forms/comments/related lists
    boilerplate_max_share: Fraction = 0.5  # a boilerplate-looking element with more of the page's text than this is kept
    min_text_chars: Count = 1  # drop text nodes shorter than this after whitespace collapsing
    keep_alt_text: bool = True
    min_declared_image_side: Count | None = 16  # declared width/height below this: tracking pixel, spacer, UI icon
    drop_image_url_patterns: list[UrlPattern] = field(
        # OBELICS drops URLs containing logo, button, icon, plugin, widget; we add common pixels/spacers.
        default_factory=lambda: ["logo", "button", "icon", "plugin", "widget", "pixel", "spacer", "sprite", "avatar", "banner"]
    )
    main_content: bool = True  # keep only the densest content block(s) (readability's text-density score)
    main_content_min_chars: Count = 200  # below this the chosen block is a teaser, not the article: keep the page
    main_content_min_score: NonNegative = 15.0  # a winner below this (~3 paragraphs) is no evidence: keep the page (docs/bench/extraction.md)
    drop_title_heading: bool = True  # the heading that repeats <title> is dropped: the document keeps it as `title`


@dataclass
class LanguageConfig:
    """Offline language identification."""

    keep: Annotated[list[Language], Rule(nonempty=True, unique=True)] | None = field(default_factory=lambda: ["en"])  # None keeps every language
    # Score = share of the text's characters read as the detected language (pipeline/langid.py).
    # With the default detector, 0.8 keeps all 317 code-heavy Python docs pages (lowest 0.97) and
    # drops 152 of the 156 mostly French/German handbook pages (benchmarks/langid.py).
    # OBELICS: fastText probability >= 0.8 (a probability, not a share).
    min_score: Fraction | None = 0.8
    # resiliparse, re-read by CLD2 where it does not see a kept language; or resiliparse, cld2,
    # fasttext (lid.176), py3langid alone (docs/FILTERS.md, "Language ID")
    detector: Detector = "resiliparse+cld2"
    # Paragraph level (OBELICS has one, off in its published config): text nodes of at least this
    # many characters are identified one by one, and one read as a language outside `keep` (or
    # under min_score) is dropped; shorter ones are too short to identify. None: off.
    node_min_chars: Positive | None = None
    # share (m3w): the chunk vote above. probability (OBELICS): one prediction on the whole text,
    # lower-cased, scored by the detector's own probability (fasttext or py3langid only).
    score: OneOf("share", "probability") = "share"


@dataclass
class TextFilterConfig:
    """Paragraph- and document-level text filters: the m3w preset's values (Gopher's rules; the
    OBELICS keys its obelics preset sets).

    docs/FILTERS.md defines each measure and lists where m3w departs from its source.
    """

    # Paragraph (text node) level: the m3w preset keeps only OBELICS's repetition checks (Gopher
    # judges the whole page; pipeline/presets/m3w.yaml says why for each key).
    node_min_words: Count | None = None  # OBELICS: 4
    node_max_words: Count | None = None  # OBELICS: 1000
    node_max_char_10gram_repetition: Fraction | None = 0.1
    node_max_word_5gram_repetition: Fraction | None = 0.1
    node_max_special_char_ratio: Fraction | None = None  # OBELICS: 0.3
    node_min_stopword_ratio: Fraction | None = None  # OBELICS: 0.3
    node_max_flagged_word_ratio: Fraction | None = None  # OBELICS: 0.01
    # Document level: Gopher's 50-100,000 words (no OBELICS 2,000-word cap)
    doc_min_words: Count | None = 50
    doc_max_words: Count | None = 100_000
    doc_max_char_repetition: Fraction | None = None  # OBELICS: 0.1
    doc_max_word_repetition: Fraction | None = None  # OBELICS: 0.2
    doc_max_special_char_ratio: Fraction | None = None  # OBELICS: 0.275
    doc_min_stopword_ratio: Fraction | None = None  # OBELICS: 0.35
    doc_max_flagged_word_ratio: Fraction | None = 0.01  # stands in for the paper's SafeSearch filter
    # OBELICS punctuation and common-word ratios (config_filter_web_documents.yaml); off in m3w.
    # Definitions in docs/FILTERS.md.
    node_min_punctuation_ratio: Fraction | None = None  # OBELICS: 0.001
    node_punctuation_min_words: Count | None = 12  # OBELICS: shorter paragraphs (words and marks) pass the punctuation check
    node_min_common_word_ratio: Fraction | None = None  # OBELICS: 0.8
    doc_min_punctuation_ratio: Fraction | None = None  # OBELICS: 0.03
    doc_min_common_word_ratio: Fraction | None = None  # OBELICS: 0.9
    # OBELICS's KenLM perplexity (pipeline/perplexity.py): runs only with a local model file.
    doc_max_perplexity: NonNegative | None = None  # OBELICS: 1500
    perplexity_model: Annotated[str, Rule(kind="path")] | None = None  # a KenLM .arpa/.bin; None: the check is off
    doc_min_images: Count | None = 1
    doc_max_images: Count | None = None  # OBELICS: 30
    # Gopher quality (datatrove)
    gopher_min_mean_word_length: NonNegative | None = 3.0
    gopher_max_mean_word_length: NonNegative | None = 10.0
    gopher_max_symbol_word_ratio: NonNegative | None = 0.1  # max of '#' and ellipsis counts per word
    gopher_max_bullet_lines_ratio: Fraction | None = 0.9  # of non-blank lines (m3w joins paragraphs by blank lines)
    gopher_max_ellipsis_lines_ratio: Fraction | None = 0.3
    gopher_min_alpha_words_ratio: Fraction | None = 0.8
    gopher_min_stop_words: Count | None = 2
    # Gopher repetition (datatrove)
    gopher_max_dup_line_frac: Fraction | None = 0.3
    gopher_max_dup_para_frac: Fraction | None = 0.3
    gopher_max_dup_line_char_frac: Fraction | None = 0.2
    gopher_max_dup_para_char_frac: Fraction | None = 0.2
    # m3w counts the top n-gram only when it repeats (datatrove also counts a single occurrence).
    gopher_top_ngram_char_frac: dict[NgramSize, Fraction] | None = field(default_factory=lambda: {2: 0.20, 3: 0.18, 4: 0.16})
    gopher_dup_ngram_char_frac: dict[NgramSize, Fraction] | None = field(
        default_factory=lambda: {5: 0.15, 6: 0.14, 7: 0.13, 8: 0.12, 9: 0.11, 10: 0.10}
    )
    flagged_words_file: TextFile | None = None  # one word per line; None = the bundled list
    common_words_file: TextFile | None = None  # one word per line; None = wordfreq's English list (OBELICS's own is not published with its code)
    url_domain_blocklist_file: TextFile | None = None  # one domain per line
    url_substring_blocklist_file: TextFile | None = None  # one substring per line


@dataclass
class ImageConfig:
    """Decode, filter, resize and hash (pipeline/images.py). M3W: drop small, extreme aspect, single colour."""

    min_side: Positive | None = 64  # Flamingo paper: images smaller than 64 px removed
    max_side: Positive | None = 20_000  # OBELICS upper bound
    max_aspect_ratio: Annotated[float, Rule(lo=1)] | None = 3.0  # long/short side; OBELICS keeps 0.5–2, the paper only says "extreme"
    min_pixel_std: Annotated[float, Rule(lo=0, hi=255)] | None = 2.0  # single colour: near-zero pixel standard deviation (0–255 scale)
    allowed_formats: Annotated[list[ImageFormat], Rule(nonempty=True, unique=True)] | None = field(default_factory=lambda: ["jpeg", "png", "webp", "gif", "bmp", "tiff"])
    min_bytes: Count | None = 1_000  # below this: pixels, spacers, icons
    max_bytes: Positive | None = 20_000_000
    url_keywords: list[UrlPattern] | None = field(
        default_factory=lambda: ["logo", "icon", "button", "banner", "sprite", "avatar", "widget", "plugin"]
    )
    max_images_per_doc: Positive | None = 30  # OBELICS
    resize_longest_side: Positive | None = 640  # room for 480 px fine-tuning above Flamingo's 320 px training
    encode_format: OneOf("jpeg", "webp", "keep") = "jpeg"  # "jpeg" | "webp" | "keep"
    encode_quality: Annotated[int, Rule(lo=1, hi=100)] = 90
    keep_originals: bool = False
    max_docs_per_image: Positive | None = 10  # OBELICS: images in > 10 documents (logos, buttons) removed
    fetch: bool = False  # --fetch-images


@dataclass
class FetchConfig:
    """The image fetcher for URLs the crawl lacks (pipeline/fetch.py)."""

    user_agent: Annotated[str, Rule(kind="header")] = "m3w-image-fetcher/0.1 (+https://github.com/m3w)"  # product token "m3w-image-fetcher" is matched in robots.txt
    timeout_s: Seconds = 10.0  # per attempt: connect + headers + body (img2dataset default)
    max_bytes: Positive = 20_000_000  # body cap; same as images.max_bytes
    retries: Annotated[int, Rule(lo=0, hi=100)] = 2  # extra attempts on 5xx, 429, timeouts and dropped connections
    backoff_s: Delay = 0.5  # wait before retry n is backoff_s * 2**n
    per_host_concurrency: Annotated[int, Rule(lo=1, hi=1024)] = 2  # requests in flight per host
    per_host_rate: Annotated[float, Rule(lo=0, lo_open=True)] | None = 4.0  # requests started per second per host (robots.txt and retries included)
    concurrency: Annotated[int, Rule(lo=1, hi=1024)] = 32  # fetch threads per worker
    respect_robots: bool = True  # robots.txt (RFC 9309) and X-Robots-Tag noai/noimageai/noindex/noimageindex
    max_crawl_delay_s: Delay = 10.0  # a robots.txt Crawl-delay above this is capped (slower hosts would stall a worker)
    max_robots_bytes: Positive = 500_000  # RFC 9309 asks crawlers to parse at least 500 KiB
    max_redirects: Annotated[int, Rule(lo=0, hi=100)] = 5  # RFC 9309 / browsers follow at least 5
    allow_private_addresses: bool = False  # only for tests against a loopback server
    allowed_networks: list[Network] | None = None  # CIDRs exempt from the private-address refusal (a test server, an intranet mirror)
    # Caps applied before any request (a page with 5,000 <img> must not cost 5,000 requests):
    candidate_margin: Count = 10  # per document, candidates fetched past images.max_images_per_doc in DOM order, for ones that fail
    max_candidates_per_doc: Positive | None = 100  # a document's image URLs fetched at most, whatever the image cap (null: no cap)
    max_requests_per_host: Positive | None = 10_000  # per run, robots.txt/retries/redirect hops included: ~42 min of one host at 4 req/s
    declared_pixel_ratio: Annotated[float, Rule(lo=0, hi=16, lo_open=True)] = 2.0  # declared sizes are CSS px: a 2x (retina) file is assumed before images.min_side is applied


@dataclass
class DedupConfig:
    """Deduplication (dedup/)."""

    url: bool = True  # exact URL dedup, newest capture kept (OBELICS)
    minhash: bool = True
    minhash_ngram: NgramSize = 5  # word 5-gram shingles (datatrove)
    # 14 bands x 8 rows (datatrove): S-curve midpoint (1/b)^(1/r) ≈ 0.72; pairs at Jaccard 0.8 are
    # caught with p = 0.92, at 0.9 with p > 0.999, at 0.5 with p = 0.05 (docs/bench/dedup.md)
    minhash_bands: Annotated[int, Rule(lo=1, hi=1024)] = 14
    minhash_rows: Annotated[int, Rule(lo=1, hi=1024)] = 8
    minhash_seed: Count = 1  # salt of the shingle hashes; change it and every signature changes
    minhash_batch_size: Annotated[int, Rule(lo=1, hi=65_536)] = 256  # documents per vectorised signature batch
    minhash_cluster_rounds: Annotated[int, Rule(lo=1, hi=64)] = 4  # min-label propagation rounds over LSH star edges (cluster hops reached)
    paragraph_max_per_domain: Positive | None = 2  # OBELICS: a paragraph seen > 2 times in a domain is removed
    image_set: bool = True  # documents with an identical image set deduplicated (OBELICS)


@dataclass
class DecontaminationConfig:
    """Evaluation-set decontamination by FAISS nearest neighbours (dedup/eval_index.py)."""

    index: Annotated[str, Rule(kind="uri_or_file")] | None = None  # --eval-index PATH
    # 256-bit pHash of the stored bytes: on 2,370 real edits and 10,000 distinct real images it meets
    # every recall target with no false match up to distance 60; 64-bit pHash (ImageNode.phash) meets
    # them only at 8, where its false-match rate per pair is 3x higher (docs/bench/dedup.md).
    feature: ImageFeature = "phash256"  # "phash64" | "phash256" (the index must hold it: build-m3w eval-index --feature)
    max_hamming_distance: Count = 56  # of `feature`; targets met for 42-81, first false pair at 64
    trim_borders: bool = True  # also search each bordered/letterboxed image without its border
    # Dense embeddings as Flamingo did (nearest neighbours over visual features): "thumbnail16"
    # (built in, no weights) or "package.module:factory" called with embedder_weights (a local path).
    embedder: Annotated[str, Rule(kind="embedder")] | None = None  # None: perceptual hashes only
    embedder_weights: Annotated[str, Rule(kind="path")] | None = None
    min_cosine: Annotated[float, Rule(lo=-1, hi=1)] = 0.95  # not calibrated: set it from your embedder's own positives/negatives
    drop: OneOf("image", "document") = "image"  # "image" | "document"


@dataclass
class OutputConfig:
    formats: Annotated[list[OutputFormat], Rule(nonempty=True, unique=True)] = field(default_factory=lambda: ["wds", "parquet"])
    shard_size: Positive = 1000  # documents per shard (target; shards are hash-assigned)
    rejects: bool = True
    rejects_sample_rate: Fraction = 1.0  # keep this fraction of rejects (counters always count all)


def preset_names() -> tuple[str, ...]:
    """The bundled recipes, ``pipeline/presets/NAME.yaml``: the default first."""
    names = sorted(f[:-5] for f in os.listdir(PRESETS_DIR) if f.endswith(".yaml"))
    return tuple(sorted(names, key=lambda n: n != DEFAULT_PRESET))


def preset_path(name: str) -> str:
    if name not in preset_names():
        near = difflib.get_close_matches(name, preset_names(), n=1)
        hint = f" (did you mean {near[0]}?)" if near else ""
        raise ConfigError(f"unknown preset {name!r}{hint}; use one of {', '.join(preset_names())} (`build-m3w presets` lists them)")
    return os.path.join(PRESETS_DIR, f"{name}.yaml")


def preset_summary(name: str) -> str:
    """The first line of the preset file's header comment, without ``# Preset NAME:``."""
    with open(preset_path(name), encoding="utf-8") as f:
        first = f.readline().lstrip("#").strip()
    return re.sub(r"^Preset \S+( \(the default\))?:\s*", "", first)


@dataclass
class Config:
    version: int = CONFIG_VERSION
    preset: Annotated[str, Rule(choices=preset_names)] = DEFAULT_PRESET  # the recipe the other keys override
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


def _expected(hint: Any) -> str:
    """A type annotation in words, for error messages: ``an integer >= 1 or null``."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        words = " or ".join(_expected(a) for a in inner)
        return f"{words}, or null" if type(None) in args else words
    if origin is Annotated:
        base, rules = args[0], [r for r in args[1:] if isinstance(r, Rule)]
        if typing.get_origin(base) is list:
            (rule,) = rules
            item = _expected(typing.get_args(base)[0])
            many = "a list of at least one item" if rule.nonempty else "a list"
            return f"{many}, each {item}" + (", none twice" if rule.unique else "")
        return rules[0].describe(base)
    if origin is list:
        return f"a list, each {_expected(args[0])}"
    if origin is dict:
        return f"a mapping from {_expected(args[0])} to {_expected(args[1])}"
    return {int: "an integer", float: "a finite number", str: "a string", bool: "true or false"}.get(hint, str(hint))


class _Mismatch(Exception):
    """The value is not of the annotated type or outside its range; ``_check`` words the error."""


def _check(value: Any, hint: Any, key: str) -> Any:
    """``value`` converted to ``hint`` (an int where a float is expected) and checked against the
    rules ``hint`` carries; ``ConfigError`` naming ``key`` and what is allowed otherwise."""
    try:
        return _convert(value, hint, key)
    except _Mismatch:
        got = "null" if value is None else _short(value)
        raise ConfigError(f"config key {key}: expected {_expected(hint)}, got {got}") from None


def _convert(value: Any, hint: Any, key: str) -> Any:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for a in args:
            if a is not type(None):
                try:
                    return _convert(value, a, key)
                except _Mismatch:
                    continue
        raise _Mismatch
    if origin is Annotated:
        out = _convert(value, args[0], key)
        for rule in args[1:]:
            if isinstance(rule, Rule):
                rule.check(out, key)
        return out
    if origin is list:
        if not isinstance(value, list):
            raise _Mismatch
        return [_check(v, args[0], f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise _Mismatch
        kt, vt = args
        return {_check(k, kt, f"{key} (key {_short(k)})"): _check(v, vt, f"{key}.{k}") for k, v in value.items()}
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value) if abs(value) <= _INT_LIMIT else math.inf
    if hint not in (int, float, str, bool):
        raise ConfigError(f"config key {key}: unsupported type {hint}")
    if not isinstance(value, hint) or (hint is not bool and isinstance(value, bool)):
        raise _Mismatch
    if (hint is float and not math.isfinite(value)) or (hint is int and abs(value) > _INT_LIMIT):
        raise _Mismatch
    if hint is str and "\x00" in value:
        raise ConfigError(f"config key {key}: {_short(value)} contains a NUL character; remove it")
    return value


def _sections() -> dict[str, type]:
    hints = typing.get_type_hints(Config)
    return {name: hint for name, hint in hints.items() if dataclasses.is_dataclass(hint)}


def _did_you_mean(name: str, where: str, names: set[str]) -> str:
    """`` (did you mean images.min_side?)``: the same key in another section, else a close name here."""
    elsewhere = [f"{s}.{name}" for s, cls in _sections().items() if s != where and name in {f.name for f in dataclasses.fields(cls)}]
    if elsewhere:
        return f"; did you mean {elsewhere[0]}?"
    near = difflib.get_close_matches(name, sorted(names), n=1, cutoff=0.6)
    if near:
        return f"; did you mean {where + '.' if where else ''}{near[0]}?"
    return ""


def _build(cls: type, data: Any, where: str) -> Any:
    if not isinstance(data, dict):
        if not where:
            raise ConfigError(f"the config file holds {_short(data)}; it must be a mapping of sections such as `images:`")
        raise ConfigError(f"config section {where}: expected a mapping of keys to values (or null), got {_short(data)}")
    hints = typing.get_type_hints(cls, include_extras=True)
    names = {f.name for f in dataclasses.fields(cls)}
    for name in data:
        if not isinstance(name, str):
            raise ConfigError(f"config {'section ' + where if where else 'file'}: key {_short(name)} is not a name; keys are words such as {sorted(names)[0]}")
        if name not in names:
            full = f"{where}.{name}" if where else name
            hint = _did_you_mean(name, where, names)
            valid = "" if hint else f"; valid keys{' in ' + where if where else ''}: {', '.join(sorted(names))}"
            raise ConfigError(f"unknown config key {full}{hint or ''}{valid}")
    kwargs = {}
    for name, value in data.items():
        hint = hints[name]
        key = f"{where}.{name}" if where else name
        if dataclasses.is_dataclass(hint):
            kwargs[name] = _build(hint, {} if value is None else value, key)
        else:
            kwargs[name] = _check(value, hint, key)
    out = cls(**kwargs)
    _check_min_max(out, where)
    return out


_MIN = re.compile(r"(^|_)min(_|$)")


def _check_min_max(section: Any, where: str) -> None:
    """A ``*min*`` key above its ``*max*`` twin keeps nothing: refused, naming both."""
    for f in dataclasses.fields(section):
        twin = _MIN.sub(lambda m: f"{m.group(1)}max{m.group(2)}", f.name, count=1)
        if twin == f.name or not hasattr(section, twin):
            continue
        lo, hi = getattr(section, f.name), getattr(section, twin)
        if isinstance(lo, (int, float)) and isinstance(hi, (int, float)) and lo > hi:
            raise ConfigError(
                f"config key {where}.{f.name} ({lo}) is above {where}.{twin} ({hi}), so nothing would pass; lower it or raise {where}.{twin}"
            )


MAX_MINHASH_PERMUTATIONS = 8192  # bands x rows hash functions; datatrove uses 112


def _check_across(cfg: Config) -> None:
    """Rules that tie keys of different sections or several keys together."""
    lc = cfg.language
    if lc.score == "probability" and lc.detector not in ("fasttext", "py3langid"):
        raise ConfigError(
            f"config key language.score: probability needs language.detector fasttext or py3langid, not {lc.detector}"
        )
    d = cfg.dedup
    if d.minhash_bands * d.minhash_rows > MAX_MINHASH_PERMUTATIONS:
        raise ConfigError(
            f"config keys dedup.minhash_bands x dedup.minhash_rows = {d.minhash_bands * d.minhash_rows} hash functions; "
            f"at most {MAX_MINHASH_PERMUTATIONS} (datatrove: 14 x 8)"
        )
    dc = cfg.decontamination
    bits = FEATURE_BITS[dc.feature]
    if dc.max_hamming_distance > bits:
        raise ConfigError(
            f"config key decontamination.max_hamming_distance: expected an integer from 0 to {bits} "
            f"(the bits of {dc.feature}), got {dc.max_hamming_distance}"
        )


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing a key given twice in one mapping (the first would be ignored)."""

    def construct_mapping(self, node: Any, deep: bool = False) -> dict[Any, Any]:
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            try:
                dup = key in seen
                seen.add(key)
            except TypeError:  # an unhashable key; construct_mapping reports it
                break
            if dup:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} given twice (the first would be ignored)", key_node.start_mark
                )
        return super().construct_mapping(node, deep)


def allowed_values(section: str, key: str) -> str:
    """What ``section.key`` accepts, in words (docs/CONFIG.md's "allowed" column)."""
    hint = typing.get_type_hints(_sections()[section], include_extras=True)[key]
    return _expected(hint).replace("|", "/")


def config_from_dict(data: dict[str, Any] | None) -> Config:
    """The config that ``data`` (sections of keys, as in the YAML file) describes, every value checked."""
    cfg = _build(Config, {} if data is None else data, "")
    if cfg.version != CONFIG_VERSION:
        raise ConfigError(f"config version {cfg.version} is not supported; this m3w reads version {CONFIG_VERSION}")
    _check_across(cfg)
    return cfg


def read_yaml(path: str) -> Any:
    """The parsed YAML file at ``path``; ``ConfigError`` (one line) for anything that is not a
    readable, reasonably small, valid YAML text file."""
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_CONFIG_BYTES + 1)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} not found; pass an existing file to --config") from None
    except IsADirectoryError:
        raise ConfigError(f"config {path} is a directory; pass a YAML file to --config") from None
    except OSError as e:
        raise ConfigError(f"config file {path} cannot be read ({e.strerror}); pass a readable file to --config") from None
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError(f"config file {path} is larger than {MAX_CONFIG_BYTES:,} bytes; pass the YAML config, not a data file")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"config file {path} is not UTF-8 text (byte {e.start}); pass a YAML text file") from None
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
        at = f" at line {mark.line + 1}" if mark is not None else ""
        problem = " ".join(str(getattr(e, "problem", "") or "").split())
        why = f" ({problem})" if problem else ""
        raise ConfigError(f"config file {path} is not valid YAML{at}{why}; fix the syntax there") from None
    except RecursionError:
        raise ConfigError(f"config file {path} nests too deeply to be a config; pass the YAML config") from None


@dataclass
class ResolvedConfig:
    """A config and where each of its values came from."""

    config: Config
    file: str | None  # the user's file, whose keys override the preset's
    sources: dict[str, str]  # "section.key" -> "preset NAME", the file's path, or "default"

    @property
    def preset(self) -> str:
        return self.config.preset

    def source(self, key: str) -> str:
        return self.sources.get(key, "default")

    def set(self, key: str, value: Any, source: str) -> None:
        """``section.key = value`` from ``source`` (a command-line flag), checked as the file's are."""
        section, name = key.split(".", 1)
        hint = typing.get_type_hints(_sections()[section], include_extras=True)[name]
        try:
            checked = _check(value, hint, key)
        except ConfigError as e:
            raise ConfigError(f"{source}: {e}") from None
        setattr(getattr(self.config, section), name, checked)
        self.sources[key] = source


def resolve_config(path: str | None = None, preset: str | None = None) -> ResolvedConfig:
    """The preset (``preset``, else the file's ``preset:`` key, else m3w) with the keys of the
    file at ``path`` put over it one by one; every value checked."""
    user = read_yaml(path) if path else {}
    if user is None:
        user = {}
    if not isinstance(user, dict):
        raise ConfigError(f"the config file holds {_short(user)}; it must be a mapping of sections such as `images:`")
    named = user.get("preset")
    if preset is not None and named is not None and named != preset:
        raise ConfigError(f"config key preset: {path} says {named!r} but --preset says {preset!r}; drop one of them")
    name = preset or named or DEFAULT_PRESET
    if not isinstance(name, str):
        raise ConfigError(f"config key preset: expected one of {', '.join(preset_names())}, got {_short(name)}")
    base_path = preset_path(name)
    base = read_yaml(base_path) or {}
    merged: dict[str, Any] = {k: (dict(v) if isinstance(v, dict) else v) for k, v in base.items()}
    sources = {f"{s}.{k}": f"preset {name}" for s, v in base.items() if isinstance(v, dict) for k in v}
    for section, value in user.items():
        if isinstance(value, dict) and isinstance(merged.get(section), dict):
            merged[section].update(value)
        else:
            merged[section] = value
        if isinstance(value, dict):
            sources.update({f"{section}.{k}": path for k in value if isinstance(k, str)})
    merged["preset"] = name
    return ResolvedConfig(config_from_dict(merged), path, sources)


def load_config(path: str | None = None, preset: str | None = None) -> Config:
    """The preset (default m3w) with the keys of the file at ``path`` over it; keys neither sets
    keep the dataclass defaults."""
    return resolve_config(path, preset).config


def config_to_dict(cfg: Config) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def dump_config(cfg: Config, resolved: ResolvedConfig | None = None) -> str:
    """The resolved config as YAML, saved beside the outputs; with ``resolved``, a header says
    which preset it starts from and which keys the user's file changed."""
    body = yaml.safe_dump(config_to_dict(cfg), sort_keys=False)
    if resolved is None:
        return body
    head = [f"# m3w build config: preset {cfg.preset} ({os.path.relpath(preset_path(cfg.preset), os.path.dirname(PRESETS_DIR))})"]
    if resolved.file:
        changed = sorted(k for k, v in resolved.sources.items() if v == resolved.file)
        head.append(f"# overridden by {resolved.file}: {', '.join(changed) if changed else 'no keys'}")
    flags = sorted(f"{k} ({v})" for k, v in resolved.sources.items() if v.startswith("--"))
    if flags:
        head.append(f"# set by flags: {', '.join(flags)}")
    return "\n".join(head) + "\n" + body
