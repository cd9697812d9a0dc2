"""docs/CONFIG.md's tables, generated from the comments of pipeline/m3w.yaml (one source of truth).

    python -m pipeline.config_doc > docs/CONFIG.md
"""
from __future__ import annotations

import re
import sys

from pipeline.config import DEFAULT_CONFIG_PATH, allowed_values

INTRO = """# Configuration

`build-m3w build --config FILE` reads one YAML file; keys left out keep the defaults below and
`null` turns a check off. Every value is checked when the file is loaded, against the "allowed"
column: a wrong type, a number out of range, NaN or infinity, a value outside its set, a missing
file, a network that does not parse, a `min` key above its `max`, or an unknown key (with the
closest valid one) is a one-line error that names the key, before anything runs. The
resolved config is saved as `config.yaml` beside the outputs. The defaults live in
[`pipeline/m3w.yaml`](../pipeline/m3w.yaml) and the dataclasses of `pipeline/config.py` (a test
keeps the two equal); this page is generated from the file's comments by
`python -m pipeline.config_doc > docs/CONFIG.md` (a test keeps it current).
"""

_KEY = re.compile(r"^  ([a-z_0-9]+):\s*(.*?)\s*(?:#\s*(.*))?$")
_SECTION = re.compile(r"^([a-z_]+):\s*(?:#\s*(.*))?$")
_GROUP = re.compile(r"^  #\s*(.*)$")


def config_markdown(path: str = DEFAULT_CONFIG_PATH) -> str:
    out = [INTRO]
    group = section = ""
    for line in open(path, encoding="utf-8"):
        line = line.rstrip("\n")
        if m := _SECTION.match(line):
            out.append(f"\n## `{m.group(1)}`\n")
            if m.group(2):
                out.append(f"{m.group(2)[0].upper()}{m.group(2)[1:]}.\n")
            out.append("| key | default | allowed | meaning and source |\n|---|---|---|---|")
            section = m.group(1)
            group = ""
        elif m := _GROUP.match(line):
            group = m.group(1)
        elif m := _KEY.match(line):
            key, value, comment = m.group(1), m.group(2), m.group(3) or ""
            note = f"{group}: {comment}" if group and comment else (comment or group)
            out.append(f"| `{key}` | `{value}` | {allowed_values(section, key)} | {note.replace('|', '/')} |")
    return "\n".join(out).replace("\n\n\n", "\n\n") + "\n"


if __name__ == "__main__":
    sys.stdout.write(config_markdown())
