/* The text filter chain compiled: every paragraph and document measure of pipeline/filters.py
 * in one pass over each text, for the pipeline's hot path.
 *
 * pipeline/filters.py defines each measure in Python (``TextStats``, what ``build-m3w explain``
 * prints); this module computes the same values and applies the configured checks in their
 * order, stopping at a text's first failure. tests/pipeline/test_filters_fast.py compares every
 * value with plain definitions on real pages and on arbitrary Unicode.
 *
 * A document is its text nodes joined by blank lines. Each node is scanned once: special and
 * whitespace characters, whitespace tokens, '#' and ellipses, and its words (lower-cased by a
 * table; the rare node with a character whose lower case is not one simple character goes
 * through str.lower). Words become 64-bit ids; n-grams of words and characters are counted in
 * an open-addressing table. Document measures use the kept nodes' sums and words, and scan the
 * kept text for lines, paragraphs and character n-grams.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* Measures; the names are exported in MEASURES for pipeline/filters.py. */
enum {
    M_WORDS,
    M_SPECIAL_RATIO,
    M_VOCAB_RATIO,  /* arg: vocabulary index */
    M_VOCAB_COUNT,  /* arg: vocabulary index */
    M_MEAN_WORD_LENGTH,
    M_SYMBOL_WORD_RATIO,
    M_BULLET_LINES_RATIO,
    M_ELLIPSIS_LINES_RATIO,
    M_ALPHA_WORDS_RATIO,
    M_PUNCTUATION_RATIO, /* arg: fewer tokens than this pass (1.0); 0: no minimum */
    M_DUP_PARA_FRAC,
    M_DUP_PARA_CHAR_FRAC,
    M_DUP_LINE_FRAC,
    M_DUP_LINE_CHAR_FRAC,
    M_CHAR_REPETITION,      /* arg: n */
    M_WORD_REPETITION,      /* arg: n */
    M_TOP_NGRAM_CHAR_FRAC,  /* arg: n */
    M_DUP_NGRAM_CHAR_FRAC,  /* arg: n */
    M_COUNT
};
static const char *MEASURE_NAMES[M_COUNT] = {
    "words", "special_ratio", "vocab_ratio", "vocab_count", "mean_word_length",
    "symbol_word_ratio", "bullet_lines_ratio", "ellipsis_lines_ratio", "alpha_words_ratio",
    "punctuation_ratio", "dup_para_frac", "dup_para_char_frac", "dup_line_frac", "dup_line_char_frac",
    "char_repetition", "word_repetition", "top_ngram_char_frac", "dup_ngram_char_frac",
};
#define MAX_VOCABS 8
#define MAX_N 64 /* n-gram lengths cached per text */

/* Character table entry (BMP; astral characters by astral_entry): the lower-case code point
 * ("’" read as "'"), flags of the character, and COMPLEX when str.lower must decide. */
#define E_LOW 0x1FFFFFu
#define E_SPECIAL (1u << 21)
#define E_SPACE (1u << 22)
#define E_ALPHA (1u << 23)     /* the character is a letter */
#define E_ALPHA_LOW (1u << 24) /* its lower case is a letter */
#define E_COMPLEX (1u << 25)
#define E_WORD_RUN_SHIFT 26 /* OBELICS punctuation tokens: [\w'] (on the original character) */
#define E_MARK_SHIFT 27     /* one of , ; : ? ! . */

/* Polynomial hashes mod 2^64 (odd bases, so invertible): windows roll in O(1). */
#define NGRAM_BASE 0x9E3779B97F4A7C15ull
#define FNV_OFFSET 0xCBF29CE484222325ull
#define FNV_PRIME 0x100000001B3ull

static uint64_t inverse64(uint64_t a) { /* Newton: a * x == 1 mod 2^64, a odd */
    uint64_t x = a;
    for (int i = 0; i < 6; i++) x *= 2 - a * x;
    return x;
}

static inline uint64_t mix64(uint64_t x) { /* splitmix64's finaliser */
    x ^= x >> 30;
    x *= 0xBF58476D1CE4E5B9ull;
    x ^= x >> 27;
    x *= 0x94D049BB133111EBull;
    return x ^ (x >> 31);
}

/* ------------------------------------------------------------------------------------------ */
/* Growable arrays and an open-addressing counting table, reused across calls. */

static int grow(void **p, Py_ssize_t *cap, Py_ssize_t need, size_t item) {
    if (need <= *cap) return 0;
    Py_ssize_t c = *cap ? *cap : 256;
    while (c < need) c *= 2;
    void *q = realloc(*p, (size_t)c * item);
    if (!q) {
        PyErr_NoMemory();
        return -1;
    }
    *p = q;
    *cap = c;
    return 0;
}
#define GROW(arr, cap, need) grow((void **)&(arr), &(cap), (need), sizeof(*(arr)))

typedef struct {
    uint64_t key;
    uint32_t count; /* top bit: "seen" mark of the duplicate n-gram scan */
    uint32_t gen;   /* the slot is empty unless gen equals the table's */
} Slot;

typedef struct {
    Slot *slots;
    Py_ssize_t cap; /* allocated slots */
    uint64_t mask;
    int shift;
    uint32_t gen;
    uint32_t *used; /* occupied slots in insertion order */
    Py_ssize_t n_used, used_cap;
} Table;

/* Empty the table for up to ``items`` keys: bumping the generation empties every slot at once,
 * so a table sized for a short paragraph touches only its own few slots. */
static int table_reset(Table *t, Py_ssize_t items) {
    Py_ssize_t size = 16;
    int bits = 4;
    while (size < 2 * items) {
        size *= 2;
        bits++;
    }
    if (size > t->cap) {
        free(t->slots);
        t->slots = calloc((size_t)size, sizeof(Slot));
        if (!t->slots) {
            t->cap = 0;
            PyErr_NoMemory();
            return -1;
        }
        t->cap = size;
        t->gen = 0;
    }
    if (++t->gen == 0) { /* wrapped: clear for real */
        memset(t->slots, 0, (size_t)t->cap * sizeof(Slot));
        t->gen = 1;
    }
    t->mask = (uint64_t)size - 1;
    t->shift = 64 - bits;
    t->n_used = 0;
    return GROW(t->used, t->used_cap, items);
}

