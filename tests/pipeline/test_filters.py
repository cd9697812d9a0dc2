"""Text filter measures on hand-written strings with known values, the chain on small documents,
and the FilterText Beam composite."""
from __future__ import annotations

import copy

import apache_beam as beam
import pytest
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from pipeline import filters as F
from pipeline.config import Config, load_config
from schemas.document import Document, ImageNode, Provenance, TextNode

STOP = F.load_word_list(F.STOPWORDS_FILE)
FLAGGED = F.load_word_list(F.FLAGGED_WORDS_FILE)

# Hand-written English paragraphs (ordinary prose, well inside every default threshold).
EN = [
    "When we moved to the coast last spring, the first thing we noticed was how much the light changed "
    "during the day. In the morning it was soft and grey, and by the afternoon the whole harbour seemed to "
    "shine. We spent most evenings walking along the old sea wall, talking about the house we wanted to build.",
    "The garden was the hardest part of the move. Nothing that we had grown inland would survive the salt in "
    "the air, so we asked our neighbours what they planted. They told us to start with grasses and low shrubs, "
    "and to wait a year before we tried anything that needed shelter from the wind.",
    "By the end of the summer we had a small vegetable patch behind a fence of driftwood. The tomatoes never "
    "ripened, but the beans and potatoes did well, and there was always more than the two of us could eat. "
    "Most of it went to the family next door, who paid us back in fish.",
]
FR = [
    "Quand nous sommes arrivés sur la côte au printemps dernier, la première chose que nous avons remarquée "
    "était la lumière. Le matin elle était douce et grise, et l'après-midi tout le port semblait briller. "
    "Nous passions la plupart des soirées à marcher le long de la vieille digue en parlant de la maison.",
    "Le jardin a été la partie la plus difficile du déménagement. Rien de ce que nous cultivions à "
    "l'intérieur des terres ne résistait au sel de l'air, alors nous avons demandé conseil à nos voisins, "
    "qui nous ont dit de commencer par des graminées et des arbustes bas.",
]



def with_short_paragraphs_dropped() -> Config:
    """The m3w defaults plus OBELICS's paragraph word count (4): m3w keeps short paragraphs, so
    the tests of the chain's paragraph-drop path turn one on."""
    cfg = Config()
    cfg.text_filters.node_min_words = 4
    return cfg

def prov(offset: int = 0) -> Provenance:
    return Provenance("crawl.warc.gz", offset, 100, "2024-05-01T00:00:00Z")


def doc(texts: list[str], url: str = "https://example.org/coast", images: int = 1, offset: int = 0) -> Document:
    nodes: list = [TextNode(t) for t in texts]
    nodes[1:1] = [ImageNode(f"https://example.org/img{i}.jpg") for i in range(images)]
    return Document(url=url, provenance=prov(offset), nodes=nodes)


# ---------------------------------------------------------------------------------------------
# Measures


def test_words_lowercase_strip_special_characters_and_fold_apostrophes():
    assert F.words("Hello, World!  It's 42 ... don’t") == ["hello", "world", "it's", "don't"]
    assert F.word_count("Hello, World!  It's 42 ... don’t") == 4
    assert F.words("") == [] and F.words(" \n\t ") == []


def test_mean_word_length():
    assert F.mean_word_length(["ab", "abcd"]) == 3.0
    assert F.mean_word_length([]) == 0.0


def test_special_char_ratio_counts_punctuation_digits_whitespace():
    assert F.special_char_ratio("ab, c1") == 3 / 6
    assert F.special_char_ratio("abc") == 0.0
    assert F.special_char_ratio("—…") == 1.0
    assert F.special_char_ratio("") == 0.0


def test_stopword_and_flagged_word_ratios():
    assert F.word_ratio(["the", "cat", "sat", "on", "the", "mat"], STOP) == 0.5
    assert F.word_ratio(F.words("porn site with free porn videos"), FLAGGED) == 2 / 6
    assert F.word_ratio([], STOP) == 0.0


