"""The paper's evaluation tasks: readers for each benchmark's standard files, prompts and metrics.

Each reader takes the folder a benchmark was unpacked into and returns (support, queries): the
training split the in-context examples come from, and the split that is scored. Prompts follow the
paper and OpenFlamingo: ``<image>Output:{caption}<|endofchunk|>`` for captions,
``<image>Question:{q} Short answer:{a}<|endofchunk|>`` for VQA; the query comes last, without
its answer.
"""
from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from model.eval import metrics


@dataclass
class Example:
    id: str
    image: Path
    question: str = ""
    answers: list[str] = field(default_factory=list)  # captions (caption tasks) or human answers (VQA)
    label: int = -1  # class index (ImageNet) or 0/1 (HatefulMemes)
    text: str = ""  # the text written on a meme


def _need(path: Path) -> Path:
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: point --data at the folder holding the benchmark's files")
    return path


def _json(path: Path):
    return json.loads(_need(path).read_text())


def _first(*paths: Path) -> Path:
    for p in paths:
        if p.exists():
            return p
    return _need(paths[0])


# --- readers --------------------------------------------------------------------------------


def read_karpathy(data: Path, filename: str, image_dir: str) -> tuple[list[Example], list[Example]]:
    """Karpathy-split JSON (``dataset_coco.json`` / ``dataset_flickr30k.json``): images with
    ``split`` train/restval (support) or test (queries) and their ``sentences``."""
    support, queries = [], []
    for im in _json(data / filename)["images"]:
        where = [data / im["filepath"] / im["filename"]] if im.get("filepath") else []
        path = _first(*where, data / image_dir / im["filename"], data / im["filename"])
        ex = Example(id=str(im.get("cocoid", im.get("imgid", im["filename"]))), image=path,
                     answers=[s["raw"].strip() for s in im["sentences"]])
        if im["split"] in ("train", "restval"):
            support.append(ex)
        elif im["split"] == "test":
            queries.append(ex)
    return support, queries


def _vqa_split(data: Path, questions: str, annotations: str, split: str) -> list[Example]:
    qs = _json(data / questions.format(split=split))["questions"]
    anns = {a["question_id"]: a for a in _json(data / annotations.format(split=split))["annotations"]}
    out = []
    for q in qs:
        a = anns[q["question_id"]]
        image = data / f"{split}2014" / f"COCO_{split}2014_{q['image_id']:012d}.jpg"
        out.append(Example(id=str(q["question_id"]), image=image, question=q["question"],
                           answers=[x["answer"] for x in a["answers"]]))
    return out


def read_vqa(data: Path, prefix: str) -> tuple[list[Example], list[Example]]:
    """VQAv2 (``v2_OpenEnded_mscoco_{train,val}2014_questions.json`` + ``v2_mscoco_…_annotations.json``)
    or OK-VQA (the same names without ``v2_``); images under ``train2014/`` and ``val2014/``."""
    q, a = prefix + "OpenEnded_mscoco_{split}2014_questions.json", prefix + "mscoco_{split}2014_annotations.json"
    return _vqa_split(data, q, a, "train"), _vqa_split(data, q, a, "val")


def read_textvqa(data: Path) -> tuple[list[Example], list[Example]]:
    """TextVQA 0.5.1: ``TextVQA_0.5.1_{train,val}.json`` (``data`` list); images in ``train_images/``."""
    def split(name):
        return [Example(id=str(d["question_id"]), image=data / "train_images" / f"{d['image_id']}.jpg",
                        question=d["question"], answers=list(d["answers"]))
                for d in _json(data / f"TextVQA_0.5.1_{name}.json")["data"]]
    return split("train"), split("val")


def read_vizwiz(data: Path) -> tuple[list[Example], list[Example]]:
    """VizWiz VQA: ``Annotations/{train,val}.json`` (or at the top) and images in ``{train,val}/``."""
    def split(name):
        rows = _json(_first(data / "Annotations" / f"{name}.json", data / f"{name}.json"))
        return [Example(id=r["image"], image=data / name / r["image"], question=r["question"],
                        answers=[a["answer"] for a in r["answers"]]) for r in rows]
    return split("train"), split("val")


def read_hateful_memes(data: Path) -> tuple[list[Example], list[Example]]:
    """HatefulMemes: ``train.jsonl`` and ``dev_seen.jsonl`` (or ``dev.jsonl``), ``img`` relative to the folder."""
    def split(path):
        rows = [json.loads(line) for line in _need(path).read_text().splitlines() if line.strip()]
        return [Example(id=str(r["id"]), image=data / r["img"], text=r["text"], label=int(r["label"])) for r in rows]
    return split(data / "train.jsonl"), split(_first(data / "dev_seen.jsonl", data / "dev.jsonl"))


IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp"}


