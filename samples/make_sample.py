"""Writes samples/demo.warc.gz, the small crawl `make demo` builds a corpus from.

Hand-written pages and generated pictures, chosen to exercise the path a real crawl takes: article
pages with images in reading order (kept), boilerplate around them (removed), a logo and a tracking
pixel (dropped), an image referenced by a page but absent from the crawl (counted), a French page
(dropped by language), a duplicate capture of one URL (URL dedup), and a request record (skipped).

    python samples/make_sample.py            # rewrites samples/demo.warc.gz deterministically
"""
from __future__ import annotations

import hashlib
import io
import os
import sys

import numpy as np
from PIL import Image, ImageDraw
from warcio.statusandheaders import StatusAndHeaders
from warcio.warcwriter import WARCWriter

HERE = os.path.dirname(os.path.abspath(__file__))
SITE = "http://garden.example.org"

ARTICLES = {
    "/journal/tomatoes.html": (
        "Growing tomatoes on a small balcony",
        [
            "Tomatoes are one of the most rewarding plants to grow in a container. With a sunny spot, a large "
            "pot and a little patience, a balcony can produce enough fruit for salads all through the summer.",
            ("img", "/media/tomato-seedlings.jpg", "Young tomato seedlings in paper pots on a windowsill", 0),
            "Start the seeds indoors about six weeks before the last frost. Keep the soil warm and moist, and "
            "give the seedlings as much light as you can, or they will grow tall and weak while they search for it.",
            "When the nights stay warm, move the plants outside for a few hours each day so that they can get "
            "used to the wind and the sun. After a week they are ready to be planted in their final pots.",
            ("img", "/media/ripe-tomatoes.jpg", "A cluster of ripe red tomatoes on the vine", 1),
            "Water deeply and regularly, and feed the plants every two weeks once the first flowers appear. "
            "Pick the fruit as soon as it colours fully; the plant will then put its energy into the next ones.",
        ],
    ),
    "/journal/herbs.html": (
        "A kitchen herb garden that lasts all year",
        [
            "Most kitchen herbs are easy to grow, and a few pots near the door save many trips to the shop. "
            "Basil, parsley and chives like rich soil, while thyme and rosemary prefer it poor and dry.",
            ("img", "/media/herb-pots.jpg", "Pots of basil, parsley and thyme on a wooden bench", 2),
            "Cut the herbs often: regular harvesting keeps the plants compact and stops them from flowering "
            "too early, which would make the leaves bitter. Take the top of each stem, just above a pair of leaves.",
            "In autumn, bring the tender herbs inside to a bright window. The hardy ones can stay outside, but "
            "they will be grateful for a sheltered corner and a pot that drains well during the winter rain.",
            ("img", "/media/dried-herbs.jpg", "Bunches of herbs drying upside down in the kitchen", 3),
            ("img", "/media/not-crawled.jpg", "An image the crawl did not capture", None),
        ],
    ),
    "/journal/compost.html": (
        "How to start a compost heap",
        [
            "A compost heap turns kitchen scraps and garden waste into the best food there is for your soil. "
            "It needs a mix of green material, such as grass and peelings, and brown material, such as leaves.",
            ("img", "/media/compost-bin.jpg", "A wooden compost bin full of leaves and peelings", 4),
            "Turn the heap every few weeks to let air in, and keep it as damp as a wrung-out sponge. In a warm "
            "summer the compost can be ready in three months; in winter it takes a good deal longer.",
            "When it is dark and crumbly and smells of the forest floor, spread it on the beds or mix it into "
            "the soil of your pots. Your plants will grow stronger, and you will throw much less away.",
        ],
    ),
}

FRENCH = (
    "/journal/fr/semis.html",
    "Réussir ses semis au printemps",
    [
        "Les semis demandent de la lumière, de la chaleur et un peu de patience. Choisissez un terreau léger "
        "et gardez-le humide sans jamais le détremper, car les jeunes plantes pourriraient rapidement.",
        ("img", "/media/semis.jpg", "Des semis de tomates sur le rebord d'une fenêtre", 5),
        "Quand les plantules ont deux vraies feuilles, repiquez-les dans des godets plus grands et placez-les "
        "dans l'endroit le plus lumineux de la maison, en tournant les pots chaque jour vers la fenêtre.",
    ],
)


