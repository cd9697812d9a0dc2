"""The webdataset sample layouts of the shards: m3w's ``wds`` and MMC4's, written and read here.

Both keep the same member names in every sample of a tar, which Hugging Face ``datasets``'
webdataset builder requires (plain ``webdataset`` does not care):

* ``wds`` (schema 1.2): ``<doc_id>.json`` is the document (``schemas.document.dumps``) and
  ``<doc_id>.images.mp`` a msgpack list aligned with its ``nodes``: the stored image bytes at
  image positions, nil at texts. With ``images.keep_originals``, ``<doc_id>.originals.mp`` holds
  the crawled bytes the same way. (Schema 1.0/1.1 had one ``<doc_id>.<pos>.<ext>`` member per
  image, ``<doc_id>.original.<pos>.<ext>`` per original; ``unpack_images`` reads those too.)
* ``mmc4``: one ``<doc_id>.json`` per document in MMC4's layout (``mmc4_json``), each image inside
  as ``image_base64``: what OpenFlamingo's ``get_mmc4_dataset`` reads.

Archive metadata is fixed (mtime 0, root, 0644): the same documents give byte-identical tars.
"""
from __future__ import annotations

import base64
import io
import json
import tarfile
from collections.abc import Iterable
from typing import Any

import msgpack

from schemas.document import Document, ImageNode, TextNode, dumps

IMAGES_MEMBER = "images.mp"  # ".mp": the msgpack extension webdataset and datasets both decode
ORIGINALS_MEMBER = "originals.mp"
# m3w measures no image-text similarity: MMC4's matched_sim and similarity_matrix carry the DOM
# match instead, this value at the text an image sits before and 0 elsewhere (``matched_by``:
# "dom_order" says so). It is the top of the 0-100 scale that OpenFlamingo's default
# --mmc4_textsim_threshold (30) is on, so that default keeps every DOM-matched image, and so does
# any threshold on MMC4's cosine scale (OpenFlamingo's README trains with 0.24).
DOM_MATCH_SIM = 100.0
_EXT = {"jpeg": "jpg", "png": "png", "webp": "webp", "gif": "gif", "bmp": "bmp", "tiff": "tiff"}


def image_ext(fmt: str | None) -> str:
    return _EXT.get(fmt or "", "bin")


def tar_add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = 0  # fixed metadata: byte-identical archives across runs
    info.mode = 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    tar.addfile(info, io.BytesIO(data))


def pack_images(values: list[bytes | None]) -> bytes:
    return msgpack.packb(values, use_bin_type=True)


def write_wds(fileobj: Any, docs: Iterable[Document], originals: bool = False) -> int:
    """One sample per document: ``<doc_id>.json`` and ``<doc_id>.images.mp`` (and
    ``<doc_id>.originals.mp`` in every sample when ``originals``). Returns the document count."""
    n = 0
    with tarfile.open(fileobj=fileobj, mode="w|", format=tarfile.USTAR_FORMAT) as tar:
        for doc in docs:
            images = [node if isinstance(node, ImageNode) else None for node in doc.nodes]
            tar_add(tar, f"{doc.doc_id}.json", dumps(doc))
            tar_add(tar, f"{doc.doc_id}.{IMAGES_MEMBER}", pack_images([im.data if im else None for im in images]))
            if originals:
                tar_add(tar, f"{doc.doc_id}.{ORIGINALS_MEMBER}", pack_images([im.original_data if im else None for im in images]))
            n += 1
    return n


def unpack_images(sample: dict[str, Any], n_nodes: int) -> list[bytes | None]:
    """The stored image bytes of a wds sample (``webdataset`` keys: ``images.mp``, or the 1.0/1.1
    ``<pos>.<ext>`` members), aligned with the document's ``n_nodes`` nodes."""
    if IMAGES_MEMBER in sample:
        packed = sample[IMAGES_MEMBER]
        values = msgpack.unpackb(packed) if isinstance(packed, bytes) else packed
        if len(values) != n_nodes:
            raise ValueError(f"{IMAGES_MEMBER} holds {len(values)} entries for {n_nodes} nodes")
        return values
    out: list[bytes | None] = [None] * n_nodes
    for suffix, value in sample.items():
        head, _, ext = suffix.partition(".")
        if head.isdigit() and ext and int(head) < n_nodes:  # any extension: the bytes decide
            out[int(head)] = value
    return out


