"""HTML → interleaved text and image nodes in reading order (the DOM walker of ``build-m3w``).

One pass over the lexbor DOM (selectolax) collects text blocks and images in document order. It
never enters scripts, hidden elements or boilerplate (navigation, headers, footers, menus,
sidebars, forms, cookie/share widgets, comment sections, related-article lists), except a hidden
or boilerplate-looking element that holds most of the page's text. Each block remembers its parent
block, so a readability-style text-density score can then pick the main-content block(s) without
a second walk. Lists and tables become one text node each (items and rows on their own lines);
headings and paragraphs one node each. Image URLs are resolved as browsers and lazy loaders do.

docs/bench/extraction.md has the measurements behind the choices (parser, detector, speed).

``extract_nodes`` and ``extract_document`` are pure per-page functions. The Beam stage
``ExtractDocuments`` (pipeline.extract_stage) runs them under a hard time limit per page
(pipeline.extract_guard).
"""
from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass, field
from urllib.parse import urljoin, urlsplit

from selectolax.lexbor import LexborHTMLParser

from pipeline.config import ExtractConfig, LimitsConfig
from pipeline.records import Page, Reject
from schemas.document import Document, ImageNode, Node, TextNode

STAGE = "extract"
# Why a page yields no document (counter ``extract.dropped_<reason>``, Reject.reason).
DROP_REASONS = ("html_too_large", "parse_timeout", "no_content", "parse_error", "hostile_markup")


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
_LANDMARK_TAGS = frozenset("nav header footer aside menu".split())
# Elements that start a new block of text (the CSS display:block family plus table/list parts).
_BLOCK_TAGS = frozenset(
    "address article aside blockquote body center dd details dir div dl dt fieldset figcaption "
    "figure footer form h1 h2 h3 h4 h5 h6 header hgroup hr li main nav ol p pre section summary "
    "table tbody thead tfoot tr td th caption ul html".split()
)
_HEADINGS = frozenset("h1 h2 h3 h4 h5 h6".split())
# What the walk does on entering an element (tags not listed: walk into it, inline).
_K_IMG, _K_BR, _K_NOSCRIPT, _K_LINK, _K_BLOCK, _K_ARTICLE = range(6)
_TAG_KINDS = {
    **{t: _K_BLOCK for t in _BLOCK_TAGS},
    "article": _K_ARTICLE, "main": _K_ARTICLE,
    "img": _K_IMG, "br": _K_BR, "noscript": _K_NOSCRIPT, "a": _K_LINK,
}
# Read without their attributes (speed): whether they are hidden or boilerplate is decided by
# their containers.
_NO_ATTR_TAGS = frozenset(
    "a b i em strong u small sup sub font abbr cite time mark q s strike bdi bdo var kbd samp tr td th tbody thead".split()
)
# Never dropped by class/id: they are the page, or the article itself.
_NEVER_DROP_BY_CLASS = frozenset("html body main article".split())

# class/id tokens of boilerplate blocks (prefix match at a token start: "comments-area", "share-bar").
_BOILER_CLASS = re.compile(
    r"(?:^|[\s_-])(?:nav|navbar|navigation|menu|breadcrumb|footer|sidebar|side-bar|cookie|consent|gdpr|"
    r"share|sharing|sharedaddy|social|comment|disqus|related|recommend|newsletter|subscribe|popup|modal|"
    r"pagination|pager|skip-link|skiplink|toolbar|tagcloud|print-only|sr-only|screen-reader|"
    r"visually-hidden|visuallyhidden|offscreen|mw-editsection|navbox|printfooter|catlinks|mw-jump|noprint)"
    r"(?:s)?(?=$|[\s_-])"
)
# Containers that look like the article; a boilerplate token next to one of these is not trusted.
_CONTENT_CLASS = re.compile(r"(?:^|[\s_-])(?:article|content|main|post|entry|story|body|text)(?=$|[\s_-])")
# Readability's class weights.
_POSITIVE_CLASS = re.compile(r"article|body|content|entry|hentry|h-entry|main|page|pagination|post|text|blog|story")
_NEGATIVE_CLASS = re.compile(
    r"-ad-|hidden|^hid$| hid$| hid |^hid |banner|combx|comment|com-|contact|footer|gdpr|masthead|media|meta|"
    r"outbrain|promo|related|scroll|share|shoutbox|sidebar|skyscraper|sponsor|shopping|tags|widget"
)
_HIDDEN_STYLE = re.compile(r"display\s*:\s*none|visibility\s*:\s*hidden", re.I)

_LEVEL_DIVISOR = (1, 2, 6, 9, 12)  # readability: parent, grandparent, then level × 3
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
_PLACEHOLDER_WORDS = (
    "blank.", "placeholder", "spacer", "1x1", "transparent.", "pixel.gif", "grey.gif", "loading", "lazy"
)
_PLACEHOLDER = re.compile("|".join(map(re.escape, _PLACEHOLDER_WORDS)), re.I)