/* Count ``key``; returns its slot. The caller sized the table for at least this many keys. */
static inline uint32_t table_add(Table *t, uint64_t key) {
    uint64_t i = (key * 0xD6E8FEB86659FD93ull) >> t->shift; /* high bits: every key bit counts */
    for (;;) {
        Slot *s = &t->slots[i];
        if (s->gen != t->gen) {
            s->gen = t->gen;
            s->key = key;
            s->count = 1;
            t->used[t->n_used++] = (uint32_t)i;
            return (uint32_t)i;
        }
        if (s->key == key) {
            s->count++;
            return (uint32_t)i;
        }
        i = (i + 1) & t->mask;
    }
}

/* ------------------------------------------------------------------------------------------ */
/* The chain */

typedef struct {
    int measure, arg, is_min;
    double threshold;
} Check;

/* Sums over one text's characters and words; a document's are its kept nodes' sums. */
typedef struct {
    Py_ssize_t special, tokens, hashes, dots3, ellipses, alpha_words, word_chars;
    Py_ssize_t word_runs, marks; /* OBELICS punctuation-ratio tokens */
    Py_ssize_t vocab[MAX_VOCABS];
} Sums;

typedef struct {
    Py_ssize_t start, len; /* in the joined text */
    Py_ssize_t w0, w1;     /* word range */
    Sums s;
} Node;

/* One text being measured, with its lazily computed values. */
typedef struct {
    const Py_UCS4 *cp;
    Py_ssize_t len;
    const uint64_t *ids;
    const uint32_t *wlen;
    Py_ssize_t n_words;
    Sums s;
    int have_lines, have_dup_lines, have_dup_paras;
    uint64_t have_word_ngrams, have_char_ngrams; /* bit n: computed */
    int no_repeat_n; /* smallest n with no repeated word n-gram; 0 unknown */
    /* values, valid where the flags above say so (text_init leaves them as they were) */
    double bullet, ellipsis_lines, dup_line[2], dup_para[2];
    double word_ngrams[MAX_N][3]; /* repetition, top n-gram, duplicate n-grams */
    double char_ngrams[MAX_N];
} Text;

typedef struct {
    PyObject_HEAD
    uint32_t *chars; /* 0x10000 entries */
    /* vocabulary word ids -> bit mask of the vocabularies holding them */
    uint64_t *vocab_keys;
    uint8_t *vocab_masks;
    uint64_t vocab_mask_bits;
    int vocab_shift, n_vocabs;
    Check *node_checks, *doc_checks;
    int n_node_checks, n_doc_checks;
    uint64_t base_inv;
    int busy; /* a call in progress (the GIL may pass to another thread inside str.lower) */
    /* workspace */
    Py_UCS4 *text;
    Py_ssize_t text_cap;
    Py_UCS4 *kept;
    Py_ssize_t kept_cap;
    Py_UCS4 *lowered;
    Py_ssize_t lowered_cap;
    uint64_t *ids;
    Py_ssize_t ids_cap;
    uint32_t *wlen;
    Py_ssize_t wlen_cap;
    uint64_t *kept_ids;
    Py_ssize_t kept_ids_cap;
    uint32_t *kept_wlen;
    Py_ssize_t kept_wlen_cap;
    uint32_t *wslot;
    Py_ssize_t wslot_cap;
    uint32_t *counts;
    Py_ssize_t counts_cap;
    Node *nodes;
    Py_ssize_t nodes_cap;
    Py_ssize_t n_words;
    Table table;
} Chain;

static inline uint32_t astral_entry(Py_UCS4 c) {
    /* Special as in filters._SPECIAL_CLASS: the only astral members are digits, whitespace and
     * the emoji block U+1F000-U+1FAFF. An astral letter may have a lower case (Deseret, Adlam):
     * str.lower decides. */
    uint32_t e = (uint32_t)c;
    int space = Py_UNICODE_ISSPACE(c);
    if (space) e |= E_SPACE;
    if (space || Py_UNICODE_ISDECIMAL(c) || (c >= 0x1F000 && c <= 0x1FAFF)) e |= E_SPECIAL;
    if (Py_UNICODE_ISALPHA(c)) e |= E_ALPHA | E_ALPHA_LOW | E_COMPLEX;
    if (Py_UNICODE_ISALNUM(c)) e |= 1u << E_WORD_RUN_SHIFT; /* re's \w: alphanumeric or '_' (BMP) */
    return e;
}

static inline uint32_t entry(const Chain *ch, Py_UCS4 c) {
    return c < 0x10000 ? ch->chars[c] : astral_entry(c);
}

static inline uint8_t vocab_mask(const Chain *ch, uint64_t id) {
    if (!ch->n_vocabs) return 0;
    uint64_t i = (id * 0xD6E8FEB86659FD93ull) >> ch->vocab_shift;
    for (;;) {
        if (ch->vocab_masks[i] == 0) return 0;
        if (ch->vocab_keys[i] == id) return ch->vocab_masks[i];
        i = (i + 1) & ch->vocab_mask_bits;
    }
}

static uint64_t word_id(const Py_UCS4 *cp, Py_ssize_t n) {
    uint64_t h = FNV_OFFSET;
    for (Py_ssize_t i = 0; i < n; i++) h = (h ^ cp[i]) * FNV_PRIME;
    return mix64(h);
}

/* ------------------------------------------------------------------------------------------ */
/* Scanning one node */

enum { SCAN_TABLE, SCAN_CHARS, SCAN_LOWERED };

#if defined(__GNUC__)
#define ALWAYS_INLINE inline __attribute__((always_inline))
#else
#define ALWAYS_INLINE inline
#endif

/* Character sums and words of one text, every counter in a register; ``mode`` is a constant at
 * each call, so each gets its own loop. SCAN_TABLE: an original text, lower-cased by the table;
 * returns 1 (nothing kept) at the first character that needs str.lower. For such a text, two
 * passes: SCAN_CHARS, the character sums of the original; SCAN_LOWERED, the words of what
 * str.lower made ("’" still to fold). A word runs from the first to the last non-special
 * character of a whitespace token. Words are pushed without bounds checks: the caller reserved
 * room for (n + 1) / 2 more. */
