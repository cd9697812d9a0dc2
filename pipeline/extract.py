"""HTML → interleaved text and image nodes in reading order (the DOM walker of ``build-m3w``).

One pass over the lexbor DOM (selectolax) collects text blocks and images in document order,
skipping scripts, hidden elements and boilerplate (navigation, headers, footers, menus, sidebars,
forms, cookie/share widgets, comment sections, related-article lists). Each block remembers the
chain of block containers it sits in, so a readability-style text-density score can then pick the
main-content container(s) without a second walk. Lists and tables become one text node each
(items and rows on their own lines); headings and paragraphs one node each.

``extract_nodes`` and ``extract_document`` are pure per-page functions; ``ExtractDocuments`` is
the Beam stage (Page → Document, with counted rejects).
"""
from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from urllib.parse import urljoin, urlsplit

import apache_beam as beam
from selectolax.lexbor import LexborHTMLParser

from pipeline.config import ExtractConfig, LimitsConfig
from pipeline.records import Page, Reject
from schemas.document import Document, ImageNode, Node, TextNode

STAGE = "extract"


class ExtractionError(Exception):
    """A page that yields no document; ``reason`` is the counter suffix (``dropped_<reason>``)."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


# ---------------------------------------------------------------------------------------------
# Element classes

# Never rendered as page content (or rendered as widgets, not prose).
_SKIP_TAGS = frozenset(
    "script style template svg math canvas iframe frame frameset object embed video audio map "
    "button input select textarea option datalist label dialog head title meta link noembed".split()
)
# Boilerplate by element type (HTML5 landmark semantics).
_BOILER_TAGS = frozenset("nav header footer aside form menu".split())
# Elements that start a new block of text (the CSS display:block family plus table/list parts).
_BLOCK_TAGS = frozenset(
    "address article aside blockquote body center dd details dir div dl dt fieldset figcaption "
    "figure footer form h1 h2 h3 h4 h5 h6 header hgroup hr li main nav ol p pre section summary "
    "table tbody thead tfoot tr td th caption ul html".split()
)
_HEADINGS = frozenset("h1 h2 h3 h4 h5 h6".split())
# Never dropped by class/id: they are the page, or the article itself.
_NEVER_DROP_BY_CLASS = frozenset("html body main article".split())

# class/id tokens of boilerplate blocks (prefix match at a token start: "comments-area", "share-bar").
_BOILER_CLASS = re.compile(
    r"(?:^|[\s_-])(?:nav|navbar|navigation|menu|breadcrumb|footer|header|masthead|sidebar|side-bar|"
    r"widget|cookie|consent|gdpr|share|sharing|sharedaddy|social|comment|disqus|related|recommend|"
    r"newsletter|subscribe|signup|promo|advert|ads|ad|sponsor|popup|modal|pagination|pager|"
    r"skip-link|skiplink|toolbar|tags|tagcloud|byline|author-bio|print-only|sr-only|screen-reader|"
    r"visually-hidden|visuallyhidden|hidden|offscreen|mw-editsection|navbox|printfooter|catlinks|"
    r"mw-jump|noprint)(?:s)?(?=$|[\s_-])"
)
# Containers that look like the article; a boilerplate token next to one of these is not trusted.
_CONTENT_CLASS = re.compile(r"(?:^|[\s_-])(?:article|content|main|post|entry|story|body|text)(?=$|[\s_-])")
# Readability's class weights.
_POSITIVE_CLASS = re.compile(r"article|body|content|entry|hentry|h-entry|main|page|pagination|post|text|blog|story")
_NEGATIVE_CLASS = re.compile(
    r"-ad-|hidden|^hid$| hid$| hid |^hid |banner|combx|comment|com-|contact|footer|gdpr|masthead|media|meta|"
    r"outbrain|promo|related|scroll|share|shoutbox|sidebar|skyscraper|sponsor|shopping|tags|widget"
)
_HIDDEN_STYLE = re.compile(r"display\s*:\s*none|visibility\s*:\s*hidden")
_WS = re.compile(r"\s+")

_TAG_SCORE = {
    "div": 5, "pre": 3, "td": 3, "blockquote": 3,
    "address": -3, "ol": -3, "ul": -3, "dl": -3, "dd": -3, "dt": -3, "li": -3, "form": -3,
    "h1": -5, "h2": -5, "h3": -5, "h4": -5, "h5": -5, "h6": -5, "th": -5,
}

# Lazy-loading attributes, in OBELICS's order (REFERENCE.md §2) plus common loaders' names.
_LAZY_SRC_ATTRS = (
    "data-src", "data-src-fg", "data-scroll-image", "data-lateloadsrc", "data-img-src", "data-original",
    "data-gt-lazy-src", "data-lazy", "data-lazy-src", "src2", "data-original-src", "data-hi-res-src",
    "data-full-src", "data-url",
)
_LAZY_SRCSET_ATTRS = ("data-srcset", "data-lazy-srcset", "data-original-set")
_IMAGE_URL = re.compile(r"\.(?:jpe?g|png|webp|gif|avif|bmp)(?:$|[?#])", re.I)
# src values that a lazy loader replaces: the real URL is in another attribute.
_PLACEHOLDER = re.compile(r"blank\.|placeholder|spacer|1x1|transparent\.|pixel\.gif|grey\.gif|loading|lazy", re.I)


# ---------------------------------------------------------------------------------------------
# Image URL resolution


def parse_srcset(srcset: str) -> list[tuple[str, float, str]]:
    """Candidates of a ``srcset`` as (url, value, unit) with unit "w" or "x" (HTML's parsing rules).

    URLs may contain commas (CDN transforms), so a candidate's URL runs to the next whitespace, and a
    trailing comma ends it.
    """
    out: list[tuple[str, float, str]] = []
    i, n = 0, len(srcset)
    while i < n:
        while i < n and (srcset[i].isspace() or srcset[i] == ","):
            i += 1
        if i >= n:
            break
        j = i
        while j < n and not srcset[j].isspace():
            j += 1
        url = srcset[i:j]
        desc = ""
        if url.endswith(","):
            url = url.rstrip(",")
        else:
            k = srcset.find(",", j)
            k = n if k < 0 else k
            desc = srcset[j:k].strip()
            j = k
        i = j
        if not url:
            continue
        value, unit = 1.0, "x"
        for d in desc.split():
            try:
                if d[-1] in "wx":
                    value, unit = float(d[:-1]), d[-1]
            except (ValueError, IndexError):
                continue
        out.append((url, value, unit))
    return out


def best_srcset_candidate(srcset: str) -> str | None:
    """The largest candidate: the one a high-density screen would fetch."""
    cands = parse_srcset(srcset)
    if not cands:
        return None
    widths = [c for c in cands if c[2] == "w"]
    pool = widths or cands
    return max(pool, key=lambda c: c[1])[0]


def _usable(url: str | None) -> bool:
    if not url:
        return False
    u = url.strip()
    return bool(u) and not u.lower().startswith(("data:", "javascript:", "about:", "blob:", "#"))


def image_url(attrs: dict, picture_sources: list[dict] | None = None) -> str | None:
    """The URL a browser (or the page's lazy loader) would show for an ``<img>``, unresolved.

    Lazy-load attributes win over ``src`` (the loader swaps them in); then ``src`` unless it is a
    placeholder; then the best ``srcset`` candidate; then ``<picture>`` sources; then any
    ``data-*`` attribute holding an image URL.
    """
    for a in _LAZY_SRC_ATTRS:
        v = attrs.get(a)
        if _usable(v):
            return v.strip()
    src = attrs.get("src")
    src_ok = _usable(src)
    if src_ok and not _PLACEHOLDER.search(src):
        return src.strip()
    for a in ("srcset", *_LAZY_SRCSET_ATTRS):
        v = attrs.get(a)
        if v:
            best = best_srcset_candidate(v)
            if _usable(best):
                return best
    for s in picture_sources or ():
        v = s.get("srcset") or s.get("data-srcset")
        if v:
            best = best_srcset_candidate(v)
            if _usable(best):
                return best
    for k, v in attrs.items():
        if k.startswith("data-") and v and _usable(v) and _IMAGE_URL.search(v) and " " not in v.strip():
            return v.strip()
    return src.strip() if src_ok else None


def _declared_px(v: str | None) -> int | None:
    if not v:
        return None
    v = v.strip().lower()
    if v.endswith("px"):
        v = v[:-2].strip()
    try:
        return int(float(v))
    except ValueError:
        return None  # "100%", "auto": not a pixel size


def _resolve(base: str, url: str) -> str | None:
    try:
        out = urljoin(base, url.strip().replace("\n", "").replace("\t", ""))
        scheme = urlsplit(out).scheme.lower()
    except ValueError:
        return None
    return out if scheme in ("http", "https") else None


# ---------------------------------------------------------------------------------------------
# The walk


@dataclass
class _Block:
    """A block element of the walk: the unit main-content scoring works on."""

    parent: int
    tag: str
    weight: int
    text_len: int = 0
    link_len: int = 0
    score: float = 0.0
    scored: bool = False


@dataclass
class _Figure:
    images: list = field(default_factory=list)
    caption: str = ""


class _Walker:
    """Collects items ``(block_id, kind, payload, link_len, group)`` in document order."""

    def __init__(self, base: str, cfg: ExtractConfig, limits: LimitsConfig) -> None:
        self.base = base
        self.cfg = cfg
        self.max_depth = limits.max_dom_depth or 1 << 30
        self.deadline = time.monotonic() + limits.parse_timeout_s if limits.parse_timeout_s else None
        self.blocks: list[_Block] = [_Block(-1, "#root", 0)]
        self.items: list[tuple] = []
        self.buf: list[str] = []
        self.buf_link = 0
        self.cur = 0
        self.link_depth = 0
        self.pre_depth = 0
        self.figures: list[_Figure] = []
        self.groups: list[int] = []  # innermost list/table row block ids, for merging
        self.img_unresolved = False
        self.depth_cut = False
        self.drop_patterns = [p.lower() for p in cfg.drop_image_url_patterns]
        self.images_dropped = 0

    # -- text buffer --
    def flush(self) -> None:
        if not self.buf:
            return
        raw = "".join(self.buf)
        self.buf = []
        link = self.buf_link
        self.buf_link = 0
        if self.pre_depth:
            text = raw.strip("\n")
        else:
            text = "\n".join(" ".join(line.split()) for line in raw.split("\n")).strip()
            if "\n\n" in text or "\n " in text:
                text = re.sub(r"\n\s*\n+", "\n", text)
        if not text:
            return
        self.items.append((self.cur, "t", text, link, self.blocks[self.cur].tag))

    def add_image(self, node, attrs: dict) -> None:
        w = _declared_px(attrs.get("width"))
        h = _declared_px(attrs.get("height"))
        sources = None
        parent = node.parent
        if parent is not None and parent.tag == "picture":
            sources = []
            c = parent.first_child
            while c is not None:
                if c.tag == "source":
                    sources.append(c.attributes)
                c = c.next
        raw = image_url(attrs, sources)
        if raw is None:
            self.img_unresolved = True
            self.images_dropped += 1
            return
        url = _resolve(self.base, raw)
        if url is None:
            self.images_dropped += 1
            return
        lo = url.lower()
        side = self.cfg.min_declared_image_side
        if side and ((w is not None and w < side) or (h is not None and h < side)):
            self.images_dropped += 1
            return
        for p in self.drop_patterns:
            if p in lo:
                self.images_dropped += 1
                return
        alt = " ".join((attrs.get("alt") or "").split()) if self.cfg.keep_alt_text else ""
        img = ImageNode(url=url, alt=alt, declared_width=w, declared_height=h)
        self.flush()
        self.img_unresolved = False
        self.items.append((self.cur, "i", img, 0, "img"))
        if self.figures:
            self.figures[-1].images.append(img)

    # -- the walk --
    def walk(self, root) -> None:
        boiler = self.cfg.remove_boilerplate
        blocks = self.blocks
        stack: list = [(root, 0)]
        steps = 0
        while stack:
            node, depth = stack.pop()
            if node is None:  # exit marker: depth holds the action
                self._exit(depth)
                continue
            steps += 1
            if self.deadline is not None and not steps & 255 and time.monotonic() > self.deadline:
                raise ExtractionError("parse_timeout", f"walk exceeded {self.deadline and 'the deadline'}")
            tag = node.tag
            if tag == "-text":
                t = node.text_content
                if t:
                    if not self.pre_depth:
                        t = _WS.sub(" ", t)
                        if t == " " and (not self.buf or self.buf[-1].endswith((" ", "\n"))):
                            continue
                    self.buf.append(t)
                    if self.link_depth:
                        self.buf_link += len(t)
                continue
            if tag is None or tag[0] == "-" or tag in _SKIP_TAGS:
                continue
            if depth >= self.max_depth:
                self.depth_cut = True
                continue
            attrs = node.attributes
            if attrs:
                if "hidden" in attrs or attrs.get("aria-hidden") == "true":
                    continue
                style = attrs.get("style")
                if style and _HIDDEN_STYLE.search(style.lower()):
                    continue
            if boiler and tag in _BOILER_TAGS:
                continue
            cls = ""
            if attrs:
                cls = f"{attrs.get('class') or ''} {attrs.get('id') or ''}".strip().lower()
                if boiler and cls and tag not in _NEVER_DROP_BY_CLASS and _BOILER_CLASS.search(cls):
                    if not _CONTENT_CLASS.search(cls):
                        continue
            if tag == "img":
                self.add_image(node, attrs)
                continue
            if tag == "br":
                self.buf.append("\n")
                continue
            if tag == "noscript":
                # Lazy loaders put the real <img> in <noscript>; use it only when the <img> before
                # it had no usable URL, or the page would show the image twice.
                if not self.img_unresolved:
                    continue
                self.img_unresolved = False
            action = None
            if tag in _BLOCK_TAGS:
                self.flush()
                weight = 0
                if cls:
                    if _NEGATIVE_CLASS.search(cls):
                        weight -= 25
                    if _POSITIVE_CLASS.search(cls):
                        weight += 25
                blocks.append(_Block(self.cur, tag, weight))
                action = ("b", self.cur)
                self.cur = len(blocks) - 1
                if tag == "pre":
                    self.pre_depth += 1
                elif tag == "figure":
                    self.figures.append(_Figure())
                elif tag == "figcaption" and self.figures:
                    self.figures[-1].caption = " ".join(node.text(deep=True).split())
            elif tag == "a":
                self.link_depth += 1
                action = ("a", 0)
            if action is not None:
                stack.append((None, action))
            c = node.last_child
            d = depth + 1
            while c is not None:
                stack.append((c, d))
                c = c.prev
        self.flush()

    def _exit(self, action) -> None:
        kind, prev = action
        if kind == "a":
            self.link_depth -= 1
            return
        self.flush()
        tag = self.blocks[self.cur].tag
        if tag == "pre":
            self.pre_depth -= 1
        elif tag == "figure":
            fig = self.figures.pop()
            if fig.caption and self.cfg.keep_alt_text:
                for img in fig.images:
                    if not img.alt:
                        img.alt = fig.caption
        self.cur = prev


# ---------------------------------------------------------------------------------------------
# Main content


def _select_main(blocks: list[_Block], items: list[tuple]) -> set[int] | None:
    """Block ids whose items form the main content (readability's scoring), or None for all."""
    # Subtree text and link lengths.
    total = 0
    for bid, kind, payload, link, _ in items:
        if kind != "t":
            continue
        n = len(payload)
        total += n
        b = bid
        while b >= 0:
            blk = blocks[b]
            blk.text_len += n
            blk.link_len += link
            b = blk.parent
    if total == 0:
        return None
    # Paragraph scores flow to the paragraph's ancestors (parent 1, grandparent 1/2, then 1/(3·level)).
    candidates: list[int] = []
    for bid, kind, payload, link, tag in items:
        if kind != "t" or len(payload) < 25 or tag in _HEADINGS:
            continue
        score = 1 + payload.count(",") + min(len(payload) // 100, 3)
        anc = blocks[bid].parent if tag in ("p", "pre", "td", "div", "li", "blockquote", "section", "article") else bid
        level = 0
        while anc > 0 and level < 5:
            blk = blocks[anc]
            if not blk.scored:
                blk.scored = True
                blk.score = _TAG_SCORE.get(blk.tag, 0) + blk.weight
                candidates.append(anc)
            blk.score += score / (1 if level == 0 else 2 if level == 1 else level * 3)
            anc = blk.parent
            level += 1
    if not candidates:
        return None
    best, best_score = -1, float("-inf")
    for c in candidates:
        blk = blocks[c]
        ld = blk.link_len / blk.text_len if blk.text_len else 0.0
        blk.score *= 1 - ld
        if blk.score > best_score:
            best, best_score = c, blk.score
    top = blocks[best]
    # A top candidate holding little of the page's text is likely one block of a list of teasers:
    # readability's fallback is the whole page.
    selected = {best}
    threshold = max(10.0, best_score * 0.2)
    for c in candidates:
        if c != best and blocks[c].parent == top.parent and blocks[c].score >= threshold:
            selected.add(c)
    return selected


def _in_selection(bid: int, blocks: list[_Block], selected: set[int], cache: dict[int, bool]) -> bool:
    path = []
    b = bid
    result = False
    while b >= 0:
        if b in cache:
            result = cache[b]
            break
        if b in selected:
            result = True
            break
        path.append(b)
        b = blocks[b].parent
    for p in path:
        cache[p] = result
    return result


# ---------------------------------------------------------------------------------------------
# Public API


def _assemble(items: list[tuple], blocks: list[_Block], min_chars: int) -> list[Node]:
    """Items → nodes: list items merged into one node per list, table cells into rows and tables."""
    nodes: list[Node] = []
    prev_group = None
    for bid, kind, payload, _, tag in items:
        if kind == "i":
            nodes.append(payload)
            prev_group = None
            continue
        group = None
        sep = "\n"
        if tag == "li" or tag == "dd" or tag == "dt":
            group = ("list", blocks[bid].parent)
        elif tag in ("td", "th"):
            row = blocks[bid].parent
            table = blocks[row].parent if row >= 0 else -1
            while table > 0 and blocks[table].tag in ("tbody", "thead", "tfoot"):
                table = blocks[table].parent
            group = ("table", table, row)
        if group is not None and prev_group is not None and nodes and isinstance(nodes[-1], TextNode):
            if group[:2] == prev_group[:2]:
                if group[0] == "table" and group[2] == prev_group[2]:
                    sep = " | "
                nodes[-1] = TextNode(nodes[-1].text + sep + payload)
                prev_group = group
                continue
        nodes.append(TextNode(payload))
        prev_group = group
    if min_chars > 1:
        nodes = [n for n in nodes if not isinstance(n, TextNode) or len(n.text) >= min_chars]
    return nodes


def _html_too_large(html: str, limit: int | None) -> bool:
    if limit is None or len(html) <= limit // 4:
        return False
    return len(html) > limit or len(html.encode("utf-8", "surrogatepass")) > limit


def extract_nodes(
    html: str, base_url: str, cfg: ExtractConfig = ExtractConfig(), limits: LimitsConfig = LimitsConfig()
) -> tuple[list[Node], str | None]:
    """One page's text and image nodes in reading order, and its ``<title>``.

    Raises ``ExtractionError`` with reason ``html_too_large`` or ``parse_timeout``; everything else
    about the page is best effort (a page with nothing in it gives an empty list).
    """
    if _html_too_large(html, limits.max_html_bytes):
        raise ExtractionError("html_too_large", f"{len(html)} characters")
    tree = LexborHTMLParser(html)
    title = None
    t = tree.css_first("title")
    if t is not None:
        title = " ".join(t.text(deep=True).split()) or None
    base = base_url
    b = tree.css_first("base[href]")
    if b is not None:
        href = (b.attributes.get("href") or "").strip()
        if href:
            base = urljoin(base_url, href)
    root = tree.body or tree.root
    if root is None:
        return [], title
    walker = _Walker(base, cfg, limits)
    walker.walk(root)
    items = walker.items
    if cfg.main_content:
        selected = _select_main(walker.blocks, items)
        if selected is not None:
            cache: dict[int, bool] = {}
            kept = [it for it in items if _in_selection(it[0], walker.blocks, selected, cache)]
            if sum(len(it[2]) for it in kept if it[1] == "t") >= cfg.main_content_min_chars:
                items = kept
    return _assemble(items, walker.blocks, cfg.min_text_chars), title


def extract_document(page: Page, cfg: ExtractConfig = ExtractConfig(), limits: LimitsConfig = LimitsConfig()) -> Document:
    """A Page as a Document with the page's provenance. Raises ``ExtractionError`` (no_content, ...)."""
    nodes, title = extract_nodes(page.html, page.url, cfg, limits)
    if not any(isinstance(n, TextNode) for n in nodes):
        raise ExtractionError("no_content", f"{len(nodes)} images, no text")
    return Document(url=page.url, provenance=page.provenance, nodes=nodes, title=title)


class _ExtractFn(beam.DoFn):
    def __init__(self, cfg: ExtractConfig, limits: LimitsConfig) -> None:
        self.cfg = cfg
        self.limits = limits
        self.pages = beam.metrics.Metrics.counter("m3w", f"{STAGE}.pages")
        self.documents = beam.metrics.Metrics.counter("m3w", f"{STAGE}.documents")
        self.images_found = beam.metrics.Metrics.counter("m3w", f"{STAGE}.images_found")
        self.dropped: dict[str, beam.metrics.metric.Metrics.DelegatingCounter] = {}

    def _drop(self, reason: str):
        c = self.dropped.get(reason)
        if c is None:
            c = self.dropped[reason] = beam.metrics.Metrics.counter("m3w", f"{STAGE}.dropped_{reason}")
        return c

    def process(self, page: Page):
        self.pages.inc()
        try:
            doc = extract_document(page, self.cfg, self.limits)
        except ExtractionError as e:
            self._drop(e.reason).inc()
            yield beam.pvalue.TaggedOutput("rejects", Reject.of(STAGE, e.reason, page.provenance, page.url, e.detail))
            return
        except (ValueError, UnicodeError, RecursionError) as e:  # lexbor on malformed input
            self._drop("parse_error").inc()
            yield beam.pvalue.TaggedOutput(
                "rejects", Reject.of(STAGE, "parse_error", page.provenance, page.url, f"{type(e).__name__}: {e}")
            )
            return
        self.documents.inc()
        self.images_found.inc(len(doc.images))
        yield doc


class ExtractDocuments(beam.PTransform):
    """PCollection[Page] → DoOutputsTuple: ``documents`` (Document, main) and ``rejects`` (Reject)."""

    def __init__(self, cfg: ExtractConfig | None = None, limits: LimitsConfig | None = None, label: str | None = None):
        super().__init__(label)
        self.cfg = cfg or ExtractConfig()
        self.limits = limits or LimitsConfig()

    def expand(self, pages):
        return pages | "WalkDom" >> beam.ParDo(_ExtractFn(self.cfg, self.limits)).with_outputs(
            "rejects", main="documents"
        )