def test_punctuation_ratio_obelics_tokens_and_marks():
    # Hello , world ! It's 42 . -> 7 tokens ([\w']+ runs and single marks), 3 of them marks
    assert F.punctuation_tokens("Hello, world! It's 42.") == (7, 3)
    assert F.punctuation_ratio("Hello, world! It's 42.") == 3 / 7
    # "’" is neither a word character nor a mark: "don’t" is two runs; "_" and digits are word characters
    assert F.punctuation_tokens("don’t e_mail x=1;") == (6, 1)  # don t e_mail x 1 ;
    assert F.punctuation_tokens("Wait...?!") == (6, 5)  # every mark is its own token
    assert F.punctuation_tokens("a - b (c) \"d\" #e") == (5, 0)  # - ( ) " # are skipped
    assert F.punctuation_ratio("") == 0.0 and F.punctuation_ratio("— …") == 0.0
    # OBELICS's paragraph rule: fewer than 12 tokens cannot be judged and pass (1.0)
    assert F.punctuation_ratio("one two three four five", 12) == 1.0
    assert F.punctuation_ratio(" ".join(["word"] * 12), 12) == 0.0
    assert F.punctuation_ratio(" ".join(["word"] * 11) + ".", 12) == 1 / 12
    assert F.punctuation_ratio("", 12) == 0.0  # no token at all: 0, as OBELICS returns


def test_common_word_ratio_uses_wordfreq_english_list():
    common = F.wordfreq_common_words()
    assert len(common) > 300_000 and {"the", "harbour", "don't", "neighbours"} <= common
    assert F.word_ratio(F.words("The cat sat on the mat."), common) == 1.0
    assert F.word_ratio(F.words("The cat sat on the qzxvbnq."), common) == 5 / 6
    assert F.word_ratio(F.words(EN[0]), common) == 1.0


def test_gopher_stop_word_rule_counts_the_eight_words():
    assert F.gopher_stop_word_count(F.words("The cat and the dog have fun with me")) == 5
    assert F.gopher_stop_word_count(F.words("Buy cheap shoes now")) == 0


def test_symbol_word_ratio_is_max_of_hashes_and_ellipses():
    assert F.symbol_word_ratio("# a # b ... c", 4) == 0.5
    assert F.symbol_word_ratio("a … b … c …", 3) == 1.0
    assert F.symbol_word_ratio("anything", 0) == 0.0


def test_bullet_and_ellipsis_line_ratios_ignore_blank_lines():
    assert F.bullet_lines_ratio("- a\n• b\nc\n\nd") == 0.5
    assert F.ellipsis_lines_ratio("a...\nb…\nc\n\nd") == 0.5
    assert F.bullet_lines_ratio("") == 0.0 and F.ellipsis_lines_ratio("\n\n") == 0.0


def test_alpha_words_ratio():
    assert F.alpha_words_ratio("abc 123 a1 --") == 0.5
    assert F.alpha_words_ratio("") == 0.0


def test_char_ngram_repetition_obelics_formula():
    assert F.char_ngram_repetition("aaaa", 2) == 1.0  # one 2-gram, three times
    assert F.char_ngram_repetition("abcd", 2) == 0.0  # nothing repeats
    assert F.char_ngram_repetition("abab", 2) == pytest.approx(2 / 3)  # "ab" x2 of 3 grams
    # Long texts take the hashed path; same formula: "ababababab" 396 times of 791 10-grams.
    assert F.char_ngram_repetition("ab" * 400, 10) == pytest.approx(396 / 791)
    assert F.char_ngram_repetition("short", 10) == 0.0


def test_word_ngram_repetition_share_of_repeated_ngrams():
    assert F.word_ngram_repetition(list("abcabc"), 3) == 0.5  # abc x2 of abc, bca, cab, abc
    assert F.word_ngram_repetition([f"w{i}" for i in range(200)], 5) == 0.0
    assert F.word_ngram_repetition([f"w{i % 10}" for i in range(200)], 5) == 1.0
    assert F.word_ngram_repetition(["a", "b"], 5) == 0.0