static ALWAYS_INLINE int scan(Chain *ch, const Py_UCS4 *cp, Py_ssize_t n, Sums *s, const int mode) {
    const uint32_t *tab = ch->chars;
    Py_ssize_t special = 0, tokens = 0, hashes = 0, dots = 0, dots3 = 0, ellipses = 0;
    Py_ssize_t alpha_words = 0, word_chars = 0, n_words = ch->n_words;
    Py_ssize_t word_runs = 0, marks = 0;
    uint32_t in_run = 0;
    Py_ssize_t vocab[MAX_VOCABS] = {0};
    Py_ssize_t wstart = -1, last = 0;
    int in_token = 0;
    uint32_t alpha = 0, alpha_at_last = 0;
    uint64_t h = 0, h_at_last = 0;
    uint64_t *ids = ch->ids;
    uint32_t *wlen = ch->wlen;
#define PUSH_WORD()                                                      \
    do {                                                                 \
        uint64_t id_ = mix64(h_at_last);                                 \
        ids[n_words] = id_;                                              \
        wlen[n_words++] = (uint32_t)(last - wstart + 1);                 \
        word_chars += last - wstart + 1;                                 \
        alpha_words += alpha_at_last;                                    \
        uint8_t m_ = vocab_mask(ch, id_);                                \
        for (int v_ = 0; m_; v_++, m_ >>= 1) vocab[v_] += m_ & 1;        \
    } while (0)
#define LOW(c, e) (mode == SCAN_TABLE ? ((e) & E_LOW) : (c) == 0x2019 ? (uint32_t)'\'' : (uint32_t)(c))
#define LOW_ALPHA(e) (mode == SCAN_TABLE ? ((e) >> 24) & 1 : ((e) >> 23) & 1)
    for (Py_ssize_t i = 0; i < n; i++) {
        Py_UCS4 c = cp[i];
        uint32_t e = c < 0x10000 ? tab[c] : astral_entry(c);
        if (mode == SCAN_TABLE && (e & E_COMPLEX)) return 1;
        if (mode != SCAN_LOWERED) { /* a run starts where a run character follows a non-run one */
            uint32_t r = (e >> E_WORD_RUN_SHIFT) & 1;
            word_runs += r & ~in_run;
            in_run = r;
        }
        if (!(e & E_SPECIAL)) { /* inside a word */
            if (dots) {
                dots3 += dots / 3;
                dots = 0;
            }
            if (!in_token) {
                in_token = 1;
                tokens++;
            }
            if (mode == SCAN_CHARS) continue;
            if (wstart < 0) {
                wstart = i;
                h = FNV_OFFSET;
                alpha = 0;
            }
            h = (h ^ LOW(c, e)) * FNV_PRIME;
            alpha |= LOW_ALPHA(e);
            h_at_last = h;
            alpha_at_last = alpha;
            last = i;
            continue;
        }
        special++;
        if (mode != SCAN_LOWERED) marks += (e >> E_MARK_SHIFT) & 1;
        if (c == '.') {
            dots++;
        } else if (dots) {
            dots3 += dots / 3;
            dots = 0;
        }
        if (e & E_SPACE) {
            if (wstart >= 0) PUSH_WORD();
            wstart = -1;
            in_token = 0;
            continue;
        }
        if (!in_token) {
            in_token = 1;
            tokens++;
        }
        hashes += c == '#';
        ellipses += c == 0x2026;
        if (wstart >= 0) { /* a special character inside a token, after its word began */
            h = (h ^ LOW(c, e)) * FNV_PRIME;
            alpha |= LOW_ALPHA(e);
        }
    }
    if (wstart >= 0) PUSH_WORD();
#undef LOW_ALPHA
#undef LOW
#undef PUSH_WORD
    if (mode != SCAN_LOWERED) {
        s->special = special;
        s->tokens = tokens;
        s->hashes = hashes;
        s->dots3 = dots3 + dots / 3;
        s->ellipses = ellipses;
        s->word_runs = word_runs;
        s->marks = marks;
    }
    if (mode != SCAN_CHARS) {
        s->alpha_words = alpha_words;
        s->word_chars = word_chars;
        memcpy(s->vocab, vocab, sizeof(vocab));
        ch->n_words = n_words;
    }
    return 0;
}

/* Room for the words of a text of ``n`` characters: at most one per two characters. */
static int reserve_words(Chain *ch, Py_ssize_t n) {
    return GROW(ch->ids, ch->ids_cap, ch->n_words + (n + 1) / 2 + 1) || GROW(ch->wlen, ch->wlen_cap, ch->n_words + (n + 1) / 2 + 1);
}

/* Words of a node whose lower case needs str.lower ("İ" becomes two characters, "Σ" depends on
 * its neighbours, astral letters). */
static int scan_lowered(Chain *ch, PyObject *text, Sums *s) {
    PyObject *low = PyObject_CallMethod(text, "lower", NULL);
    if (!low) return -1;
    if (!PyUnicode_Check(low)) {
        Py_DECREF(low);
        PyErr_SetString(PyExc_TypeError, "lower() of a text node must return str");
        return -1;
    }
    Py_ssize_t n = PyUnicode_GET_LENGTH(low);
    int rc = -1;
    if (!GROW(ch->lowered, ch->lowered_cap, n + 1) && !reserve_words(ch, n) && PyUnicode_AsUCS4(low, ch->lowered, n + 1, 0)) {
        rc = scan(ch, ch->lowered, n, s, SCAN_LOWERED);
    }
    Py_DECREF(low);
    return rc;
}

/* ------------------------------------------------------------------------------------------ */
/* Measures of one text */

static void text_init(Text *t, const Py_UCS4 *cp, Py_ssize_t len, const uint64_t *ids, const uint32_t *wlen, Py_ssize_t n_words, const Sums *s) {
    memset(t, 0, offsetof(Text, bullet));
    t->cp = cp;
    t->len = len;
    t->ids = ids;
    t->wlen = wlen;
    t->n_words = n_words;
    t->s = *s;
}

static inline int is_line_break(Py_UCS4 c) { /* str.splitlines */
    return c == '\n' || c == '\r' || c == 0x0B || c == 0x0C || c == 0x1C || c == 0x1D || c == 0x1E ||
           c == 0x85 || c == 0x2028 || c == 0x2029;
}

static inline int is_space(const Chain *ch, Py_UCS4 c) { return (entry(ch, c) & E_SPACE) != 0; }

