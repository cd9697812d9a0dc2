"""Builds small evaluation sets in each benchmark's standard layout from real photos in
../shared/data/images, with hand-written captions, questions, answers and meme texts.

    python -m tests.model.eval_fixtures OUT_DIR     # writes OUT_DIR/<task>/ for every task

Only the text below is part of the repository; the photos are re-encoded into OUT_DIR.
"""
from __future__ import annotations

import io
import json
import sys
from pathlib import Path

SK = "skimage_data_photos"
HIST = "skimage_data_photos/historical_variants"
BRIDGE = "pdq_bridge_mods"

# photo -> (captions, question, ten human answers). The first photos are the support (train)
# split, the last ones the queries; the bridge's sharpened copy is in the support set and its
# original is a query, so RICES has a planted near-duplicate to find.
PHOTOS = [
    (f"{SK}/chelsea.png", ["A tabby cat looking to the side.", "A striped cat sitting indoors."],
     "What animal is this?", ["cat"] * 7 + ["kitten", "tabby cat", "cat"]),
    (f"{SK}/coffee.png", ["A cup of coffee on a saucer.", "A white coffee cup with a spoon."],
     "What is in the cup?", ["coffee"] * 8 + ["latte", "espresso"]),
    (f"{SK}/astronaut.png", ["An astronaut in an orange suit.", "A smiling astronaut with a flag behind her."],
     "What is her job?", ["astronaut"] * 9 + ["pilot"]),
    (f"{BRIDGE}/sharpen-a-little.jpg", ["A steel bridge over the water.", "A long bridge under a blue sky."],
     "What is shown?", ["bridge"] * 8 + ["a bridge", "river"]),
    (f"{SK}/rocket.jpg", ["A rocket standing on its launch pad.", "A white rocket ready for launch."],
     "What is about to launch?", ["rocket"] * 9 + ["spaceship"]),
    (f"{HIST}/eagle.png", ["An eagle perched on a branch.", "A bird of prey looking at the camera."],
     "What bird is this?", ["eagle"] * 6 + ["bald eagle"] * 3 + ["hawk"]),
    (f"{SK}/coins.png", ["Old coins lying on a table.", "Rows of coins on a dark surface."],
     "How many rows of coins are there?", ["4"] * 5 + ["four"] * 3 + ["3", "5"]),
    (f"{SK}/motorcycle_left.png", ["A motorcycle parked in a garage.", "A red motorbike next to a wall."],
     "What vehicle is this?", ["motorcycle"] * 6 + ["motorbike"] * 3 + ["bike"]),
    # queries
    (f"{BRIDGE}/aaa-orig.jpg", ["A bridge crossing a river.", "A large bridge on a sunny day."],
     "What is shown?", ["bridge"] * 9 + ["water"]),
    (f"{HIST}/chelsea.jpg", ["A cat with green eyes.", "A tabby cat on a carpet."],
     "What animal is this?", ["cat"] * 8 + ["kitty", "kitten"]),
    (f"{SK}/camera.png", ["A man with a camera on a tripod.", "A black and white photo of a photographer."],
     "What is the man holding?", ["camera"] * 7 + ["a camera", "tripod", "camera"]),
    (f"{HIST}/horse.jpeg", ["A horse standing in a field.", "A brown horse outdoors."],
     "What animal is this?", ["horse"] * 9 + ["pony"]),
]
N_SUPPORT = 8

# Meme texts (HatefulMemes layout): hand-written, harmless; labels alternate so ROC-AUC is defined.
MEMES = ["when the coffee kicks in", "monday again", "i can has cheezburger", "look at this bridge",
         "to the moon", "nobody: me at 3 am", "this is fine", "one does not simply", "me after one rep",
         "when you see it", "that escalated quickly", "just five more minutes"]

# ImageNet-style classes: folder, name, train photos, val photos.
CLASSES = [
    ("n02123045", "tabby cat", [f"{SK}/chelsea.png"], [f"{HIST}/chelsea.jpg"]),
    ("n03733131", "suspension bridge", [f"{BRIDGE}/blur-a-little.jpg", f"{BRIDGE}/shrink-a-lot.jpg"], [f"{BRIDGE}/aaa-orig.jpg"]),
    ("n04266014", "space shuttle", [f"{SK}/rocket.jpg"], [f"{SK}/rocket.jpg"]),
    ("n01614925", "bald eagle", [f"{HIST}/eagle.png"], [f"{HIST}/eagle.png"]),
    ("n03063599", "coffee mug", [f"{SK}/coffee.png"], [f"{SK}/coffee.png"]),
]


def _jpeg(src: Path, dst: Path, side: int = 96) -> None:
    from PIL import Image

    im = Image.open(src).convert("RGB")
    im.thumbnail((side, side))
    dst.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    im.save(buf, "PNG" if dst.suffix == ".png" else "JPEG", quality=90)
    dst.write_bytes(buf.getvalue())