def test_top_ngram_char_fraction_needs_a_repeat():
    assert F.top_ngram_char_frac(["a", "b", "a", "b"], 2, 7) == 6 / 7  # "a b" twice, 3 chars each
    assert F.top_ngram_char_frac(["a", "b", "c"], 2, 5) == 0.0
    assert F.top_ngram_char_frac([], 2, 0) == 0.0


def test_duplicate_ngram_char_fraction_skips_past_each_repeat():
    # a b | b a | (a b) dup +3, jump 2 | (a b) dup +3
    assert F.dup_ngram_char_frac(["a", "b", "a", "b", "a", "b"], 2, 11) == 6 / 11
    assert F.dup_ngram_char_frac(["a", "b", "c", "d"], 2, 7) == 0.0


def test_duplicate_lines_and_paragraphs():
    assert F.duplicates(["x", "y", "x", "x"]) == (2, 2)
    lines = F.split_lines("a\nb\na\n\nc")
    assert lines == ["a", "b", "a", "c"] and F.dup_frac(lines) == 0.25
    paras = F.split_paragraphs("ab\n\ncd\n\nab")
    assert F.dup_frac(paras) == pytest.approx(1 / 3)
    assert F.dup_char_frac(paras, 10) == 0.2
    assert F.split_lines("") == [] and F.dup_frac([]) == 0.0 and F.dup_char_frac([], 0) == 0.0


def test_url_blocklists():
    domains = frozenset(["bad.example.com"])
    assert F.url_domain_blocked("https://www.Bad.example.com/x", domains) == "bad.example.com"
    assert F.url_domain_blocked("https://notbad.example.com/x", domains) is None
    assert F.url_domain_blocked("not a url", domains) is None
    assert F.url_substring_blocked("http://x.com/Casino/a", ["casino"]) == "casino"
    assert F.url_substring_blocked("http://x.com/a", ["casino"]) is None


# ---------------------------------------------------------------------------------------------
# The chain on one document


def test_english_document_kept_with_language_and_boilerplate_node_removed():
    d = doc([EN[0], "Home | About", EN[1], EN[2]])
    before = copy.deepcopy(d)
    kept, rejects = F.filter_document(d, with_short_paragraphs_dropped())
    assert kept is not None
    assert kept.texts.count(None) == 1 and "Home | About" not in kept.text
    assert kept.language == "en" and kept.language_score >= 0.6
    assert [(r.reason, r.stage) for r in rejects] == [("node_min_words", "text_filter")]
    assert rejects[0].detail == "2 (min 4, node 2)"  # measured value, threshold, node index
    assert rejects[0].warc_filename == "crawl.warc.gz" and rejects[0].url == d.url
    assert d == before  # the input is not modified


def test_none_turns_a_check_off():
    cfg = Config()
    cfg.text_filters.node_min_words = None
    kept, rejects = F.filter_document(doc([EN[0], "Home | About", EN[1], EN[2]]), cfg)
    assert kept is not None and "Home | About" in kept.text and rejects == []


def test_obelics_punctuation_and_common_word_checks_drop_paragraphs_and_documents():
    cfg = Config()
    cfg.text_filters.node_min_punctuation_ratio = 0.001
    cfg.text_filters.node_min_common_word_ratio = 0.8
    menu = "Home products about us the contact shop and the news of the blog with the team for the jobs"
    code = "The sys argv of the os path getsize and the shutil copytree of the pathlib purepath is."
    kept, rejects = F.filter_document(doc([EN[0], menu, code, EN[1]]), cfg)
    assert kept is not None and menu not in kept.text and code not in kept.text
    assert [(r.reason, r.detail) for r in rejects] == [
        ("node_min_punctuation_ratio", "0 (min 0.001, node 2)"),  # 19 words, no mark
        ("node_min_common_word_ratio", "0.7059 (min 0.8, node 3)"),  # 12 of 17: not getsize, shutil, copytree, pathlib, purepath
    ]
    cfg = Config()
    cfg.text_filters.doc_min_punctuation_ratio = 0.03
    cfg.text_filters.doc_min_common_word_ratio = 0.9
    assert F.filter_document(doc(EN), cfg)[0] is not None
    cfg.text_filters.doc_min_punctuation_ratio = 0.1  # EN has about 6 marks per 100 tokens
    kept, rejects = F.filter_document(doc(EN), cfg)
    assert kept is None and rejects[-1].reason == "doc_min_punctuation_ratio"