/* Gopher bullet and ellipsis lines: shares of the non-blank lines of str.splitlines(). */
static void line_shares(const Chain *ch, Text *t) {
    Py_ssize_t lines = 0, bullets = 0, ellipses = 0, i = 0, n = t->len;
    const Py_UCS4 *cp = t->cp;
    while (i < n) {
        Py_ssize_t a = i;
        while (i < n && !is_line_break(cp[i])) i++;
        Py_ssize_t b = i; /* line is cp[a:b] */
        if (i < n) i += (cp[i] == '\r' && i + 1 < n && cp[i + 1] == '\n') ? 2 : 1;
        Py_ssize_t first = a, last = b - 1;
        while (first < b && is_space(ch, cp[first])) first++;
        if (first == b) continue;
        while (is_space(ch, cp[last])) last--;
        lines++;
        Py_UCS4 f = cp[first];
        bullets += f == 0x2022 || f == '-' || f == '*' || f == 0xB7 || f == 0x2023 || f == 0x25E6 || f == 0x25AA;
        ellipses += cp[last] == 0x2026 || (last - first >= 2 && cp[last] == '.' && cp[last - 1] == '.' && cp[last - 2] == '.');
    }
    t->bullet = lines ? (double)bullets / (double)lines : 0.0;
    t->ellipsis_lines = lines ? (double)ellipses / (double)lines : 0.0;
    t->have_lines = 1;
}

static uint64_t content_hash(const Py_UCS4 *cp, Py_ssize_t n) {
    uint64_t h = FNV_OFFSET ^ (uint64_t)n;
    for (Py_ssize_t i = 0; i < n; i++) h = (h ^ cp[i]) * FNV_PRIME;
    return mix64(h);
}

/* Items (lines or paragraphs) of the stripped text repeating an earlier one: (share of items,
 * their characters over the text length). ``paragraphs``: items split at runs of two or more
 * newlines (filters.split_paragraphs); else at single newlines, empty ones dropped
 * (filters.split_lines). */
static int dup_items(Chain *ch, Text *t, int paragraphs, double out[2]) {
    const Py_UCS4 *cp = t->cp;
    Py_ssize_t a = 0, b = t->len;
    while (a < b && is_space(ch, cp[a])) a++;
    while (b > a && is_space(ch, cp[b - 1])) b--;
    out[0] = out[1] = 0.0;
    if (a == b) return 0;
    Py_ssize_t breaks = 0;
    for (Py_ssize_t i = a; i < b; i++) breaks += cp[i] == '\n';
    if (table_reset(&ch->table, breaks + 1)) return -1;
    Py_ssize_t items = 0, dups = 0, dup_chars = 0, i = a;
    while (i <= b) {
        Py_ssize_t start = i, end;
        if (paragraphs) {
            for (;;) {
                while (i < b && cp[i] != '\n') i++;
                if (i >= b) {
                    end = b;
                    i = b + 1;
                    break;
                }
                Py_ssize_t run = i;
                while (run < b && cp[run] == '\n') run++;
                if (run - i >= 2) {
                    end = i;
                    i = run;
                    break;
                }
                i = run;
            }
        } else {
            while (i < b && cp[i] != '\n') i++;
            end = i;
            i++;
            if (end == start) continue;
        }
        items++;
        uint32_t slot = table_add(&ch->table, content_hash(cp + start, end - start));
        if (ch->table.slots[slot].count > 1) {
            dups++;
            dup_chars += end - start;
        }
    }
    out[0] = items ? (double)dups / (double)items : 0.0;
    out[1] = t->len > 0 ? fmin(1.0, (double)dup_chars / (double)t->len) : 0.0;
    return 0;
}

static int cmp_desc(const void *a, const void *b) {
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return (x < y) - (x > y);
}

/* OBELICS character repetition: occurrences of the top floor(sqrt(distinct)) character n-grams
 * that occur more than once, over the number of n-grams. */
static int char_repetition(Chain *ch, Text *t, int n, double *out) {
    Py_ssize_t W = t->len - n + 1;
    *out = 0.0;
    if (W <= 0) return 0;
    Table *tab = &ch->table;
    if (table_reset(tab, W)) return -1;
    const Py_UCS4 *cp = t->cp;
    uint64_t top_power = 1, h = 0;
    for (int j = 0; j < n; j++) {
        h += ((uint64_t)cp[j] + 1) * top_power;
        if (j < n - 1) top_power *= NGRAM_BASE;
    }
    for (Py_ssize_t i = 0;; i++) {
        table_add(tab, h);
        if (i + 1 >= W) break;
        h = (h - ((uint64_t)cp[i] + 1)) * ch->base_inv + ((uint64_t)cp[i + n] + 1) * top_power;
    }
    Py_ssize_t distinct = tab->n_used, repeated = 0;
    if (GROW(ch->counts, ch->counts_cap, distinct)) return -1;
    for (Py_ssize_t k = 0; k < distinct; k++) {
        uint32_t c = tab->slots[tab->used[k]].count;
        if (c > 1) ch->counts[repeated++] = c;
    }
    Py_ssize_t k = (Py_ssize_t)sqrt((double)distinct);
    if (k > repeated) k = repeated;
    if (k <= 0) return 0;
    if (k < repeated) qsort(ch->counts, (size_t)repeated, sizeof(uint32_t), cmp_desc);
    double top = 0.0;
    for (Py_ssize_t j = 0; j < k; j++) top += ch->counts[j];
    *out = top / (double)W;
    return 0;
}

/* Word n-gram statistics, all three from one count of the windows:
 * [0] OBELICS: share of windows whose n-gram occurs more than once;
 * [1] Gopher top n-gram: characters of the first window holding the most frequent repeated
 *     n-gram (words joined by spaces) times its count, over the text length;
 * [2] Gopher duplicate n-grams: scanning left to right, a window already seen counts its
 *     characters and the scan jumps past it (datatrove's find_all_duplicate). */