def _write(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))


def build(images: Path, out: Path) -> dict[str, Path]:
    """Write every task's fixture under ``out``; ``images`` is ../shared/data/images."""
    out = Path(out)
    dirs = {t: out / t for t in ("coco", "flickr30k", "vqav2", "okvqa", "textvqa", "vizwiz", "hatefulmemes", "imagenet")}
    split = lambda i: "train" if i < N_SUPPORT else "test"

    # Karpathy splits
    coco, flickr = [], []
    for i, (photo, caps, _, _) in enumerate(PHOTOS):
        sub = "train2014" if i < N_SUPPORT else "val2014"
        name = f"COCO_{sub}_{i:012d}.jpg"
        _jpeg(images / photo, dirs["coco"] / sub / name)
        coco.append({"filepath": sub, "filename": name, "cocoid": i, "split": split(i) if i % 3 else ("restval" if i < N_SUPPORT else "test"),
                     "sentences": [{"raw": c} for c in caps]})
        fname = f"{1000 + i}.jpg"
        _jpeg(images / photo, dirs["flickr30k"] / "flickr30k_images" / fname)
        flickr.append({"filename": fname, "imgid": i, "split": split(i), "sentences": [{"raw": c} for c in caps]})
    _write(dirs["coco"] / "dataset_coco.json", {"images": coco, "dataset": "coco"})
    _write(dirs["flickr30k"] / "dataset_flickr30k.json", {"images": flickr, "dataset": "flickr30k"})

    # VQAv2 and OK-VQA: questions + annotations per split, COCO image names
    for task, prefix in (("vqav2", "v2_"), ("okvqa", "")):
        for sp in ("train", "val"):
            idx = [i for i in range(len(PHOTOS)) if (i < N_SUPPORT) == (sp == "train")]
            qs, anns = [], []
            for i in idx:
                photo, _, q, answers = PHOTOS[i]
                _jpeg(images / photo, dirs[task] / f"{sp}2014" / f"COCO_{sp}2014_{i:012d}.jpg")
                qs.append({"image_id": i, "question": q, "question_id": 100 * i + 1})
                anns.append({"image_id": i, "question_id": 100 * i + 1, "multiple_choice_answer": answers[0],
                             "answers": [{"answer": a, "answer_id": k + 1} for k, a in enumerate(answers)]})
            _write(dirs[task] / f"{prefix}OpenEnded_mscoco_{sp}2014_questions.json", {"questions": qs})
            _write(dirs[task] / f"{prefix}mscoco_{sp}2014_annotations.json", {"annotations": anns})

    # TextVQA and VizWiz
    for sp in ("train", "val"):
        idx = [i for i in range(len(PHOTOS)) if (i < N_SUPPORT) == (sp == "train")]
        rows, viz = [], []
        for i in idx:
            photo, _, q, answers = PHOTOS[i]
            _jpeg(images / photo, dirs["textvqa"] / "train_images" / f"img{i:04d}.jpg")
            rows.append({"question": q, "image_id": f"img{i:04d}", "question_id": i, "answers": answers})
            name = f"VizWiz_{sp}_{i:08d}.jpg"
            _jpeg(images / photo, dirs["vizwiz"] / sp / name)
            viz.append({"image": name, "question": q, "answerable": 1, "answer_type": "other",
                        "answers": [{"answer": a, "answer_confidence": "yes"} for a in answers]})
        _write(dirs["textvqa"] / f"TextVQA_0.5.1_{sp}.json", {"dataset_name": "textvqa", "data": rows})
        _write(dirs["vizwiz"] / "Annotations" / f"{sp}.json", viz)

    # HatefulMemes
    for sp, idx in (("train", range(N_SUPPORT)), ("dev_seen", range(N_SUPPORT, len(PHOTOS)))):
        lines = []
        for i in idx:
            _jpeg(images / PHOTOS[i][0], dirs["hatefulmemes"] / "img" / f"{10000 + i}.png")
            lines.append(json.dumps({"id": 10000 + i, "img": f"img/{10000 + i}.png", "label": i % 2, "text": MEMES[i]}))
        (dirs["hatefulmemes"] / f"{sp}.jsonl").write_text("\n".join(lines) + "\n")

    # ImageNet-style class folders
    names = []
    for folder, name, train, val in CLASSES:
        names.append(f"{folder} {name}")
        for sp, photos in (("train", train), ("val", val)):
            for k, photo in enumerate(photos):
                _jpeg(images / photo, dirs["imagenet"] / sp / folder / f"{folder}_{k}.JPEG")
    (dirs["imagenet"] / "classnames.txt").write_text("\n".join(names) + "\n")
    return dirs


if __name__ == "__main__":
    from tests.conftest import SHARED_DATA

    for t, d in build(SHARED_DATA / "images", Path(sys.argv[1])).items():
        print(t, d)