def _has_any(url: str, words: tuple[str, ...], regex: re.Pattern) -> bool:
    """``regex`` (the case-insensitive alternation of ``words``) matches ``url``.

    ASCII URLs (nearly all) take substring tests on the lower-cased URL, several times faster than
    the case-insensitive regex; the rest keep the regex's Unicode case folding.
    """
    if url.isascii():
        low = url.lower()
        for w in words:
            if w in low:
                return True
        return False
    return regex.search(url) is not None


# ---------------------------------------------------------------------------------------------
# Image URL resolution


def parse_srcset(srcset: str) -> list[tuple[str, float, str]]:
    """Candidates of a ``srcset`` as (url, value, unit) with unit "w" or "x" (HTML's parsing rules).

    URLs may contain commas (CDN transforms), so a candidate's URL runs to the next whitespace; a
    comma after the URL or after its descriptors ends the candidate.
    """
    out: list[tuple[str, float, str]] = []
    url = None
    desc: list[str] = []

    def emit() -> None:
        value, unit = 1.0, "x"
        for d in desc:
            if d and d[-1] in "wx":
                try:
                    value, unit = float(d[:-1]), d[-1]
                except ValueError:
                    continue
        out.append((url, value, unit))

    for tok in srcset.split():
        if url is None:
            tok = tok.lstrip(",")
            if not tok:
                continue
            if tok.endswith(","):
                url, desc = tok.rstrip(","), []
                if url:
                    emit()
                url = None
            else:
                url, desc = tok, []
            continue
        d, comma, rest = tok.partition(",")
        desc.append(d)
        if comma:
            emit()
            url = None
            rest = rest.strip(",")
            if rest:  # "1x,next.jpg": the next URL follows the comma without a space
                url, desc = rest, []
    if url:
        emit()
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
    # JSON configs of script loaders ('{"default": ...}') and template placeholders are not URLs.
    return bool(u) and not u.lower().startswith(("data:", "javascript:", "about:", "blob:", "#", "{", "[", "<"))


def image_url(attrs: dict, picture_sources: list[dict] | None = None) -> str | None:
    """The URL a browser (or the page's lazy loader) would show for an ``<img>``, unresolved.

    ``src`` unless it is missing, a ``data:`` URI or a placeholder (OBELICS's and readability's
    order: it is also the URL crawlers fetch); then the lazy-load attributes a script swaps in;
    then the best ``srcset`` candidate; then ``<picture>`` sources; then any ``data-*`` attribute
    holding an image URL.
    """
    src = attrs.get("src")
    src_ok = _usable(src)
    if src_ok and not _has_any(src, _PLACEHOLDER_WORDS, _PLACEHOLDER):
        return src.strip()
    for a in _LAZY_SRC_ATTRS:
        v = attrs.get(a)
        if _usable(v):
            return v.strip()
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


class _Resolver:
    """Resolves attribute URLs against one page's base the way a browser does; None for non-http(s)."""

    def __init__(self, base: str) -> None:
        self.base = base
        try:
            parts = urlsplit(base)
        except ValueError:
            parts = None
        self.scheme = parts.scheme.lower() if parts else ""
        self.origin = f"{self.scheme}://{parts.netloc}" if parts and parts.netloc else ""

    def __call__(self, url: str) -> str | None:
        url = url.strip()
        if "\n" in url or "\t" in url or "\r" in url:
            url = url.replace("\n", "").replace("\t", "").replace("\r", "")  # browsers strip these
        # Fast paths for the common shapes; anything with dot segments or odd characters goes
        # through urljoin.
        if " " not in url and "/." not in url and "\\" not in url:
            if url.startswith(("http://", "https://")):
                return url
            if url.startswith("//") and self.scheme in ("http", "https"):
                return f"{self.scheme}:{url}"
            if url.startswith("/") and self.origin and self.scheme in ("http", "https"):
                return self.origin + url
        try:
            out = urljoin(self.base, url)
            scheme = urlsplit(out).scheme.lower()
        except ValueError:
            return None
        return out if scheme in ("http", "https") else None


def _resolve(base: str, url: str) -> str | None:
    return _Resolver(base)(url)


# ---------------------------------------------------------------------------------------------
# The walk


_BR = "\ue000"  # a <br> in the text buffer (private-use: never in real text, not whitespace)
_cls_cache: dict[str, bool] = {}
# lexbor tag id → tag name for the standard tags (ids below LXB_TAG__LAST_ENTRY are fixed; custom
# elements get per-document ids above it), filled as the walk meets them.
_LXB_TAG_LAST_ENTRY = 0x00C4
_TAG_NAMES: dict[int, str] = {}
_STATE_PREFIXES = ("has-", "is-", "js-", "with-", "no-", "show-", "hide-", "can-")


def _boiler_class(cls: str) -> bool:
    """class/id string names a boilerplate block (memoised: pages repeat their class names)."""
    hit = _cls_cache.get(cls)
    if hit is None:
        low = cls.lower()
        hit = False
        if _BOILER_CLASS.search(low) is not None and _CONTENT_CLASS.search(low) is None:
            # BEM modifiers and state classes ("fig--has-shares", "has-comments") describe the
            # element, they do not name a boilerplate block.
            names = [c for c in low.split() if "--" not in c and not c.startswith(_STATE_PREFIXES)]
            hit = any(_BOILER_CLASS.search(c) for c in names)
        if len(_cls_cache) > 100_000:
            _cls_cache.clear()
        _cls_cache[cls] = hit
    return hit


