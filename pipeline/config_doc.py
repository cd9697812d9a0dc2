"""docs/CONFIG.md, generated from the presets' comments (pipeline/presets/*.yaml, one source of truth).

    python -m pipeline.config_doc > docs/CONFIG.md
"""
from __future__ import annotations

import re
import sys
from dataclasses import dataclass, field

from pipeline.config import DEFAULT_PRESET, allowed_values, config_to_dict, load_config, preset_names, preset_path, preset_summary

INTRO = """# Configuration

A build starts from a **preset**, a versioned recipe in `pipeline/presets/`, and takes the keys of
`--config FILE` over it one by one:

    build-m3w build --input ... --output ... [--preset m3w|obelics|mmc4] [--config FILE]
    build-m3w presets        # lists them

A file may also name its preset itself (`preset: obelics`). Keys neither the file nor the preset
sets keep the m3w defaults; `null` turns a check off. The resolved config is saved as `config.yaml`
beside the outputs, headed by its preset and the keys the file changed, and `build-m3w explain`
shows for each threshold whether it came from the preset or the file.

Every value is checked when the config is loaded, against the "allowed" column: a wrong type, a
number out of range, NaN or infinity, a value outside its set, a missing file, a network that does
not parse, a `min` key above its `max`, or an unknown key (with the closest valid one) is a
one-line error that names the key, before anything runs.

The m3w defaults live in [`pipeline/presets/m3w.yaml`](../pipeline/presets/m3w.yaml) and the
dataclasses of `pipeline/config.py` (a test keeps the two equal). This page is generated from the
presets' comments by `python -m pipeline.config_doc > docs/CONFIG.md` (a test keeps it current).
"""

_KEY = re.compile(r"^  ([a-z_0-9]+):\s*(.*?)\s*(?:#\s*(.*))?$")
_SECTION = re.compile(r"^([a-z_]+):\s*(?:#\s*(.*))?$")
_GROUP = re.compile(r"^  #\s*(.*)$")
_SHORT_GROUP = 60


@dataclass
class Section:
    name: str
    comment: str
    # (key, value as written, its comment, the group comment above it); key "" = the group line itself
    rows: list[tuple[str, str, str, str]] = field(default_factory=list)


def parse_preset(path: str) -> list[Section]:
    """The sections of a preset file with each key's value as written, its comment and the group
    comment (``  # ...`` on its own line) it stands under."""
    sections: list[Section] = []
    group = ""
    for line in open(path, encoding="utf-8"):
        line = line.rstrip("\n")
        if m := _SECTION.match(line):
            sections.append(Section(m.group(1), m.group(2) or ""))
            group = ""
        elif sections and (m := _GROUP.match(line)):
            rows = sections[-1].rows
            if rows and not rows[-1][0] and not m.group(1)[:1].isupper():  # the comment goes on
                group = f"{rows[-1][3]} {m.group(1)}"
                rows[-1] = ("", "", "", group)
            else:
                group = m.group(1)
                rows.append(("", "", "", group))
        elif sections and (m := _KEY.match(line)):
            sections[-1].rows.append((m.group(1), m.group(2), m.group(3) or "", group))
    return sections


def _cell(text: str) -> str:
    return text.replace("|", "/")


def _yaml_value(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return "[" + ", ".join(str(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {v}" for k, v in value.items()) + "}"
    return str(value)


def config_markdown() -> str:
    out = [INTRO, "## Presets\n", "| preset | recipe | file |\n|---|---|---|"]
    for name in preset_names():
        default = " (default)" if name == DEFAULT_PRESET else ""
        out.append(f"| `{name}`{default} | {_cell(preset_summary(name))} | [`presets/{name}.yaml`](../pipeline/presets/{name}.yaml) |")

    out.append(f"\n## Keys, with the `{DEFAULT_PRESET}` defaults\n")
    for sec in parse_preset(preset_path(DEFAULT_PRESET)):
        out.append(f"\n### `{sec.name}`\n")
        if sec.comment:
            out.append(f"{sec.comment[0].upper()}{sec.comment[1:]}.\n")
        out.append("| key | default | allowed | meaning and source |\n|---|---|---|---|")
        for key, value, comment, group in sec.rows:
            short = len(group) <= _SHORT_GROUP  # a label such as "Gopher quality (datatrove)"
            if key:  # a short group label goes in front of each of its keys' notes
                note = f"{group}: {comment}" if short and group and comment else (comment or (group if short else ""))
                out.append(f"| `{key}` | `{value}` | {allowed_values(sec.name, key)} | {_cell(note)} |")
            elif not short:
                out.append(f"| | | | *{_cell(group)}* |")

    base = config_to_dict(load_config(preset=DEFAULT_PRESET))
    for name in preset_names():
        if name == DEFAULT_PRESET:
            continue
        out.append(f"\n## Preset `{name}`\n")
        out.append(f"{_cell(preset_summary(name))} Keys it does not set keep the `{DEFAULT_PRESET}` defaults above.\n")
        for sec in parse_preset(preset_path(name)):
            out.append(f"\n### `{name}`: `{sec.name}`\n")
            out.append(f"| key | {name} | {DEFAULT_PRESET} | source |\n|---|---|---|---|")
            for key, value, comment, group in sec.rows:
                if key:
                    default = _yaml_value(base[sec.name][key])
                    out.append(f"| `{key}` | `{value}` | `{default}` | {_cell(comment)} |")
                else:
                    out.append(f"| | | | *{_cell(group)}* |")
    return "\n".join(out).replace("\n\n\n", "\n\n") + "\n"


if __name__ == "__main__":
    sys.stdout.write(config_markdown())
