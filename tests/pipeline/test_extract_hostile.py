"""Markup that would stall the HTML parser is refused before parsing, in milliseconds."""
from __future__ import annotations

import time

import pytest

from pipeline.extract import ExtractionError, extract_nodes


@pytest.mark.parametrize(
    "html",
    [
        "<html><body><p " + " ".join(f'a{i}="x"' for i in range(50_000)) + ">hello</p></body></html>",
        "<div>" * 60_000 + "x" + "</div>" * 60_000,
        "<span><b>" * 30_000 + "x",
    ],
    ids=["50k-attributes", "60k-nested-divs", "unclosed-inline-nesting"],
)
def test_parser_stalling_markup_is_a_counted_drop_not_a_stall(html):
    start = time.monotonic()
    with pytest.raises(ExtractionError) as e:
        extract_nodes(html, "http://example.org/")
    assert e.value.reason == "hostile_markup"
    assert time.monotonic() - start < 1.0  # lexbor would take ~25 s on the first two


def test_long_pages_with_implied_end_tags_are_still_extracted():
    items = "".join(f"<li>Item number {i} of a very long list of things" for i in range(25_000))
    html = f"<html><body><h1>A long list</h1><ul>{items}</ul><p>The end of the list.</body></html>"
    nodes, _ = extract_nodes(html, "http://example.org/")
    text = " ".join(getattr(n, "text", "") for n in nodes)
    assert "Item number 24999" in text
