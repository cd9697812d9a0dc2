"""Vectorised MinHash over word n-gram shingles, and LSH band keys.

Text is lower-cased and split into words (runs of ASCII letters/digits or any non-ASCII UTF-8
byte); each word n-gram is a shingle. Everything after ``str.lower`` runs as numpy array
operations over the UTF-8 bytes of a whole batch, with no Python loop per word or shingle:

- word hashes: a polynomial hash over bytes, computed from prefix sums (wrapping uint64);
- shingle hashes: a polynomial combination of ``ngram`` consecutive word hashes, finalised with
  the murmur3 64-bit mixer and cut to 32 bits;
- permutations: ``h_k(x) = ((a_k * x + b_k) mod 2**64) >> 32`` with random 64-bit ``a_k`` (odd)
  and ``b_k`` (multiply-add-shift, a 2-independent family); the minimum over a document's
  shingles is signature entry ``k``.

The estimate of Jaccard similarity is the fraction of equal entries, exactly as with datasketch's
MinHash; tests check both against the exact shingle-set Jaccard and against datasketch.
"""
from __future__ import annotations

import hashlib

import numpy as np

_U64 = np.uint64
_MASK32 = _U64(0xFFFFFFFF)
# Byte classes: a word is a run of [0-9a-z] (after lower-casing) or of any non-ASCII UTF-8 byte.
_WORD_BYTE = np.zeros(256, dtype=bool)
_WORD_BYTE[ord("0") : ord("9") + 1] = True
_WORD_BYTE[ord("a") : ord("z") + 1] = True
_WORD_BYTE[ord("A") : ord("Z") + 1] = True
_WORD_BYTE[0x80:] = True
# Fixed odd multipliers for the byte and word polynomials (any odd constant is invertible mod 2**64).
_BYTE_BASE = _U64(0x100000001B3)  # FNV-1a 64-bit prime
_WORD_BASE = _U64(0x9E3779B97F4A7C15)  # golden-ratio constant
_EMPTY = np.uint32(0xFFFFFFFF)  # signature entry of a document with no shingle


def _inverse_mod_2_64(a: int) -> int:
    return pow(a, -1, 1 << 64)


_BYTE_BASE_INV = _U64(_inverse_mod_2_64(int(_BYTE_BASE)))


def _fmix64(h: np.ndarray) -> np.ndarray:
    """murmur3's 64-bit finaliser: every output bit depends on every input bit."""
    h = h ^ (h >> _U64(33))
    h = h * _U64(0xFF51AFD7ED558CCD)
    h = h ^ (h >> _U64(33))
    h = h * _U64(0xC4CEB9FE1A85EC53)
    return h ^ (h >> _U64(33))


def _powers(base: np.uint64, n: int) -> np.ndarray:
    """base**0 .. base**(n-1), wrapping mod 2**64."""
    out = np.full(n, base, dtype=np.uint64)
    if n:
        out[0] = 1
        np.multiply.accumulate(out, out=out)
    return out


def word_hashes(text: str) -> np.ndarray:
    """64-bit hash of each word of ``text`` (lower-cased), in order: uint64[n_words]."""
    data = np.frombuffer(text.lower().encode("utf-8", "surrogatepass"), dtype=np.uint8)
    if data.size == 0:
        return np.zeros(0, dtype=np.uint64)
    is_word = _WORD_BYTE[data]
    edges = np.diff(is_word.astype(np.int8), prepend=np.int8(0), append=np.int8(0))
    starts = np.flatnonzero(edges == 1)
    ends = np.flatnonzero(edges == -1)
    if starts.size == 0:
        return np.zeros(0, dtype=np.uint64)
    # h(word) = sum_j byte_j * B**(j - start) = (S[end] - S[start]) * B**(-start), where
    # S is the prefix sum of byte_j * B**j; all arithmetic wraps mod 2**64, B odd hence invertible.
    n = data.size
    pw = _powers(_BYTE_BASE, n)
    prefix = np.zeros(n + 1, dtype=np.uint64)
    np.cumsum((data.astype(np.uint64) + _U64(1)) * pw, out=prefix[1:])
    inv = _powers(_BYTE_BASE_INV, n)
    h = (prefix[ends] - prefix[starts]) * inv[starts]
    # Length in the hash keeps "ab" and "ab\0"-like prefixes apart.
    return _fmix64(h ^ (ends - starts).astype(np.uint64))


