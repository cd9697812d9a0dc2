"""The one config file: defaults match the dataclasses, and user mistakes get a one-line error."""
from __future__ import annotations

import pytest

from pipeline.config import Config, ConfigError, config_to_dict, dump_config, load_config


def test_bundled_yaml_equals_dataclass_defaults():
    assert config_to_dict(load_config()) == config_to_dict(Config())


def test_partial_file_overrides_only_given_keys(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("version: 1\nimages:\n  min_side: 150\ntext_filters:\n  node_min_words: null\n")
    cfg = load_config(str(path))
    assert cfg.images.min_side == 150 and cfg.text_filters.node_min_words is None
    assert cfg.images.max_aspect_ratio == Config().images.max_aspect_ratio
    assert load_config_from_text(tmp_path, dump_config(cfg)) == cfg  # resolved config reloads as itself


def load_config_from_text(tmp_path, text):
    p = tmp_path / "resolved.yaml"
    p.write_text(text)
    return load_config(str(p))


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("images:\n  min_sde: 3\n", "unknown config key images.min_sde"),
        ("images:\n  min_side: big\n", "images.min_side: expected int"),
        ("version: 7\n", "config version 7"),
        ("images: [1\n", "not valid YAML at line"),
    ],
)
def test_mistakes_give_one_line_errors(tmp_path, text, fragment):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as e:
        load_config(str(path))
    assert fragment in str(e.value) and "\n" not in str(e.value)


def test_missing_file_says_what_to_do(tmp_path):
    with pytest.raises(ConfigError, match="pass an existing file to --config"):
        load_config(str(tmp_path / "nope.yaml"))


def test_every_key_of_the_defaults_file_says_what_it_is_and_docs_are_current():
    from pipeline.config_doc import config_markdown
    from tests.conftest import REPO

    doc = config_markdown()
    rows = [line for line in doc.splitlines() if line.startswith("| `")]
    assert rows and not [r for r in rows if r.rstrip().endswith("|  |")], "uncommented keys in pipeline/m3w.yaml"
    assert (REPO / "docs" / "CONFIG.md").read_text(encoding="utf-8") == doc, "run: python -m pipeline.config_doc > docs/CONFIG.md"
