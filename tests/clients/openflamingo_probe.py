"""Runs in OpenFlamingo's own venv (openflamingo-venv.sh): its MMC4 loader on m3w's mmc4 shards.

    python openflamingo_probe.py documents REPORT.json USABLE.tar SHARD.tar [SHARD.tar ...]
    python openflamingo_probe.py loader REPORT.json USABLE.tar

Imports OpenFlamingo's ``open_flamingo/train/data.py`` the way its ``train.py`` does (that folder
on ``sys.path``), with two stand-ins for what would need downloaded weights: a byte-level BPE
trained here on the shards' texts (lossless, so the text OpenFlamingo builds can be decoded and
checked) and open_clip's image transform with no model. Writes a JSON report:

* ``documents``: per document, what ``preprocess_interleaved`` (the per-sample step of the loader)
  made of it: which images it kept, whether each kept tensor is open_clip's transform of our
  bytes, and the decoded text with its ``<image>`` markers;
* ``loader``: the shapes and dtypes of the batches ``get_mmc4_dataset`` yields, with the options
  of OpenFlamingo's ``train.py`` (threshold 30, 1–6 images per sample, 256 tokens).
"""
from __future__ import annotations

import base64
import importlib.util
import io
import json
import os
import random
import sys
import tarfile
import types

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # the loader forks a worker

import numpy as np  # noqa: E402
import open_clip  # noqa: E402
import torch  # noqa: E402
import webdataset as wds  # noqa: E402
from PIL import Image  # noqa: E402
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers  # noqa: E402
from transformers import PreTrainedTokenizerFast  # noqa: E402

TRAIN_DIR = os.path.join(importlib.util.find_spec("open_flamingo").submodule_search_locations[0], "train")
sys.path.insert(0, TRAIN_DIR)
import data as of_data  # noqa: E402  OpenFlamingo's loader, imported as its train.py imports it
from data_utils import tarfile_to_samples_nothrow  # noqa: E402

THRESHOLD = 30.0  # train.py's default --mmc4_textsim_threshold
MAX_IMAGES, MAX_TOKENS = 6, 256  # train.py's --mmc4_max_num_images; data.py's max_tokens
SPECIALS = ["<|endofchunk|>", "<image>"]


def samples(shards: list[str]):
    """(key, json bytes) as the loader's own stages produce them, minus the shuffles."""
    pipeline = wds.DataPipeline(wds.SimpleShardList(shards), tarfile_to_samples_nothrow)
    for s in pipeline:
        yield s["__key__"], s["json"]


def make_tokenizer(texts: list[str]) -> PreTrainedTokenizerFast:
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<|endoftext|>", "<PAD>", *SPECIALS],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    bpe.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|endoftext|>", pad_token="<PAD>",
                                   additional_special_tokens=SPECIALS)


def run_loader(shards, tokenizer, image_processor, n_samples) -> dict:
    args = types.SimpleNamespace(
        # Its --mmc4_shards is one brace pattern; "{a}" alone does not expand.
        mmc4_shards=shards[0] if len(shards) == 1 else "{" + ",".join(shards) + "}", train_num_samples_mmc4=n_samples, batch_size_mmc4=2,
        mmc4_textsim_threshold=THRESHOLD, mmc4_min_num_images=1, mmc4_max_num_images=MAX_IMAGES,
        seed=0, world_size=1, workers=1, dataset_resampled=False,
    )
    info = of_data.get_mmc4_dataset(args, image_processor, tokenizer)
    batches = []
    for images, texts in info.dataloader:
        # As OpenFlamingo's train.py unpacks a batch: the texts are a list of (ids, mask) pairs.
        input_ids = torch.stack([x[0] for x in texts])
        attention_mask = torch.stack([x[1] for x in texts])
        batches.append({"images": list(images.shape), "images_dtype": str(images.dtype),
                        "input_ids": list(input_ids.shape), "attention_mask": list(attention_mask.shape),
                        "image_tokens": int((input_ids == tokenizer.convert_tokens_to_ids("<image>")).sum())})
    return {"num_batches": info.dataloader.num_batches, "batches": batches}


def probe_document(raw: bytes, tokenizer, image_processor, max_tokens: int = 100_000) -> dict:
    """``preprocess_interleaved`` on one sample; by default with room for every image and token it has."""
    obj = json.loads(raw)
    max_images = len(obj["image_info"]) + 1 if max_tokens > MAX_TOKENS else MAX_IMAGES
    for attempt in range(64):  # it drops a one-image sample with probability 1/2: retry, seeded
        random.seed(attempt)
        torch.manual_seed(attempt)
        try:
            images, (ids, _) = of_data.preprocess_interleaved(
                (raw,), tokenizer, image_processor, THRESHOLD, 1, max_num_images=max_images, max_tokens=max_tokens)
            break
        except ValueError as e:
            error = str(e)
            if "Only one image" not in error:
                return {"error": error}
    else:
        return {"error": error}
    kept = [i for i, info in enumerate(obj["image_info"])
            if "image_base64" in info and len(base64.b64decode(info["image_base64"])) // 1000 > of_data.MIN_KB]
    same = []
    for k, i in enumerate(kept[:MAX_IMAGES] if max_tokens <= MAX_TOKENS else kept):  # the flip is the whole stack's
        ref = image_processor(Image.open(io.BytesIO(base64.b64decode(obj["image_info"][i]["image_base64"]))).convert("RGB"))
        same.append(bool(torch.equal(images[k], ref) or torch.equal(images[k], ref.flip(-1))))
    pad = tokenizer.pad_token_id
    text = tokenizer.decode([t for t in ids[0].tolist() if t != pad], skip_special_tokens=False)
    return {"kept": kept, "same_pixels": same, "text": text, "images_shape": list(images.shape)}


def write_usable(path: str, docs: list[tuple[str, bytes]], copies: int = 8) -> None:
    """Each usable document ``copies`` times: the loader drops half the one-image samples and
    batches each pass over the shards alone (``partial=False``), so one pass must fill a batch."""
    with tarfile.open(path, "w") as tar:
        for key, raw in docs:
            for c in range(copies):
                info = tarfile.TarInfo(f"{key}-{c}.json")
                info.size = len(raw)
                tar.addfile(info, io.BytesIO(raw))


def main(argv: list[str]) -> int:
    """``documents REPORT USABLE.tar SHARD...``: per-document report, and the documents the loader
    can use at its 256 tokens written to USABLE.tar. ``loader REPORT SHARD...``: run the loader.
    The loader gets a process of its own (its worker is forked, and a fork after torch has run
    can hang) and only usable documents (with none, it repeats the shards forever)."""
    mode, report_path, rest = argv[0], argv[1], argv[2:]
    shards = rest[1:] if mode == "documents" else rest
    docs = list(samples(shards))
    texts = [t for _, raw in docs for t in json.loads(raw)["text_list"]]
    tokenizer = make_tokenizer(texts)
    image_processor = open_clip.image_transform(224, is_train=False)
    if mode == "loader":
        report = run_loader(shards, tokenizer, image_processor, 4)
    else:
        usable = [(k, raw) for k, raw in docs if "error" not in probe_document(raw, tokenizer, image_processor, MAX_TOKENS)]
        write_usable(rest[0], usable)
        report = {"min_kb": of_data.MIN_KB, "usable": [k for k, _ in usable],
                  "documents": {key: probe_document(raw, tokenizer, image_processor) for key, raw in docs}}
    with open(report_path, "w", encoding="utf-8") as f:
        json.dump(report, f)
    return 0


if __name__ == "__main__":
    np.random.seed(0)
    sys.exit(main(sys.argv[1:]))