def test_french_document_dropped_by_language():
    kept, rejects = F.filter_document(doc(FR), Config())
    assert kept is None
    assert rejects[-1].reason == "language" and rejects[-1].detail.startswith("fr ")


def test_language_filter_off_keeps_french_past_language():
    cfg = Config()
    cfg.language.keep = None
    cfg.language.min_score = None
    kept, rejects = F.filter_document(doc(FR), cfg)
    assert all(not r.reason.startswith("language") for r in rejects)
    # Gopher's English stop-word rule then drops it.
    assert kept is None and rejects[-1].reason == "gopher_min_stop_words"


def test_repetitive_document_dropped_with_measured_value():
    spam = "Click here to get the best deals on shoes and bags in the whole city today."
    kept, rejects = F.filter_document(doc([EN[0]] + [spam] * 6), Config())
    assert kept is None
    assert rejects[-1].reason == "gopher_max_dup_para_frac"
    assert rejects[-1].detail == "0.7143 (max 0.3)"  # 5 of 7 paragraphs repeat an earlier one


def test_url_blocklists_from_files(tmp_path):
    (tmp_path / "domains.txt").write_text("# blocked\nexample.org\n")
    (tmp_path / "subs.txt").write_text("casino\n")
    cfg = Config()
    cfg.text_filters.url_domain_blocklist_file = str(tmp_path / "domains.txt")
    kept, rejects = F.filter_document(doc(EN), cfg)
    assert kept is None and [(r.reason, r.detail) for r in rejects] == [("url_domain_blocklist", "example.org")]
    cfg.text_filters.url_domain_blocklist_file = None
    cfg.text_filters.url_substring_blocklist_file = str(tmp_path / "subs.txt")
    assert F.filter_document(doc(EN, url="https://x.net/online-CASINO"), cfg)[1][0].reason == "url_substring_blocklist"
    assert F.filter_document(doc(EN, url="https://x.net/garden"), cfg)[0] is not None


def test_flagged_words_file_replaces_bundled_list(tmp_path):
    (tmp_path / "flagged.txt").write_text("garden\nharbour\ntomatoes\nbeans\n")
    cfg = Config()
    cfg.text_filters.flagged_words_file = str(tmp_path / "flagged.txt")
    kept, rejects = F.filter_document(doc(EN), cfg)
    assert [r.reason for r in rejects][0] == "doc_max_flagged_word_ratio"  # m3w judges flagged words per document
    cfg.text_filters.node_max_flagged_word_ratio = 0.01
    assert [r.reason for r in F.filter_document(doc(EN), cfg)[1]][0] == "node_max_flagged_word_ratio"


def test_image_count_reason():
    cfg = Config()
    assert F.image_count_reason(doc(EN, images=0), cfg) == "doc_min_images"
    assert F.image_count_reason(doc(EN, images=31), cfg) is None  # m3w caps no document
    assert F.image_count_reason(doc(EN, images=31), load_config(preset="obelics")) == "doc_max_images"  # OBELICS: 1-30
    assert F.image_count_reason(doc(EN, images=3), cfg) is None
    cfg.text_filters.doc_min_images = None
    assert F.image_count_reason(doc(EN, images=0), cfg) is None


# ---------------------------------------------------------------------------------------------
# Beam