static int word_ngrams(Chain *ch, Text *t, int n, double out[3]) {
    Py_ssize_t W = t->n_words - n + 1;
    out[0] = out[1] = out[2] = 0.0;
    if (W <= 0 || (t->no_repeat_n && n >= t->no_repeat_n)) return 0; /* a longer n-gram repeats only if a shorter one does */
    Table *tab = &ch->table;
    if (table_reset(tab, W) || GROW(ch->wslot, ch->wslot_cap, W)) return -1;
    const uint64_t *ids = t->ids;
    uint64_t top_power = 1, h = 0;
    for (int j = 0; j < n; j++) {
        h += ids[j] * top_power;
        if (j < n - 1) top_power *= NGRAM_BASE;
    }
    for (Py_ssize_t i = 0;; i++) {
        ch->wslot[i] = table_add(tab, h);
        if (i + 1 >= W) break;
        h = (h - ids[i]) * ch->base_inv + ids[i + n] * top_power;
    }
    Slot *slots = tab->slots;
    Py_ssize_t repeated = 0, top_at = -1;
    uint32_t top = 1;
    for (Py_ssize_t i = 0; i < W; i++) {
        uint32_t c = slots[ch->wslot[i]].count;
        if (c > 1) {
            repeated++;
            if (c > top) {
                top = c;
                top_at = i;
            }
        }
    }
    if (!repeated) {
        if (!t->no_repeat_n || n < t->no_repeat_n) t->no_repeat_n = n;
        return 0;
    }
    out[0] = (double)repeated / (double)W;
    if (t->len <= 0) return 0;
    Py_ssize_t chars = n - 1;
    for (int j = 0; j < n; j++) chars += t->wlen[top_at + j];
    out[1] = fmin(1.0, (double)(chars * (Py_ssize_t)top) / (double)t->len);
    Py_ssize_t dup_chars = 0, next = 0;
    for (Py_ssize_t i = 0; i < W; i++) {
        if (i < next) continue;
        Slot *s = &slots[ch->wslot[i]];
        if ((s->count & 0x7FFFFFFFu) < 2) continue; /* seen once: never a repeat */
        if (s->count & 0x80000000u) {
            Py_ssize_t len = n - 1;
            for (int j = 0; j < n; j++) len += t->wlen[i + j];
            dup_chars += len;
            next = i + n;
        } else {
            s->count |= 0x80000000u;
        }
    }
    out[2] = fmin(1.0, (double)dup_chars / (double)t->len);
    return 0;
}

static inline double ratio(Py_ssize_t a, Py_ssize_t b) { return b > 0 ? (double)a / (double)b : 0.0; }

/* The value of one check's measure; -1 on error (a Python exception is set). */
static int measure(Chain *ch, Text *t, const Check *c, double *out) {
    int a = c->arg;
    switch (c->measure) {
    case M_WORDS: *out = (double)t->n_words; return 0;
    case M_SPECIAL_RATIO: *out = ratio(t->s.special, t->len); return 0;
    case M_VOCAB_RATIO: *out = ratio(t->s.vocab[a], t->n_words); return 0;
    case M_VOCAB_COUNT: *out = (double)t->s.vocab[a]; return 0;
    case M_MEAN_WORD_LENGTH: *out = ratio(t->s.word_chars, t->n_words); return 0;
    case M_SYMBOL_WORD_RATIO: {
        Py_ssize_t e = t->s.dots3 + t->s.ellipses;
        *out = ratio(t->s.hashes > e ? t->s.hashes : e, t->n_words);
        return 0;
    }
    case M_BULLET_LINES_RATIO:
    case M_ELLIPSIS_LINES_RATIO:
        if (!t->have_lines) line_shares(ch, t);
        *out = c->measure == M_BULLET_LINES_RATIO ? t->bullet : t->ellipsis_lines;
        return 0;
    case M_ALPHA_WORDS_RATIO: *out = ratio(t->s.alpha_words, t->s.tokens); return 0;
    case M_PUNCTUATION_RATIO: {
        Py_ssize_t tokens = t->s.word_runs + t->s.marks;
        *out = !tokens ? 0.0 : (a > 0 && tokens < a) ? 1.0 : (double)t->s.marks / (double)tokens;
        return 0;
    }
    case M_DUP_PARA_FRAC:
    case M_DUP_PARA_CHAR_FRAC:
    case M_DUP_LINE_FRAC:
    case M_DUP_LINE_CHAR_FRAC: {
        int paragraphs = c->measure <= M_DUP_PARA_CHAR_FRAC;
        int *have = paragraphs ? &t->have_dup_paras : &t->have_dup_lines;
        double *v = paragraphs ? t->dup_para : t->dup_line;
        if (!*have) {
            if (dup_items(ch, t, paragraphs, v)) return -1;
            *have = 1;
        }
        *out = v[c->measure == M_DUP_PARA_CHAR_FRAC || c->measure == M_DUP_LINE_CHAR_FRAC];
        return 0;
    }
    case M_CHAR_REPETITION:
        if (a < MAX_N) {
            if (!(t->have_char_ngrams >> a & 1)) {
                if (char_repetition(ch, t, a, &t->char_ngrams[a])) return -1;
                t->have_char_ngrams |= 1ull << a;
            }
            *out = t->char_ngrams[a];
            return 0;
        }
        return char_repetition(ch, t, a, out);
    case M_WORD_REPETITION:
    case M_TOP_NGRAM_CHAR_FRAC:
    case M_DUP_NGRAM_CHAR_FRAC: {
        int which = c->measure - M_WORD_REPETITION;
        if (a < MAX_N) {
            if (!(t->have_word_ngrams >> a & 1)) {
                if (word_ngrams(ch, t, a, t->word_ngrams[a])) return -1;
                t->have_word_ngrams |= 1ull << a;
            }
            *out = t->word_ngrams[a][which];
            return 0;
        }
        double v[3];
        if (word_ngrams(ch, t, a, v)) return -1;
        *out = v[which];
        return 0;
    }
    }
    PyErr_Format(PyExc_ValueError, "unknown measure %d", c->measure);
    return -1;
}

static inline int passes(const Check *c, double v) { return c->is_min ? v >= c->threshold : v <= c->threshold; }

/* ------------------------------------------------------------------------------------------ */
/* A document */

/* Scan the text nodes ``texts`` (a list of str): fills ch->text (joined by blank lines),
 * ch->nodes, ch->ids/wlen. Returns the node count, or -1. */