@dataclass
class _Walk:
    """What one pass over the DOM collected.

    ``items`` are ``(block, kind, payload, link_chars, block_tag)`` in document order, kind
    "t" (payload str) or "i" (payload ImageNode). Blocks are numbered in pre-order, so a
    parent's number is always below its children's.
    """

    items: list[tuple]
    bparent: list[int]  # block → parent block (-1 for the root)
    btag: list[str]
    bcls: list[str]  # "class id" of the block element, as written
    depth_cut: bool
    images_dropped: int


def _walk(root, base: str, cfg: ExtractConfig, limits: LimitsConfig) -> _Walk:
    """Pre-order walk of ``root`` with explicit exit markers (no recursion: deep trees are hostile input)."""
    boiler = cfg.remove_boilerplate
    keep_alt = cfg.keep_alt_text
    min_side = cfg.min_declared_image_side
    drop_words = tuple(p.lower() for p in cfg.drop_image_url_patterns or ())
    patterns = re.compile("|".join(map(re.escape, drop_words)), re.I) if drop_words else None
    max_depth = limits.max_dom_depth or 1 << 30
    deadline = time.monotonic() + limits.parse_timeout_s if limits.parse_timeout_s else None

    bparent, btag, bcls = [-1], ["#root"], [""]
    max_share = cfg.boilerplate_max_share
    resolve = _Resolver(base)
    page_chars = -1  # text length of the whole page, measured when first needed
    items: list[tuple] = []
    buf: list[str] = []
    figures: list[list] = []  # [images, caption] per open <figure>
    uncaptioned: list[ImageNode] = []  # images since the last text: a caption block that follows names them
    cur = 0
    link_depth = buf_link = pre_depth = article_depth = 0
    img_unresolved = depth_cut = False
    images_dropped = 0

    def flush() -> None:
        nonlocal buf_link
        raw = "".join(buf)
        buf.clear()
        link, buf_link = buf_link, 0
        if pre_depth:
            text = raw.replace(_BR, "\n").strip("\n")
            if not text.strip():
                return
        elif _BR in raw:
            text = "\n".join(t for t in (" ".join(p.split()) for p in raw.split(_BR)) if t)
        else:
            text = " ".join(raw.split())
        if text:
            items.append((cur, "t", text, link, btag[cur]))
            uncaptioned.clear()

    def add_image(node, attrs: dict) -> None:
        nonlocal img_unresolved, images_dropped
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
            img_unresolved = True
            images_dropped += 1
            return
        url = resolve(raw)
        w = _declared_px(attrs.get("width"))
        h = _declared_px(attrs.get("height"))
        if (
            url is None
            # 0 is a common "auto" placeholder for one side; 0x0 and 1..min_side-1 are pixels.
            or (min_side and ((w is not None and 0 < w < min_side) or (h is not None and 0 < h < min_side)))
            or (w == 0 and h == 0)
            or (patterns is not None and _has_any(url, drop_words, patterns))
        ):
            images_dropped += 1
            return
        alt = " ".join((attrs.get("alt") or "").split()) if keep_alt else ""
        img = ImageNode(url=url, alt=alt, declared_width=w, declared_height=h)
        if buf:
            flush()
        img_unresolved = False
        items.append((cur, "i", img, 0, "img"))
        if figures:
            figures[-1][0].append(img)
        uncaptioned.append(img)

    stack: list = [root]
    steps = depth = 0
    # Locals for the hot loop (attribute and global lookups cost on every node).
    push, pop, buf_append = stack.append, stack.pop, buf.append
    skip_tags, no_attr_tags, boiler_tags = _SKIP_TAGS, _NO_ATTR_TAGS, _BOILER_TAGS
    never_drop, landmark_tags = _NEVER_DROP_BY_CLASS, _LANDMARK_TAGS
    boiler_class, hidden_style, cls_verdict = _boiler_class, _HIDDEN_STYLE, _cls_cache.get
    tag_names = _TAG_NAMES
    tag_names_get = tag_names.get
    tag_kinds_get = _TAG_KINDS.get
    while stack:
        entry = pop()
        if type(entry) is int:  # exit marker: >= 0 block (the previous one), -1 link, -2 article, -3 depth
            if entry >= 0:
                if buf:
                    flush()
                t = btag[cur]
                if t == "pre":
                    pre_depth -= 1
                elif t == "figure":
                    imgs, caption = figures.pop()
                    if caption and keep_alt:
                        for img in imgs:
                            if not img.alt:
                                img.alt = caption
                cur = entry
            elif entry == -3:
                depth -= 1
            elif entry == -1:
                link_depth -= 1
            else:
                article_depth -= 1
            continue
        node = entry
        tid = node.tag_id  # an int: no string built per node, unlike ``node.tag``
        if tid == 2:  # lexbor's LXB_TAG__TEXT
            # Whitespace between blocks (markup indentation) is most text nodes: with nothing
            # buffered it can only be leading whitespace, which flush() strips anyway. lexbor
            # tells ASCII whitespace without building the string.
            if not buf and node.is_empty_text_node:
                continue
            t = node.text_content
            if t and (buf or not t.isspace()):
                buf_append(t)
                if link_depth:
                    buf_link += len(t)
            continue
        tag = tag_names_get(tid)
        if tag is None:
            tag = node.tag
            if tag is None:
                continue
            if tag[0] == "-" or tag in skip_tags:
                tag = ""  # comments, doctypes and never-rendered elements: skipped
            if tid < _LXB_TAG_LAST_ENTRY:  # standard tags only: custom elements get per-document ids
                tag_names[tid] = tag
        if not tag:
            continue
        steps += 1
        if deadline is not None and not steps & 255 and time.monotonic() > deadline:
            raise ExtractionError("parse_timeout", f"DOM walk over {limits.parse_timeout_s} s")
        if depth >= max_depth:
            depth_cut = True
            continue
        # Links, inline formatting and table parts are read without their attributes (an <a>'s
        # href is the costliest string on most pages): their containers decide for them.
        attrs = None if tag in no_attr_tags else node.attributes
        cls = ""
        drop = False
        if attrs:
            if "hidden" in attrs or attrs.get("aria-hidden") == "true":
                drop = True
            else:
                style = attrs.get("style")
                drop = bool(style) and ("none" in style or "idden" in style) and hidden_style.search(style) is not None
            c, i = attrs.get("class"), attrs.get("id")
            if c or i:
                cls = f"{c} {i}" if c and i else c or i  # as written; lower-cased where matched
        if boiler and not drop:
            if tag in boiler_tags:
                # An article's own <header> holds its title and lead image, not site chrome.
                drop = not (tag == "header" and article_depth)
            else:
                if cls and tag not in never_drop:
                    drop = cls_verdict(cls)  # the memo first: most class names repeat
                    if drop is None:
                        drop = boiler_class(cls)
        if drop:
            # Landmarks are chrome whatever their size. A hidden or boilerplate-looking element
            # holding most of the page's text is the page (ASP.NET's page-wide <form>, a blog
            # engine's "widget blog", content revealed by script): walk into it. Either way the
            # subtree of a dropped element is never walked, which is most of the speed.
            if tag in landmark_tags:
                continue
            if page_chars < 0:
                page_chars = len(root.text(deep=True))
            if len(node.text(deep=True)) <= max_share * page_chars:
                continue
        kind = tag_kinds_get(tag)  # one lookup instead of a comparison per special tag
        if kind is None:
            pass
        elif kind == _K_IMG:
            add_image(node, attrs)
            continue
        elif kind == _K_BR:
            buf_append(_BR)
            continue
        elif kind == _K_NOSCRIPT:
            # Lazy loaders put the real <img> in <noscript>; use it only when the <img> before it had
            # no usable URL, or the image would appear twice.
            if not img_unresolved:
                continue
            img_unresolved = False
        elif kind == _K_LINK:
            link_depth += 1
            push(-1)
        else:  # a block (_K_BLOCK, _K_ARTICLE)
            if buf:
                flush()
            push(cur)
            bparent.append(cur)
            btag.append(tag)
            bcls.append(cls)
            cur = len(bparent) - 1
            if tag == "pre":
                pre_depth += 1
            elif tag == "figure":
                figures.append([[], ""])
            elif tag == "figcaption" or (uncaptioned and "caption" in cls.lower()):
                # <figcaption>, or a caption block right after images (MediaWiki's "thumbcaption",
                # WordPress's "wp-caption-text"): the images' description when they have no alt.
                caption = " ".join(node.text(deep=True).split())
                if tag == "figcaption" and figures:
                    figures[-1][1] = caption
                if keep_alt and caption:
                    for img in uncaptioned:
                        if not img.alt:
                            img.alt = caption
            if kind == _K_ARTICLE:
                article_depth += 1
                push(-2)
        c = node.last_child
        if c is not None:
            depth += 1
            push(-3)
            while c is not None:
                push(c)
                c = c.prev
    if buf:
        flush()
    return _Walk(items, bparent, btag, bcls, depth_cut, images_dropped)