def mmc4_json(doc: Document) -> dict[str, Any]:
    """The document in MMC4's layout: ``url``, ``text_list``, ``image_info``, ``similarity_matrix``.

    ``text_list`` holds the document's texts in reading order. Each image is matched to the text
    it sits before (OpenFlamingo puts ``<image>`` before its matched text), or to the last text
    when no text follows it. ``image_info[i]``: ``image_name``, ``raw_url``, ``matched_text_index``,
    ``matched_sim`` (``DOM_MATCH_SIM``), ``matched_by`` ("dom_order") and, where the bytes are
    known, ``image_base64``. ``similarity_matrix[i]`` (one row per image, one column per text)
    holds ``DOM_MATCH_SIM`` at the matched text and 0 elsewhere. ``doc_id`` is m3w's.
    """
    text_list: list[str] = []
    pending: list[tuple[int, ImageNode]] = []  # images waiting for the next text
    matched: list[tuple[int, ImageNode, int]] = []
    for pos, node in enumerate(doc.nodes):
        if isinstance(node, TextNode):
            matched += [(p, im, len(text_list)) for p, im in pending]
            pending = []
            text_list.append(node.text)
        else:
            pending.append((pos, node))
    matched += [(p, im, max(len(text_list) - 1, 0)) for p, im in pending]
    image_info, matrix = [], []
    for pos, im, index in matched:
        info: dict[str, Any] = {
            "image_name": f"{doc.doc_id}.{pos:04d}.{image_ext(im.format)}",
            "raw_url": im.url,
            "matched_text_index": index,
            "matched_sim": DOM_MATCH_SIM,
            "matched_by": "dom_order",
        }
        if im.data is not None:
            info["image_base64"] = base64.b64encode(im.data).decode("ascii")
        image_info.append(info)
        matrix.append([DOM_MATCH_SIM if i == index else 0.0 for i in range(len(text_list))])
    return {"url": doc.url, "text_list": text_list, "image_info": image_info, "similarity_matrix": matrix,
            "doc_id": doc.doc_id}


def write_mmc4(fileobj: Any, docs: Iterable[Document], originals: bool = False) -> int:
    """One ``<doc_id>.json`` member per document (``mmc4_json``); MMC4 has no place for originals."""
    n = 0
    with tarfile.open(fileobj=fileobj, mode="w|", format=tarfile.USTAR_FORMAT) as tar:
        for doc in docs:
            blob = json.dumps(mmc4_json(doc), sort_keys=True, ensure_ascii=False, separators=(",", ":"))
            tar_add(tar, f"{doc.doc_id}.json", blob.encode("utf-8", "surrogatepass"))
            n += 1
    return n


def mmc4_positions(obj: dict[str, Any]) -> tuple[list[str | None], list[dict[str, Any] | None]]:
    """An MMC4 document (ours or as published) as aligned ``texts`` / ``image_info`` positions:
    each image placed just before its ``matched_text_index`` text, in ``image_info`` order."""
    before: dict[int, list[dict[str, Any]]] = {}
    n = len(obj["text_list"])
    tail = []
    for info in obj["image_info"]:
        i = info.get("matched_text_index")
        (before.setdefault(i, []) if isinstance(i, int) and 0 <= i < n else tail).append(info)
    texts: list[str | None] = []
    infos: list[dict[str, Any] | None] = []
    for i, text in enumerate(obj["text_list"]):
        for info in before.get(i, []):
            texts.append(None)
            infos.append(info)
        texts.append(text)
        infos.append(None)
    for info in tail:
        texts.append(None)
        infos.append(info)
    return texts, infos