static Py_ssize_t load_nodes(Chain *ch, PyObject *texts) {
    Py_ssize_t k = PyList_GET_SIZE(texts), total = 0;
    for (Py_ssize_t i = 0; i < k; i++) {
        PyObject *s = PyList_GET_ITEM(texts, i);
        if (!PyUnicode_Check(s)) {
            PyErr_SetString(PyExc_TypeError, "text nodes must be str");
            return -1;
        }
        total += PyUnicode_GET_LENGTH(s) + (i ? 2 : 0);
    }
    if (GROW(ch->text, ch->text_cap, total + 1) || GROW(ch->nodes, ch->nodes_cap, k + 1)) return -1;
    ch->n_words = 0;
    Py_ssize_t at = 0;
    for (Py_ssize_t i = 0; i < k; i++) {
        PyObject *s = PyList_GET_ITEM(texts, i);
        Py_ssize_t len = PyUnicode_GET_LENGTH(s);
        if (i) {
            ch->text[at++] = '\n';
            ch->text[at++] = '\n';
        }
        if (!PyUnicode_AsUCS4(s, ch->text + at, len + 1, 1)) return -1;
        Node *nd = &ch->nodes[i];
        memset(nd, 0, sizeof(*nd));
        nd->start = at;
        nd->len = len;
        nd->w0 = ch->n_words;
        int rc = reserve_words(ch, len);
        if (!rc) rc = scan(ch, ch->text + at, len, &nd->s, SCAN_TABLE);
        if (rc == 1) rc = scan(ch, ch->text + at, len, &nd->s, SCAN_CHARS) || scan_lowered(ch, s, &nd->s);
        if (rc) return -1;
        nd->w1 = ch->n_words;
        at += len;
    }
    return k;
}

static void node_text(Chain *ch, Py_ssize_t i, Text *t) {
    Node *nd = &ch->nodes[i];
    text_init(t, ch->text + nd->start, nd->len, ch->ids + nd->w0, ch->wlen + nd->w0, nd->w1 - nd->w0, &nd->s);
}

/* The kept nodes joined by blank lines, with their words and sums. */
static int kept_text(Chain *ch, Py_ssize_t k, const char *kept, Text *t) {
    Py_ssize_t n_kept = 0, len = 0, words = 0;
    Sums s;
    memset(&s, 0, sizeof(s));
    for (Py_ssize_t i = 0; i < k; i++) {
        if (!kept[i]) continue;
        Node *nd = &ch->nodes[i];
        len += nd->len + (n_kept ? 2 : 0);
        words += nd->w1 - nd->w0;
        n_kept++;
        s.special += nd->s.special;
        s.tokens += nd->s.tokens;
        s.hashes += nd->s.hashes;
        s.dots3 += nd->s.dots3;
        s.ellipses += nd->s.ellipses;
        s.alpha_words += nd->s.alpha_words;
        s.word_chars += nd->s.word_chars;
        s.word_runs += nd->s.word_runs; /* the blank-line separators hold no token */
        s.marks += nd->s.marks;
        for (int v = 0; v < MAX_VOCABS; v++) s.vocab[v] += nd->s.vocab[v];
    }
    if (n_kept > 1) s.special += 2 * (n_kept - 1); /* the blank-line separators are whitespace */
    if (n_kept == k) {
        text_init(t, ch->text, len, ch->ids, ch->wlen, ch->n_words, &s);
        return 0;
    }
    if (GROW(ch->kept, ch->kept_cap, len + 1) || GROW(ch->kept_ids, ch->kept_ids_cap, words + 1) ||
        GROW(ch->kept_wlen, ch->kept_wlen_cap, words + 1))
        return -1;
    Py_ssize_t at = 0, w = 0, seen = 0;
    for (Py_ssize_t i = 0; i < k; i++) {
        if (!kept[i]) continue;
        Node *nd = &ch->nodes[i];
        if (seen++) {
            ch->kept[at++] = '\n';
            ch->kept[at++] = '\n';
        }
        memcpy(ch->kept + at, ch->text + nd->start, (size_t)nd->len * sizeof(Py_UCS4));
        at += nd->len;
        Py_ssize_t nw = nd->w1 - nd->w0;
        memcpy(ch->kept_ids + w, ch->ids + nd->w0, (size_t)nw * sizeof(uint64_t));
        memcpy(ch->kept_wlen + w, ch->wlen + nd->w0, (size_t)nw * sizeof(uint32_t));
        w += nw;
    }
    text_init(t, ch->kept, len, ch->kept_ids, ch->kept_wlen, words, &s);
    return 0;
}

/* Buffers a document outgrew: freed after the call, so one huge document (HTML is capped at
 * 5 MB by default, a quarter of a GB of n-gram table) does not pin its memory for the worker's
 * life. What a usual document needs stays allocated. */
#define KEEP_ITEMS ((Py_ssize_t)1 << 21)
#define RELEASE(arr, cap)        \
    do {                         \
        if ((cap) > KEEP_ITEMS) { \
            free(arr);           \
            (arr) = NULL;        \
            (cap) = 0;           \
        }                        \
    } while (0)

static void release_large(Chain *ch) {
    RELEASE(ch->text, ch->text_cap);
    RELEASE(ch->kept, ch->kept_cap);
    RELEASE(ch->lowered, ch->lowered_cap);
    RELEASE(ch->ids, ch->ids_cap);
    RELEASE(ch->wlen, ch->wlen_cap);
    RELEASE(ch->kept_ids, ch->kept_ids_cap);
    RELEASE(ch->kept_wlen, ch->kept_wlen_cap);
    RELEASE(ch->wslot, ch->wslot_cap);
    RELEASE(ch->counts, ch->counts_cap);
    RELEASE(ch->nodes, ch->nodes_cap);
    RELEASE(ch->table.slots, ch->table.cap);
    RELEASE(ch->table.used, ch->table.used_cap);
}

static PyObject *value_object(const Check *c, double v) {
    /* counts are ints, as the Python measures return them */
    if (c->measure == M_WORDS || c->measure == M_VOCAB_COUNT) return PyLong_FromDouble(v);
    return PyFloat_FromDouble(v);
}

static void finish(Chain *ch) {
    release_large(ch);
    ch->busy = 0;
}

/* Start a call: check the argument, hold the chain, scan the text nodes. Returns the node
 * count, or -1 with an exception set (and the chain free again). */