def shingle_hashes(text: str, ngram: int) -> np.ndarray:
    """32-bit hash of each word ``ngram``-gram of ``text`` (uint64 values < 2**32), in order.

    A text with fewer than ``ngram`` words (but at least one) is one shingle; an empty text has none.
    """
    w = word_hashes(text)
    if w.size == 0:
        return np.zeros(0, dtype=np.uint64)
    k = min(ngram, w.size)
    m = w.size - k + 1
    acc = w[:m].copy()
    for j in range(1, k):
        acc = acc * _WORD_BASE + w[j : j + m]
    acc = acc ^ _U64(k)
    return _fmix64(acc) >> _U64(32)


def permutations(num_perm: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``num_perm`` multiply-shift hash functions for ``seed``: (a, b), each uint64[num_perm]."""
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 1 << 64, size=num_perm, dtype=np.uint64, endpoint=False) | _U64(1)
    b = rng.integers(0, 1 << 64, size=num_perm, dtype=np.uint64, endpoint=False)
    return a, b


_PERM_CACHE: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = {}
_CHUNK_ROWS = 2048  # shingles per block: keeps the (rows x num_perm) block in L2 cache


def _cached_permutations(num_perm: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    key = (num_perm, seed)
    if key not in _PERM_CACHE:
        _PERM_CACHE[key] = permutations(num_perm, seed)
    return _PERM_CACHE[key]


def signature_from_hashes(hashes: np.ndarray, num_perm: int, seed: int) -> np.ndarray:
    """MinHash signature of one set of 32-bit shingle hashes: uint32[num_perm]."""
    a, b = _cached_permutations(num_perm, seed)
    if hashes.size == 0:
        return np.full(num_perm, _EMPTY, dtype=np.uint32)
    best = np.full(num_perm, np.iinfo(np.uint64).max, dtype=np.uint64)
    for lo in range(0, hashes.size, _CHUNK_ROWS):
        x = hashes[lo : lo + _CHUNK_ROWS, None]
        # (a*x + b) mod 2**64, the top 32 bits being the hash (multiply-add-shift); ">> 32" is
        # monotone, so the minimum is taken on the full word and shifted once at the end.
        block = x * a
        block += b
        np.minimum(best, block.min(axis=0), out=best)
    return (best >> _U64(32)).astype(np.uint32)


def minhash_signatures(texts: list[str], num_perm: int = 128, ngram: int = 5, seed: int = 1) -> np.ndarray:
    """MinHash signatures of ``texts``: uint32[len(texts), num_perm].

    Rows of texts without any word are all 0xFFFFFFFF (see ``has_shingles``); give them no band keys.
    """
    out = np.empty((len(texts), num_perm), dtype=np.uint32)
    for i, t in enumerate(texts):
        out[i] = signature_from_hashes(shingle_hashes(t, ngram), num_perm, seed)
    return out


def has_shingles(sig: np.ndarray) -> bool:
    """False for the signature of a text with no word."""
    return bool((sig != _EMPTY).any())


def jaccard_estimate(sig_a: np.ndarray, sig_b: np.ndarray) -> float:
    """Estimated Jaccard similarity of the two shingle sets: the fraction of equal entries."""
    assert sig_a.shape == sig_b.shape, f"signature shapes differ: {sig_a.shape} vs {sig_b.shape}"
    return float(np.count_nonzero(sig_a == sig_b)) / sig_a.size


def lsh_band_keys(sig: np.ndarray, bands: int, rows: int) -> list[bytes]:
    """One key per band: 2 bytes of band index + a 16-byte digest of the band's ``rows`` entries.

    Two signatures share a key iff (up to digest collisions) they agree on a whole band, which for
    Jaccard ``s`` happens in at least one band with probability ``1 - (1 - s**rows)**bands``.
    """
    assert sig.size >= bands * rows, f"signature has {sig.size} entries, bands x rows needs {bands * rows}"
    raw = np.ascontiguousarray(sig[: bands * rows], dtype="<u4").reshape(bands, rows)
    return [
        i.to_bytes(2, "big") + hashlib.blake2b(raw[i].tobytes(), digest_size=16).digest() for i in range(bands)
    ]


def candidate_probability(s: float, bands: int, rows: int) -> float:
    """Probability that two texts of Jaccard ``s`` share at least one band key."""
    return 1.0 - (1.0 - s**rows) ** bands
