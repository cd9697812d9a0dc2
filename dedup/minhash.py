"""Vectorised MinHash over word n-gram shingles, and LSH band keys.

Text is lower-cased and split into words (runs of ASCII letters/digits or any non-ASCII UTF-8
byte); each word n-gram is a shingle. Everything after ``str.lower`` runs as numpy array
operations over the UTF-8 bytes of a whole batch of texts, with no Python loop per word or
shingle:

- word hashes: a polynomial hash over bytes, computed from prefix sums (wrapping uint64);
- shingle hashes: a polynomial combination of ``ngram`` consecutive word hashes, finalised with
  the murmur3 64-bit mixer;
- signatures: one-permutation hashing with optimal densification (``minhash_signatures``), so a
  text costs O(shingles + num_perm) instead of datasketch's O(shingles x num_perm).

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


def _encode_batch(texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Lower-cased UTF-8 bytes of all texts, each preceded by a NUL (a non-word byte), plus a final
    NUL; and each text's start offset: (uint8[n_bytes], int64[len(texts) + 1])."""
    parts = [t.lower().encode("utf-8", "surrogatepass") for t in texts]
    lengths = np.fromiter((len(b) + 1 for b in parts), dtype=np.int64, count=len(parts))
    offsets = np.ones(len(parts) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    offsets[1:] += 1
    return np.frombuffer(b"\0" + b"\0".join(parts) + b"\0", dtype=np.uint8), offsets


_U32 = np.uint32
_POW_CACHE: list[np.ndarray] = [np.ones(1, dtype=np.uint32), np.ones(1, dtype=np.uint32)]


def _byte_powers(n: int) -> tuple[np.ndarray, np.ndarray]:
    """B**j and B**-j mod 2**32 for j < n (cached and grown on demand)."""
    if _POW_CACHE[0].size < n:
        size = max(n, 2 * _POW_CACHE[0].size, 1 << 16)
        base = np.uint32(int(_BYTE_BASE) & 0xFFFFFFFF)
        inv = np.uint32(pow(int(base), -1, 1 << 32))
        for i, b in enumerate((base, inv)):
            arr = np.full(size, b, dtype=np.uint32)
            arr[0] = 1
            np.multiply.accumulate(arr, out=arr)
            _POW_CACHE[i] = arr
    return _POW_CACHE[0][:n], _POW_CACHE[1][:n]


def _word_hashes(data: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(64-bit hash of each word, start offset of each word) of a byte buffer."""
    # Word bytes: [0-9a-z] or any byte >= 0x80 (SIMD compares: faster than a table lookup).
    is_word = (data | np.uint8(0x20)) - np.uint8(ord("a")) < np.uint8(26)
    is_word |= (data - np.uint8(ord("0"))) < np.uint8(10)
    is_word |= data >= np.uint8(0x80)
    # Word edges alternate start, end, start, ... (the buffer starts and ends with non-word bytes).
    edges = np.flatnonzero(is_word[1:] != is_word[:-1]) + 1
    starts, ends = edges[0::2], edges[1::2]
    if starts.size == 0:
        return np.zeros(0, dtype=np.uint64), starts
    # h(word) = sum_j (byte_j + 1) * B**(j - start) = (S[end] - S[start]) * B**(-start), where
    # S is the prefix sum of (byte_j + 1) * B**j; arithmetic wraps mod 2**32 (B odd, so
    # invertible), which keeps this byte-level pass at 4 bytes per byte of text.
    n = data.size
    pw, inv = _byte_powers(n)
    prefix = np.empty(n + 1, dtype=np.uint32)
    prefix[0] = 0
    terms = data.astype(np.uint32)
    terms += _U32(1)  # never 0, so runs of NUL-like bytes still count
    terms *= pw
    np.add.accumulate(terms, dtype=np.uint32, out=prefix[1:])
    h = (prefix[ends] - prefix[starts]) * inv[starts]
    # Word length in the top half: words that collide mod 2**32 must also have equal lengths.
    return _fmix64(h.astype(np.uint64) | ((ends - starts).astype(np.uint64) << _U64(32))), starts


def _batch_shingles(texts: list[str], ngram: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Seeded 64-bit hashes of every text's word ``ngram``-grams, and the text each belongs to:
    (uint64[n_shingles], int64[n_shingles]). A text with fewer than ``ngram`` words (but at least
    one) is one shingle of all its words; a text without words has none."""
    # One finaliser per shingle mixes in n-gram size and seed (a bijection for a fixed salt, so
    # set sizes and Jaccard similarities do not depend on the seed).
    salt = _U64(ngram) ^ _U64((seed * 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF)
    data, offsets = _encode_batch(texts)
    w, starts = _word_hashes(data)
    if w.size == 0:
        return np.zeros(0, dtype=np.uint64), np.zeros(0, dtype=np.int64)
    doc = np.searchsorted(offsets, starts, side="right") - 1
    counts = np.bincount(doc, minlength=len(texts))
    m = w.size - ngram + 1
    hashes, owners = [], []
    if m > 0:
        acc = w[:m].copy()
        for j in range(1, ngram):
            acc = acc * _WORD_BASE + w[j : j + m]
        ok = doc[:m] == doc[ngram - 1 : ngram - 1 + m]  # no shingle spans two texts
        hashes.append(_fmix64(acc[ok] ^ salt))
        owners.append(doc[:m][ok])
    short = np.flatnonzero((counts > 0) & (counts < ngram))
    if short.size:
        first = np.searchsorted(doc, short)
        hs = []
        with np.errstate(over="ignore"):  # wrapping mod 2**64 is the point
            for d, f in zip(short.tolist(), first.tolist()):
                acc = _U64(0)
                for x in w[f : f + counts[d]]:
                    acc = acc * _WORD_BASE + x
                hs.append(acc ^ _U64(int(counts[d])) ^ salt)
        hashes.append(_fmix64(np.asarray(hs, dtype=np.uint64)))
        owners.append(short.astype(np.int64))
    return np.concatenate(hashes), np.concatenate(owners)


def shingle_hashes(text: str, ngram: int) -> np.ndarray:
    """64-bit hashes of the word ``ngram``-grams of ``text``, in order (the exact shingle set, for tests)."""
    return _batch_shingles([text], ngram)[0]


def _probe_table(num_perm: int, seed: int, attempts: int) -> np.ndarray:
    """int64[attempts, num_perm]: the bins an empty bin borrows from, in order (the same for every text)."""
    key = (num_perm, seed, attempts)
    if key not in _PROBES:
        i = np.arange(num_perm, dtype=np.uint64)[None, :]
        j = np.arange(1, attempts + 1, dtype=np.uint64)[:, None]
        h = _fmix64(i * _U64(0x9E3779B97F4A7C15) ^ (j << _U64(32)) ^ _U64(seed & 0xFFFFFFFF) << _U64(16))
        _PROBES[key] = ((h >> _U64(32)) * _U64(num_perm) >> _U64(32)).astype(np.int64)
    return _PROBES[key]


_PROBES: dict[tuple[int, int, int], np.ndarray] = {}
_MAX_PROBES = 256


def minhash_signatures(texts: list[str], num_perm: int = 128, ngram: int = 5, seed: int = 1) -> np.ndarray:
    """MinHash signatures of ``texts``: uint32[len(texts), num_perm].

    One-permutation hashing with optimal densification (Li et al. 2012; Shrivastava 2017): each
    shingle's seeded 64-bit hash picks a bin from its top bits and competes with its low 32 bits
    for that bin's minimum; an empty bin copies the first non-empty bin of a probe sequence that
    is the same for every text. Each entry then equals between two texts with probability equal
    to their Jaccard similarity, as in k-permutation MinHash, at O(n + k) per text instead of O(n k).
    Rows of texts without any word are all 0xFFFFFFFF (see ``has_shingles``): give them no band keys.
    """
    k = num_perm
    out = np.empty(len(texts) * k, dtype=np.uint32)
    out.fill(_EMPTY)
    if not texts:
        return out.reshape(0, k)
    h, owners = _batch_shingles(texts, ngram, seed)
    if h.size:
        bins = ((h >> _U64(32)) * _U64(k)) >> _U64(32)
        slot = owners * k + bins.astype(np.int64)
        # The value competing inside a bin is independent of the bits that chose the bin.
        np.minimum.at(out, slot, (h & _MASK32).astype(np.uint32))
    sig = out.reshape(len(texts), k)
    filled = sig != _EMPTY
    has_any = filled.any(axis=1)
    empty_r, empty_c = np.nonzero(~filled & has_any[:, None])
    if empty_r.size:
        probes = _probe_table(k, seed, _MAX_PROBES)
        src = sig.copy()
        todo = np.arange(empty_r.size)
        for a in range(_MAX_PROBES):
            cand = probes[a, empty_c[todo]]
            vals = src[empty_r[todo], cand]
            hit = vals != _EMPTY
            sig[empty_r[todo[hit]], empty_c[todo[hit]]] = vals[hit]
            todo = todo[~hit]
            if todo.size == 0:
                break
        for t in todo.tolist():  # beyond the probe table (texts of one or two shingles): scan on
            r, c = empty_r[t], empty_c[t]
            row = src[r]
            nz = np.flatnonzero(row != _EMPTY)
            sig[r, c] = row[nz[np.searchsorted(nz, c) % nz.size]]
    return sig


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