def picture(seed: int, size: tuple[int, int] = (480, 360)) -> bytes:
    """A deterministic, photo-like JPEG: smooth gradients, a few shapes and a little noise."""
    rng = np.random.default_rng(seed)
    w, h = size
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    base = np.stack(
        [
            120 + 80 * np.sin(x / (40 + 9 * seed) + seed),
            110 + 70 * np.cos(y / (35 + 7 * seed)),
            100 + 60 * np.sin((x + y) / (50 + 5 * seed)),
        ],
        axis=-1,
    )
    base += rng.normal(0, 6, base.shape)
    img = Image.fromarray(np.clip(base, 0, 255).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(img)
    for _ in range(6):
        cx, cy, r = int(rng.integers(0, w)), int(rng.integers(0, h)), int(rng.integers(15, 70))
        colour = tuple(int(c) for c in rng.integers(0, 255, 3))
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=colour)
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=88)
    return buf.getvalue()


def logo() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (200, 60), (30, 120, 40)).save(buf, "PNG")
    return buf.getvalue()


def page_html(title: str, blocks: list, lang: str = "en") -> str:
    body = []
    for block in blocks:
        if isinstance(block, tuple):
            _, src, alt, _ = block
            body.append(f'<figure><img src="{src}" alt="{alt}" width="480" height="360"><figcaption>{alt}</figcaption></figure>')
        else:
            body.append(f"<p>{block}</p>")
    return f"""<!DOCTYPE html>
<html lang="{lang}"><head><meta charset="utf-8"><title>{title}</title></head>
<body>
<header><a href="/"><img src="/static/site-logo.png" alt="Garden Journal"></a>
<nav><ul><li><a href="/">Home</a></li><li><a href="/journal/">Journal</a></li><li><a href="/about.html">About</a></li></ul></nav></header>
<main><article><h1>{title}</h1>
{chr(10).join(body)}
</article></main>
<img src="/pixel.gif?id=42" width="1" height="1" alt="">
<footer><p>Garden Journal. All rights reserved.</p><p>Share this page on social media.</p></footer>
</body></html>
"""


def write_sample(path: str) -> None:
    with open(path, "wb") as f:
        w = WARCWriter(f, gzip=True)

        def response(url: str, body: bytes, ctype: str, date: str) -> None:
            headers = StatusAndHeaders("200 OK", [("Content-Type", ctype), ("Content-Length", str(len(body)))], protocol="HTTP/1.1")
            rec = w.create_warc_record(url, "response", payload=io.BytesIO(body), http_headers=headers,
                                       warc_headers_dict={"WARC-Date": date})
            write(rec, url + date)

        def write(rec, key: str) -> None:
            # Fixed record ids keep the sample byte-identical when regenerated.
            rec.rec_headers.replace_header("WARC-Record-ID", f"<urn:uuid:00000000-0000-4000-8000-{hashlib.sha1(key.encode()).hexdigest()[:12]}>")
            w.write_record(rec)

        date = "2024-05-01T10:00:00Z"
        req = w.create_warc_record(SITE + "/journal/tomatoes.html", "request", payload=io.BytesIO(b""),
                                   http_headers=StatusAndHeaders("GET /journal/tomatoes.html HTTP/1.1", [("Host", "garden.example.org")], is_http_request=True),
                                   warc_headers_dict={"WARC-Date": date})
        write(req, "request")
        for path_, (title, blocks) in ARTICLES.items():
            response(SITE + path_, page_html(title, blocks).encode(), "text/html; charset=utf-8", date)
        # An older capture of the same page: URL dedup keeps the newest one above.
        title, blocks = ARTICLES["/journal/compost.html"]
        response(SITE + "/journal/compost.html", page_html(title, blocks[:2]).encode(), "text/html; charset=utf-8", "2023-01-01T10:00:00Z")
        _, ftitle, fblocks = FRENCH
        response(SITE + FRENCH[0], page_html(ftitle, fblocks, "fr").encode(), "text/html; charset=utf-8", date)
        for blocks in [b for _, b in ARTICLES.values()] + [FRENCH[2]]:
            for block in blocks:
                if isinstance(block, tuple) and block[3] is not None:
                    response(SITE + block[1], picture(block[3]), "image/jpeg", date)
        response(SITE + "/static/site-logo.png", logo(), "image/png", date)


if __name__ == "__main__":
    out = sys.argv[1] if len(sys.argv) > 1 else os.path.join(HERE, "demo.warc.gz")
    write_sample(out)
    print(out)