# ---------------------------------------------------------------------------------------------
# Main content


_weight_cache: dict[str, int] = {}


def _class_weight(cls: str) -> int:
    """Readability's class weight: +25 for article-like names, -25 for boilerplate-like (memoised)."""
    if not cls:
        return 0
    wt = _weight_cache.get(cls)
    if wt is None:
        low = cls.lower()
        wt = (25 if _POSITIVE_CLASS.search(low) else 0) - (25 if _NEGATIVE_CLASS.search(low) else 0)
        if len(_weight_cache) > 100_000:
            _weight_cache.clear()
        _weight_cache[cls] = wt
    return wt


def _select_main(w: _Walk, items: list[tuple], min_score: float = 0.0) -> list[bool] | None:
    """Per block: inside the main content (readability's text-density scoring); None = no verdict."""
    bparent, btag = w.bparent, w.btag
    n = len(bparent)
    tlen = [0] * n
    llen = [0] * n
    for bid, kind, payload, link, _ in items:
        if kind == "t":
            tlen[bid] += len(payload)
            llen[bid] += link
    for b in range(n - 1, 0, -1):
        p = bparent[b]
        tlen[p] += tlen[b]
        llen[p] += llen[b]
    if tlen[0] == 0:
        return None
    # A paragraph's score goes to its parent (1), grandparent (1/2), then 1/(3·level), 5 levels up.
    score: dict[int, float] = {}
    score_get, tag_score, class_weight, bcls, headings = score.get, _TAG_SCORE.get, _class_weight, w.bcls, _HEADINGS
    for bid, kind, payload, _, tag in items:
        if kind != "t" or tag in headings:
            continue
        size = len(payload)
        if size < 25:
            continue
        s = 1 + payload.count(",") + (3 if size >= 300 else size // 100)
        anc = bparent[bid]
        for div in _LEVEL_DIVISOR:
            if anc <= 0:
                break
            sc = score_get(anc)
            if sc is None:
                sc = tag_score(btag[anc], 0) + class_weight(bcls[anc])
            score[anc] = sc + s / div
            anc = bparent[anc]
    if not score:
        return None
    for b in score:
        score[b] *= 1 - (llen[b] / tlen[b] if tlen[b] else 0.0)
    ranked = sorted(score, key=score.__getitem__, reverse=True)
    best = ranked[0]
    top = score[best]
    if top < min_score:
        return None  # no block stands out (a short page, a link hub): no verdict

    def ancestors(b: int) -> list[int]:
        out = []
        while b > 0:
            out.append(b)
            b = bparent[b]
        return out

    # Readability's refinements. An article split into sibling sections leaves several near-equal
    # candidates: when 3 of the 5 best sit under one ancestor of the winner, that ancestor wins.
    alternatives = [b for b in ranked[1:5] if score[b] >= 0.75 * top]
    if len(alternatives) >= 3:
        alt_anc = [set(ancestors(a)) for a in alternatives]
        for anc in ancestors(bparent[best]):
            if sum(anc in s for s in alt_anc) >= 3:
                best = anc
                break
    # Walk up while the parent scores about as well (the winner is one part of a larger body).
    last = score.get(best, top)
    p = bparent[best]
    while p > 0:
        ps = score.get(p)
        if ps is not None:
            if ps < top / 3:
                break
            if ps > last:
                best = p
                break
            last = ps
        p = bparent[p]
    # Siblings of the winner that score well are part of the article; so are those of its
    # ancestors that still hold a third of the winner's score (an article split into sections).
    best_score = score.get(best, top)
    threshold = max(10.0, best_score * 0.2)
    levels = [best]
    p = bparent[best]
    while p > 0 and score.get(p, 0.0) >= best_score / 3:
        levels.append(p)
        p = bparent[p]
    chosen = {best}
    for lv in levels:
        lp = bparent[lv]
        for b, s in score.items():
            if bparent[b] == lp and b != lv:
                same_class = bool(bcls[b]) and bcls[b] == bcls[lv]
                if lv != best and not same_class:
                    continue  # above the winner only repeated sections count
                if s + (best_score * 0.2 if same_class else 0.0) >= threshold:
                    chosen.add(b)
    # Paragraphs right beside the winner (a lead paragraph before the body's wrapper):
    # readability keeps those longer than 80 characters with few links, and shorter link-free
    # ones that read as sentences.
    top_parent = bparent[best]
    for bid, kind, payload, link, tag in items:
        if kind == "t" and (tag == "p" or tag == "div") and bparent[bid] == top_parent and bid not in chosen:
            size = len(payload)
            if (size > 80 and link < 0.25 * size) or (size <= 80 and link == 0 and ". " in payload):
                chosen.add(bid)
    if bcls[best]:
        # The article body cut into chunks that each sit in their own wrapper ("detail__content"
        # blocks between quotes and photos): blocks of the winner's class that score well and
        # share an ancestor with it a few levels up.
        best_anc = set(ancestors(best)[:8])
        for b, s in score.items():
            if b not in chosen and s >= threshold and bcls[b] == bcls[best]:
                a, k = bparent[b], 0
                while a > 0 and k < 6 and a not in best_anc:
                    a, k = bparent[a], k + 1
                if a in best_anc:
                    chosen.add(b)
    # Blocks between two chosen siblings (a photo row between paragraphs, an embedded figure)
    # belong to the article unless they are mostly links.
    for lv in levels:
        lp = bparent[lv]
        if sum(1 for b in chosen if bparent[b] == lp) < 2:
            continue  # fewer than two chosen children: nothing lies between
        kids = [b for b in range(lp + 1, n) if bparent[b] == lp]
        picked = [i for i, b in enumerate(kids) if b in chosen]
        if len(picked) >= 2:
            for b in kids[picked[0] + 1 : picked[-1]]:
                if b not in chosen and (not tlen[b] or llen[b] <= tlen[b] * 0.5):
                    chosen.add(b)
    inside = [False] * n
    # Pre-order numbering: no block before the first chosen one lies inside a chosen one.
    for b in range(max(1, min(chosen)), n):
        inside[b] = b in chosen or inside[bparent[b]]
    return inside


# ---------------------------------------------------------------------------------------------
# Public API


def _assemble(items: list[tuple], w: _Walk, min_chars: int) -> list[Node]:
    """Items → nodes: list items merged into one node per list, table cells into rows and tables."""
    bparent, btag = w.bparent, w.btag
    nodes: list[Node] = []
    prev_group = None
    parts: list[str] = []  # the last node's text while its list or table goes on, joined once (not n² concatenation)

    def close_group() -> None:
        if len(parts) > 1:
            nodes[-1] = TextNode("".join(parts))
        parts.clear()

    for bid, kind, payload, _, tag in items:
        if kind == "i":
            close_group()
            nodes.append(payload)
            prev_group = None
            continue
        group = None
        if tag == "li" or tag == "dd" or tag == "dt":
            group = ("list", bparent[bid], -1)
        elif tag == "td" or tag == "th":
            row = bparent[bid]
            table = bparent[row] if row >= 0 else -1
            while table > 0 and btag[table] in ("tbody", "thead", "tfoot"):
                table = bparent[table]
            group = ("table", table, row)
        if group is not None and prev_group is not None and group[:2] == prev_group[:2]:
            parts.append(" | " if group[0] == "table" and group[2] == prev_group[2] else "\n")
            parts.append(payload)
        else:
            close_group()
            nodes.append(TextNode(payload))
            parts.append(payload)
        prev_group = group
    close_group()
    if min_chars > 1:
        nodes = [n for n in nodes if not isinstance(n, TextNode) or len(n.text) >= min_chars]
    return nodes


def _without_title_heading(items: list[tuple], title: str) -> list[tuple]:
    """Items without the first heading that repeats the page title (the document keeps it as ``title``)."""
    low = title.lower()
    for i, it in enumerate(items[:20]):
        if it[1] == "t" and it[4] in _HEADINGS and len(it[2]) >= 10 and it[2].lower() in low:
            return items[:i] + items[i + 1 :]
    return items


def _html_too_large(html: str, limit: int | None) -> bool:
    if limit is None or len(html) <= limit // 4:
        return False
    return len(html) > limit or len(html.encode("utf-8", "surrogatepass")) > limit


# lexbor's tree builder is superlinear in nesting depth, in attributes per element and in end tags
# that match no open element (each one searches the whole stack of open elements): 40,000 nested
# <div>s parse in ~4 s, one tag with 20,000 attributes in ~1–4 s, <div></i> × 200,000 in ~100 s.
# Its parse cannot be interrupted, so the known classes are refused before parsing, in one linear
# pass; anything else is bounded by the watchdog (``pipeline.extract_guard``). The pass runs only
# on pages that might hold such markup: many tags (one character count, on pages long enough to
# nest deeply) or a long run without '>' (a few hundred memchr probes); ordinary pages stop there.
# Measured per page in docs/bench/extraction.md.
_SCREEN_CHARS = 32_000  # below this the worst known markup parses in a tenth of a second
_COUNT_CHARS = 128_000  # below this, nesting (at most ~25,000 <div>s) parses in about a second
_SUSPICIOUS_TAGS = 20_000  # '<' count from which nesting and end-tag storms are possible
_LONG_RUN_CHARS = 8_192  # a '>'-free run this long may be one tag with thousands of attributes
_LONG_TAG_CHARS = 1_024  # tags this long get their attributes counted
# Attributes a page's tags may hold, as the sum over tags of attributes²: lexbor checks each new
# attribute against those before it (~2 ns per pair). One tag of ~12,600 attributes, or 100 tags of
# 1,260, parse in about a third of a second.
_MAX_ATTRIBUTE_PAIRS = 160_000_000
_SUSPECT_ATTRIBUTES = 2_048  # a tag with more sends the page through the whole scan
_MAX_SCAN_DEPTH = 4_096  # nesting that lexbor parses in well under a second; deeper is refused
# A tag, comment or other markup declaration. A tag's body runs to the first '>' outside a quoted
# value (a quote opens one only right after '='; elsewhere it is a character). Nothing after the
# body can fail, so a match never backtracks into it, and a value left unclosed reads to the end
# at most once per quote character (a later quote would have closed it). The body is read in at
# most 64 pieces (runs of plain characters and quoted values); a tag that goes on is read
# attribute by attribute (``_long_tag``).
_MARKUP = re.compile(
    r"""<(?:(/?)([A-Za-z][^\t\n\f\r />]*)(?:[^>"']+|(?<==)"[^"]*"|(?<==)'[^']*'|["']){0,64}|(!--)|[!?/])"""
)
# Separators, then one attribute: a name and, after '=', a quoted or unquoted value.
_ATTRIBUTE = re.compile(
    r"""[\t\n\f\r /]*(?:([^\t\n\f\r />][^\t\n\f\r />=]*)(?:[\t\n\f\r ]*=[\t\n\f\r ]*(?:"[^"]*"|'[^']*'|[^\t\n\f\r >]*))?)?"""
)
_MARKUP_B, _ATTRIBUTE_B = re.compile(_MARKUP.pattern.encode()), re.compile(_ATTRIBUTE.pattern.encode())
_SEPARATORS = tuple("\t\n\f\r /")  # what ends an attribute name
_SEPARATORS_B = tuple(c.encode() for c in _SEPARATORS)
# Elements whose content is text to the parser, not markup: the scan skips to their end tag.
_RAW_TEXT = {
    t: re.compile(rf"</{t}[\t\n\f\r />]", re.I)
    for t in "script style textarea title xmp iframe noembed noframes".split()
}
_VOID = frozenset("area base br col embed hr img input link meta param source track wbr keygen".split())
# Elements that never nest inside themselves (a new <li> or <a> closes the open one, <body> merges
# into the open one): counting them as depth would refuse real pages with unclosed <a> or <p>.
_NO_DEPTH = frozenset(
    "p li dt dd tr td th option optgroup thead tbody tfoot colgroup caption rb rt rp rtc a button form "
    "nobr h1 h2 h3 h4 h5 h6 html head body frameset plaintext".split()
)
_FOREIGN = frozenset(("svg", "math"))  # inside these, "/>" closes an element


def _long_tag(html: str | bytes, pos: int, cap: int) -> tuple[int, int]:
    """(attributes, end) of the tag body starting at ``pos``, counting stopped past ``cap``."""
    attrs, step = 0, (_ATTRIBUTE_B if type(html) is bytes else _ATTRIBUTE).match
    while attrs <= cap:
        m = step(html, pos)
        pos = m.end()
        if m.group(1) is None:  # at '>' or the end of the page
            break
        attrs += 1
    return attrs, pos


def _needs_scan(html: str | bytes, deadline: float | None = None) -> bool:
    """Whether ``html`` might hold markup the screen refuses: many tags, or a tag with thousands of
    attributes (it lies in a long run without '>'). Probes a window every _LONG_RUN_CHARS / 2
    characters, so ordinary pages cost one count and a few hundred short ``find`` calls. Works on
    the text or on its UTF-8 bytes (where ``find`` is memchr: several times faster)."""
    if type(html) is bytes:
        lt, gt, markup, separators = b"<", b">", _MARKUP_B, _SEPARATORS_B
    else:
        lt, gt, markup, separators = "<", ">", _MARKUP, _SEPARATORS
    if len(html) >= _COUNT_CHARS and html.count(lt) >= _SUSPICIOUS_TAGS:
        return True
    n, find, step = len(html), html.find, _LONG_RUN_CHARS // 2
    k = done = 0
    while k + _LONG_RUN_CHARS <= n:
        if find(gt, k, k + _LONG_RUN_CHARS) >= 0:
            k += step
            continue
        # A run of _LONG_RUN_CHARS or more without '>'; the previous window had one within step.
        if deadline is not None and time.monotonic() > deadline:
            raise ExtractionError("parse_timeout", "markup screen still reading")
        start = html.rfind(gt, max(0, k - step), k) + 1
        end = find(gt, k + _LONG_RUN_CHARS)
        end = n if end < 0 else end
        # A tag with many attributes either starts in the run and runs to its end, or starts
        # before it and reaches into it past a '>' in a quoted value. (In a script, the "tag" is a
        # comparison and its "attributes" the script's words: rarely thousands before a '>'.)
        before = html.rfind(lt, done, start)
        inside = markup.search(html, start, max(start, end - _LONG_TAG_CHARS))
        for tag in (markup.match(html, before) if before >= 0 else None, inside):
            if tag is None or not tag.group(2):
                continue
            # Attributes need separators: count those in C first, the attributes only if need be.
            at = tag.end(2)
            if sum(html.count(c, at, end) for c in separators) > _SUSPECT_ATTRIBUTES and (
                _long_tag(html, at, _SUSPECT_ATTRIBUTES)[0] > _SUSPECT_ATTRIBUTES
            ):
                return True
        k = done = end
    return False


def hostile_markup(html: str, deadline: float | None = None, utf8: bytes | None = None) -> str | None:
    """Why ``html`` would stall the parser (``None`` for ordinary pages). Linear in ``len(html)``.

    ``utf8``, the page's UTF-8 bytes when the caller has them, makes the first look cheaper.
    Raises ``ExtractionError("parse_timeout")`` when still reading at ``deadline`` (a
    ``time.monotonic()`` value): a page of a million tags takes the scan about a second.
    """
    n = len(html)
    if n < _SCREEN_CHARS:
        return None
    if not _needs_scan(html if utf8 is None else utf8, deadline):
        return None
    # One pass over the markup that keeps the stack of open elements as the tree builder would
    # (closely enough to bound it): an end tag pops to its element or, with none open, is ignored.
    stack: list[str] = []
    open_count: dict[str, int] = {}
    foreign = 0
    pairs = 0
    pos = 0
    search, find = _MARKUP.search, html.find
    tags = 0
    while True:
        m = search(html, pos)
        if m is None:
            return None
        tags += 1
        if deadline is not None and not tags & 4095 and time.monotonic() > deadline:
            raise ExtractionError("parse_timeout", f"markup screen still reading at {tags:,} tags")
        end_tag, name, comment = m.group(1, 2, 3)
        if name is None:  # comment, doctype, processing instruction, bogus comment
            if comment:
                end = find("-->", m.end())
                pos = n if end < 0 else end + 3
            else:
                end = find(">", m.end())
                pos = n if end < 0 else end + 1
            continue
        end = m.end()
        if end - m.start() > _LONG_TAG_CHARS or (end < n and html[end] != ">"):
            left = _MAX_ATTRIBUTE_PAIRS - pairs
            attrs, end = _long_tag(html, m.end(2), math.isqrt(left))
            pairs += attrs * attrs
            if pairs > _MAX_ATTRIBUTE_PAIRS:
                return f"a tag with {attrs:,}+ attributes" if attrs * attrs > left else "too many attributes in all"
        pos = end + 1 if end < n and html[end] == ">" else end
        name = name.lower()
        if end_tag:
            if open_count.get(name):
                while True:
                    top = stack.pop()
                    open_count[top] -= 1
                    if top in _FOREIGN:
                        foreign -= 1
                    if top == name:
                        break
            continue
        raw = _RAW_TEXT.get(name)
        if raw is not None and not foreign:
            close = raw.search(html, pos)
            pos = n if close is None else close.start()
            continue
        if name in _VOID or name in _NO_DEPTH or (foreign and html[end - 1] == "/"):
            continue
        stack.append(name)
        open_count[name] = open_count.get(name, 0) + 1
        if name in _FOREIGN:
            foreign += 1
        if len(stack) > _MAX_SCAN_DEPTH:
            return f"nesting deeper than {_MAX_SCAN_DEPTH:,}"


def extract_nodes(
    html: str, base_url: str, cfg: ExtractConfig = ExtractConfig(), limits: LimitsConfig = LimitsConfig()
) -> tuple[list[Node], str | None]:
    """One page's text and image nodes in reading order, and its ``<title>``.

    Raises ``ExtractionError`` with reason ``html_too_large``, ``hostile_markup`` or
    ``parse_timeout``; everything else about the page is best effort (a page with nothing in it
    gives an empty list).
    """
    check_page(html, limits)
    return parse_nodes(html, base_url, cfg, limits)


def check_page(
    html: str, limits: LimitsConfig = LimitsConfig(), deadline: float | None = None, utf8: bytes | None = None
) -> None:
    """The checks before parsing: raises ``html_too_large`` or ``hostile_markup`` (``parse_timeout``
    when the screen is still reading at ``deadline``, a ``time.monotonic()`` value). ``utf8``: as
    for ``hostile_markup``."""
    if _html_too_large(html, limits.max_html_bytes):
        raise ExtractionError("html_too_large", f"{len(html)} characters")
    hostile = hostile_markup(html, deadline, utf8)
    if hostile:
        raise ExtractionError("hostile_markup", hostile)


def parse_nodes(
    html: str | bytes, base_url: str, cfg: ExtractConfig = ExtractConfig(), limits: LimitsConfig = LimitsConfig()
) -> tuple[list[Node], str | None]:
    """``extract_nodes`` of a page that passed ``check_page``: parse and walk (bytes are UTF-8)."""
    tree = LexborHTMLParser(html)
    title = None
    head = tree.head or tree.root  # the parser moves <title> and <base> into <head>
    t = head.css_first("title") if head is not None else None
    if t is None:
        t = tree.css_first("title")  # document.title: the first <title> anywhere
    if t is not None:
        title = " ".join(t.text(deep=True).split()) or None
    base = base_url
    b = head.css_first("base[href]") if head is not None else None
    if b is not None:
        href = (b.attributes.get("href") or "").strip()
        if href:
            base = urljoin(base_url, href)
    # Script and style text would count as page text when a boilerplate element is measured
    # against the page; lexbor removes them in one pass.
    tree.strip_tags(["script", "style", "template"])
    root = tree.body or tree.root
    if root is None:
        return [], title
    walk = _walk(root, base, cfg, limits)
    items = walk.items
    if cfg.main_content:
        inside = _select_main(walk, items, cfg.main_content_min_score)
        if inside is not None:
            kept = [it for it in items if inside[it[0]]]
            # A short winner is one teaser of a list page (a shop, an index): keep the whole page.
            if sum(len(it[2]) for it in kept if it[1] == "t") >= cfg.main_content_min_chars:
                items = kept
    if cfg.drop_title_heading and title:
        items = _without_title_heading(items, title)
    return _assemble(items, walk, cfg.min_text_chars), title


def extract_document(
    page: Page, cfg: ExtractConfig = ExtractConfig(), limits: LimitsConfig = LimitsConfig()
) -> Document:
    """A Page as a Document with the page's provenance. Raises ``ExtractionError`` (no_content, ...)."""
    nodes, title = extract_nodes(page.html, page.url, cfg, limits)
    require_text(nodes)
    return Document(url=page.url, provenance=page.provenance, nodes=nodes, title=title)


def require_text(nodes: list[Node]) -> None:
    """Raise ``no_content`` for a page whose nodes hold no text (images alone are no document)."""
    if not any(isinstance(n, TextNode) for n in nodes):
        raise ExtractionError("no_content", f"{len(nodes)} images, no text")


def __getattr__(name: str):
    # The Beam stage lives in pipeline.extract_stage, loaded on first use: the pure functions
    # above (the CLI, the extraction process) never import Beam.
    if name == "ExtractDocuments":
        from pipeline.extract_stage import ExtractDocuments

        return ExtractDocuments
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