def _run_filter(cfg: Config, docs: list[Document]):
    p = TestPipeline()
    out = p | beam.Create(docs) | "FilterText" >> F.FilterText(cfg)
    return p, out


def test_filter_text_composite_outputs_documents_rejects_and_counters():
    english = doc([EN[0], "Home | About", EN[1], EN[2]], offset=1)
    french = doc(FR, url="https://example.fr/cote", offset=2)
    p, out = _run_filter(with_short_paragraphs_dropped(), [english, french])
    assert_that(out.documents | beam.Map(lambda d: (d.doc_id, d.language)), equal_to([(english.doc_id, "en")]), label="Docs")
    assert_that(
        out.rejects | beam.FlatMap(lambda b: [(r.reason, r.url) for r in b]),
        equal_to([("node_min_words", english.url), ("language", french.url)]),
        label="Rejects",
    )
    result = p.run()
    result.wait_until_finish()
    counters = {
        m.key.metric.name: m.committed
        for m in result.metrics().query(MetricsFilter().with_namespace("m3w"))["counters"]
        if m.committed
    }
    assert counters == {
        "text_filter.kept": 1,
        "text_filter.nodes_dropped_node_min_words": 1,
        "text_filter.dropped_language": 1,
    }


def test_filter_text_batches_rejects_and_turning_them_off_keeps_the_counters():
    english = doc([EN[0], "Home | About", EN[1], EN[2]], offset=1)
    french = doc(FR, url="https://example.fr/cote", offset=2)
    p, out = _run_filter(with_short_paragraphs_dropped(), [english, french])
    assert_that(out.rejects | beam.Map(lambda b: sorted(r.reason for r in b)), equal_to([["language", "node_min_words"]]))
    p.run().wait_until_finish()

    cfg = with_short_paragraphs_dropped()
    cfg.output.rejects = False
    p, out = _run_filter(cfg, [english, french])
    assert_that(out.rejects, equal_to([]))
    result = p.run()
    result.wait_until_finish()
    q = result.metrics().query(MetricsFilter().with_name("text_filter.nodes_dropped_node_min_words"))["counters"]
    assert sum(m.committed for m in q) == 1


def test_filter_text_composite_batches_keep_every_document_and_its_window():
    """More documents than one batch, in timestamped fixed windows: every kept document comes
    out once, in its own window, exactly as ``filter_document`` keeps it."""
    from apache_beam.transforms import window

    docs = [doc([EN[i % 3], EN[(i + 1) % 3], EN[(i + 2) % 3], f"Page {i} | Home"], url=f"https://e.org/{i}", offset=i) for i in range(F.BATCH_DOCS + 9)]
    docs.append(doc(FR, url="https://example.fr/cote", offset=999))
    single = [F.filter_document(d, with_short_paragraphs_dropped()) for d in docs]
    expected = [(d.doc_id, i // 10) for i, (d, (kept, _)) in enumerate(zip(docs, single)) if kept is not None]
    assert len(expected) == F.BATCH_DOCS + 9
    expected_rejects = [(r.reason, r.url, r.detail) for _, rejects in single for r in rejects]
    assert {r[0] for r in expected_rejects} == {"node_min_words", "language"}
    p = TestPipeline()
    stamped = (
        p
        | beam.Create(list(enumerate(docs)))
        | beam.Map(lambda x: window.TimestampedValue(x[1], x[0] * 6))
        | beam.WindowInto(window.FixedWindows(60))
    )
    out = stamped | "FilterText" >> F.FilterText(with_short_paragraphs_dropped())

    class WithWindow(beam.DoFn):
        def process(self, d, w=beam.DoFn.WindowParam):
            yield d.doc_id, int(w.start) // 60

    assert_that(out.documents | "Windows" >> beam.ParDo(WithWindow()), equal_to(expected), label="Docs")
    assert_that(out.rejects | beam.FlatMap(lambda b: [(r.reason, r.url, r.detail) for r in b]), equal_to(expected_rejects), label="Rejects")
    p.run().wait_until_finish()