static Py_ssize_t begin(Chain *ch, PyObject *texts, const char *method) {
    if (!PyList_Check(texts)) {
        PyErr_Format(PyExc_TypeError, "%s() takes a list of str", method);
        return -1;
    }
    if (ch->busy) {
        PyErr_SetString(PyExc_RuntimeError, "a TextChain serves one call at a time; use one per thread");
        return -1;
    }
    ch->busy = 1;
    Py_ssize_t k = load_nodes(ch, texts);
    if (k < 0) finish(ch);
    return k;
}

/* run(texts) -> (node failures [(node, check, value)], document failure (check, value) | None) */
static PyObject *Chain_run(Chain *ch, PyObject *texts) {
    Py_ssize_t k = begin(ch, texts, "run");
    if (k < 0) return NULL;
    PyObject *failures = NULL, *doc_failure = NULL, *result = NULL;
    char *kept = NULL;
    if (!(failures = PyList_New(0)) || !(kept = malloc((size_t)k + 1))) goto done;
    Text t;
    for (Py_ssize_t i = 0; i < k; i++) {
        kept[i] = 1;
        node_text(ch, i, &t);
        for (int j = 0; j < ch->n_node_checks; j++) {
            const Check *c = &ch->node_checks[j];
            double v;
            if (measure(ch, &t, c, &v)) goto done;
            if (!passes(c, v)) {
                kept[i] = 0;
                PyObject *val = value_object(c, v);
                PyObject *item = val ? Py_BuildValue("(niN)", i, j, val) : NULL;
                if (!item) goto done;
                int rc = PyList_Append(failures, item);
                Py_DECREF(item);
                if (rc) goto done;
                break;
            }
        }
    }
    if (kept_text(ch, k, kept, &t)) goto done;
    for (int j = 0; j < ch->n_doc_checks; j++) {
        const Check *c = &ch->doc_checks[j];
        double v;
        if (measure(ch, &t, c, &v)) goto done;
        if (!passes(c, v)) {
            PyObject *val = value_object(c, v);
            if (!val) goto done;
            doc_failure = Py_BuildValue("(iN)", j, val);
            if (!doc_failure) goto done;
            break;
        }
    }
    result = Py_BuildValue("(OO)", failures, doc_failure ? doc_failure : Py_None);
done:
    free(kept);
    Py_XDECREF(failures);
    Py_XDECREF(doc_failure);
    finish(ch);
    return result;
}

/* values(texts) -> (per node: every node check's value; every document check's value on the
 * nodes that pass all node checks). No short-circuit: what tests and tuning compare. */
static PyObject *Chain_values(Chain *ch, PyObject *texts) {
    Py_ssize_t k = begin(ch, texts, "values");
    if (k < 0) return NULL;
    PyObject *nodes = NULL, *doc = NULL, *result = NULL;
    char *kept = NULL;
    if (!(nodes = PyList_New(k)) || !(doc = PyList_New(ch->n_doc_checks)) || !(kept = malloc((size_t)k + 1))) goto done;
    Text t;
    for (Py_ssize_t i = 0; i < k; i++) {
        PyObject *row = PyList_New(ch->n_node_checks);
        if (!row) goto done;
        PyList_SET_ITEM(nodes, i, row);
        kept[i] = 1;
        node_text(ch, i, &t);
        for (int j = 0; j < ch->n_node_checks; j++) {
            double v;
            if (measure(ch, &t, &ch->node_checks[j], &v)) goto done;
            kept[i] &= passes(&ch->node_checks[j], v);
            PyObject *val = value_object(&ch->node_checks[j], v);
            if (!val) goto done;
            PyList_SET_ITEM(row, j, val);
        }
    }
    if (kept_text(ch, k, kept, &t)) goto done;
    for (int j = 0; j < ch->n_doc_checks; j++) {
        double v;
        if (measure(ch, &t, &ch->doc_checks[j], &v)) goto done;
        PyObject *val = value_object(&ch->doc_checks[j], v);
        if (!val) goto done;
        PyList_SET_ITEM(doc, j, val);
    }
    result = Py_BuildValue("(OO)", nodes, doc);
done:
    free(kept);
    Py_XDECREF(nodes);
    Py_XDECREF(doc);
    finish(ch);
    return result;
}

/* ------------------------------------------------------------------------------------------ */
/* Construction */

static int parse_checks(PyObject *seq, Check **out, int *n) {
    PyObject *fast = PySequence_Fast(seq, "checks must be a sequence of (measure, arg, is_min, threshold)");
    if (!fast) return -1;
    Py_ssize_t len = PySequence_Fast_GET_SIZE(fast);
    *out = calloc((size_t)len + 1, sizeof(Check));
    if (!*out) {
        Py_DECREF(fast);
        PyErr_NoMemory();
        return -1;
    }
    for (Py_ssize_t i = 0; i < len; i++) {
        Check *c = &(*out)[i];
        if (!PyArg_ParseTuple(PySequence_Fast_GET_ITEM(fast, i), "iipd", &c->measure, &c->arg, &c->is_min, &c->threshold)) {
            Py_DECREF(fast);
            return -1;
        }
        int needs_n = c->measure >= M_CHAR_REPETITION;
        if (c->measure < 0 || c->measure >= M_COUNT || (needs_n && c->arg < 1) ||
            ((c->measure == M_VOCAB_RATIO || c->measure == M_VOCAB_COUNT) && (c->arg < 0 || c->arg >= MAX_VOCABS)) ||
            (c->measure == M_PUNCTUATION_RATIO && c->arg < 0)) {
            PyErr_Format(PyExc_ValueError, "check %zd: bad measure %d or argument %d", i, c->measure, c->arg);
            Py_DECREF(fast);
            return -1;
        }
    }
    *n = (int)len;
    Py_DECREF(fast);
    return 0;
}