def imagenet_classes(data: Path) -> tuple[list[str], list[str]]:
    """(folder names, class names) from ``classnames.txt`` ("<folder> <name>" per line) or
    ``classnames.json`` ({folder: name}); the class index is the line / key order."""
    txt, js = data / "classnames.txt", data / "classnames.json"
    if js.exists():
        pairs = list(json.loads(js.read_text()).items())
    else:
        pairs = [tuple(line.split(None, 1)) for line in _need(txt).read_text().splitlines() if line.strip()]
    return [p[0] for p in pairs], [p[1].strip() for p in pairs]


def read_imagenet(data: Path) -> tuple[list[Example], list[Example]]:
    """ImageNet-style class folders ``train/<folder>/*`` and ``val/<folder>/*``."""
    folders, _ = imagenet_classes(data)

    def split(name):
        out = []
        for label, folder in enumerate(folders):
            for p in sorted((_need(data / name) / folder).iterdir()):
                if p.suffix.lower() in IMAGE_SUFFIXES:
                    out.append(Example(id=f"{folder}/{p.name}", image=p, label=label))
        return out
    return split("train"), split("val")


# --- tasks ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Task:
    name: str
    kind: str  # "caption" | "vqa" (beam search) | "classify" | "hateful" (log-likelihood ranking)
    read: Callable[[Path], tuple[list[Example], list[Example]]]
    metric: str  # the headline metric's name
    max_new_tokens: int = 0  # open-ended: OpenFlamingo's generation lengths

    @property
    def open_ended(self) -> bool:
        return self.kind in ("caption", "vqa")

    def query_text(self, ex: Example) -> str:
        """The text after the query's ``<image>`` (what the model continues)."""
        if self.kind == "caption":
            return "Output:"
        if self.kind == "vqa":
            return f"Question:{ex.question} Short answer:"
        if self.kind == "hateful":
            return f"is an image with: '{ex.text}' written on it. Is it hateful? Answer:"
        return "Output:"

    def answer_text(self, ex: Example, class_names: list[str] | None = None) -> str:
        """A support example's answer (its text before ``<|endofchunk|>``)."""
        if self.kind == "caption":
            return ex.answers[0]
        if self.kind == "vqa":  # the answer most humans gave (first of the most common on a tie)
            return Counter(ex.answers).most_common(1)[0][0]
        if self.kind == "hateful":
            return "yes" if ex.label == 1 else "no"
        return class_names[ex.label]

    def postprocess(self, text: str) -> str:
        """Trim a generation at the prompt's keywords (the model may run on into a new example)."""
        stops = ("Output",) if self.kind == "caption" else ("Question", "Answer", "Short")
        for s in stops:
            text = text.split(s)[0]
        return text.strip()


TASKS = {t.name: t for t in [
    Task("coco", "caption", lambda d: read_karpathy(d, "dataset_coco.json", ""), "CIDEr", 20),
    Task("flickr30k", "caption", lambda d: read_karpathy(d, "dataset_flickr30k.json", "flickr30k_images"), "CIDEr", 20),
    Task("vqav2", "vqa", lambda d: read_vqa(d, "v2_"), "VQA accuracy", 5),
    Task("okvqa", "vqa", lambda d: read_vqa(d, ""), "VQA accuracy", 5),
    Task("textvqa", "vqa", read_textvqa, "VQA accuracy", 10),
    Task("vizwiz", "vqa", read_vizwiz, "VQA accuracy", 10),
    Task("hatefulmemes", "hateful", read_hateful_memes, "ROC-AUC"),
    Task("imagenet", "classify", read_imagenet, "top-1"),
]}


def get_task(name: str) -> Task:
    try:
        return TASKS[name.lower()]
    except KeyError:
        raise ValueError(f"unknown task {name!r}; choose one of {', '.join(TASKS)}") from None


def score_task(task: Task, queries: list[Example], outputs: list) -> dict[str, float]:
    """Metrics of one trial. outputs: generated strings (open-ended), p(yes) (HatefulMemes) or
    class scores [n_classes] (ImageNet), one per query. Accuracies are ×100 as in the paper."""
    if task.kind == "caption":
        refs = {ex.id: ex.answers for ex in queries}
        return {"CIDEr": 100 * metrics.cider(refs, {ex.id: o for ex, o in zip(queries, outputs)})}
    if task.kind == "vqa":
        accs = [metrics.vqa_accuracy(o, ex.answers) for ex, o in zip(queries, outputs)]
        return {"VQA accuracy": 100 * sum(accs) / len(accs)}
    labels = [ex.label for ex in queries]
    if task.kind == "hateful":
        return {"ROC-AUC": 100 * metrics.roc_auc(labels, outputs)}
    return {"top-1": 100 * metrics.top_k(labels, outputs, 1), "top-5": 100 * metrics.top_k(labels, outputs, 5)}