static int parse_vocabularies(Chain *ch, PyObject *seq) {
    PyObject *fast = PySequence_Fast(seq, "vocabularies must be a sequence of word collections");
    if (!fast) return -1;
    Py_ssize_t nv = PySequence_Fast_GET_SIZE(fast), total = 0;
    if (nv > MAX_VOCABS) {
        Py_DECREF(fast);
        PyErr_Format(PyExc_ValueError, "at most %d vocabularies", MAX_VOCABS);
        return -1;
    }
    for (Py_ssize_t v = 0; v < nv; v++) {
        Py_ssize_t n = PyObject_Length(PySequence_Fast_GET_ITEM(fast, v));
        if (n < 0) {
            Py_DECREF(fast);
            return -1;
        }
        total += n;
    }
    int bits = 4;
    while (((Py_ssize_t)1 << bits) < 2 * total + 2) bits++;
    Py_ssize_t size = (Py_ssize_t)1 << bits;
    ch->vocab_keys = calloc((size_t)size, sizeof(uint64_t));
    ch->vocab_masks = calloc((size_t)size, 1);
    if (!ch->vocab_keys || !ch->vocab_masks) {
        Py_DECREF(fast);
        PyErr_NoMemory();
        return -1;
    }
    ch->vocab_mask_bits = (uint64_t)size - 1;
    ch->vocab_shift = 64 - bits;
    ch->n_vocabs = (int)nv;
    Py_UCS4 buf[256];
    for (Py_ssize_t v = 0; v < nv; v++) {
        PyObject *it = PyObject_GetIter(PySequence_Fast_GET_ITEM(fast, v)), *w;
        if (!it) {
            Py_DECREF(fast);
            return -1;
        }
        while ((w = PyIter_Next(it))) {
            if (!PyUnicode_Check(w)) {
                Py_DECREF(w);
                Py_DECREF(it);
                Py_DECREF(fast);
                PyErr_SetString(PyExc_TypeError, "vocabulary words must be str");
                return -1;
            }
            Py_ssize_t n = PyUnicode_GET_LENGTH(w);
            if (n >= 256) { /* longer than any word worth listing: cannot match a word id below */
                Py_DECREF(w);
                continue;
            }
            PyUnicode_AsUCS4(w, buf, 256, 0);
            Py_DECREF(w);
            uint64_t id = word_id(buf, n);
            uint64_t i = (id * 0xD6E8FEB86659FD93ull) >> ch->vocab_shift;
            while (ch->vocab_masks[i] && ch->vocab_keys[i] != id) i = (i + 1) & ch->vocab_mask_bits;
            ch->vocab_keys[i] = id;
            ch->vocab_masks[i] |= (uint8_t)(1u << v);
        }
        Py_DECREF(it);
        if (PyErr_Occurred()) {
            Py_DECREF(fast);
            return -1;
        }
    }
    Py_DECREF(fast);
    return 0;
}

/* TextChain(char_table, vocabularies, node_checks, doc_checks)
 * char_table: 0x10000 little-endian uint32 entries (filters._kernel_char_table);
 * vocabularies: up to 8 collections of lower-case words (a check's arg picks one);
 * checks: (measure, arg, is_min, threshold), in the order they apply. */
static int Chain_init(Chain *ch, PyObject *args, PyObject *kw) {
    Py_buffer table;
    PyObject *vocabs, *node_checks, *doc_checks;
    static char *names[] = {"char_table", "vocabularies", "node_checks", "doc_checks", NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kw, "y*OOO", names, &table, &vocabs, &node_checks, &doc_checks)) return -1;
    if (ch->chars) {
        PyBuffer_Release(&table);
        PyErr_SetString(PyExc_RuntimeError, "TextChain is initialised once");
        return -1;
    }
    if (table.len != 0x10000 * 4) {
        PyBuffer_Release(&table);
        PyErr_SetString(PyExc_ValueError, "char_table must hold 65536 uint32 entries");
        return -1;
    }
    ch->chars = malloc(0x10000 * sizeof(uint32_t));
    if (!ch->chars) {
        PyBuffer_Release(&table);
        PyErr_NoMemory();
        return -1;
    }
    memcpy(ch->chars, table.buf, 0x10000 * sizeof(uint32_t));
    PyBuffer_Release(&table);
    ch->base_inv = inverse64(NGRAM_BASE);
    if (parse_vocabularies(ch, vocabs)) return -1;
    if (parse_checks(node_checks, &ch->node_checks, &ch->n_node_checks)) return -1;
    if (parse_checks(doc_checks, &ch->doc_checks, &ch->n_doc_checks)) return -1;
    return 0;
}

static void Chain_dealloc(Chain *ch) {
    free(ch->chars);
    free(ch->vocab_keys);
    free(ch->vocab_masks);
    free(ch->node_checks);
    free(ch->doc_checks);
    free(ch->text);
    free(ch->kept);
    free(ch->lowered);
    free(ch->ids);
    free(ch->wlen);
    free(ch->kept_ids);
    free(ch->kept_wlen);
    free(ch->wslot);
    free(ch->counts);
    free(ch->nodes);
    free(ch->table.slots);
    free(ch->table.used);
    Py_TYPE(ch)->tp_free((PyObject *)ch);
}

static PyMethodDef Chain_methods[] = {
    {"run", (PyCFunction)Chain_run, METH_O,
     "run(texts) -> (node failures [(node, check, value)], (check, value) of the document's first failure or None)"},
    {"values", (PyCFunction)Chain_values, METH_O,
     "values(texts) -> ([every node check's value, per node], [every document check's value on the kept nodes])"},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject ChainType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "pipeline._textchain.TextChain",
    .tp_basicsize = sizeof(Chain),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "The configured paragraph and document checks, compiled (see pipeline/filters.py).",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Chain_init,
    .tp_dealloc = (destructor)Chain_dealloc,
    .tp_methods = Chain_methods,
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, .m_name = "_textchain", .m_doc = "Compiled text filter measures.", .m_size = -1,
};

PyMODINIT_FUNC PyInit__textchain(void) {
    if (PyType_Ready(&ChainType) < 0) return NULL;
    PyObject *m = PyModule_Create(&module);
    if (!m) return NULL;
    PyObject *measures = PyDict_New();
    if (!measures) goto fail;
    for (int i = 0; i < M_COUNT; i++) {
        PyObject *v = PyLong_FromLong(i);
        if (!v || PyDict_SetItemString(measures, MEASURE_NAMES[i], v)) {
            Py_XDECREF(v);
            Py_DECREF(measures);
            goto fail;
        }
        Py_DECREF(v);
    }
    if (PyModule_AddObject(m, "MEASURES", measures)) {
        Py_DECREF(measures);
        goto fail;
    }
    Py_INCREF(&ChainType);
    if (PyModule_AddObject(m, "TextChain", (PyObject *)&ChainType)) {
        Py_DECREF(&ChainType);
        goto fail;
    }
    return m;
fail:
    Py_DECREF(m);
    return NULL;
}
