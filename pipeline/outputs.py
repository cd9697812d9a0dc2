"""What a build owns under ``--output``, and how a rerun into the same folder converges.

A build writes a fixed set of folders with fixed file-name patterns. The stale-file cleanup
deletes only regular files that match one of those patterns, directly inside one of those folders
of the literal ``--output`` path: never a glob of the user's path, never a file of another name,
never through a symbolic link, never a file the run reads as input.

- Before a run: temporary files (``*.tmp-<hex>``) anywhere the build writes, and the side outputs
  it writes anew (rejects, decontamination matches, the fetcher's archives).
- After a run: shard files the new manifest does not list (an empty manifest lists none, so a run
  that keeps no document leaves no old shard behind), and temporary files.
"""
from __future__ import annotations

import os
import re
from collections.abc import Iterable
from dataclasses import dataclass

from pipeline.fetch import ARCHIVE_DIR, ARCHIVE_NAME
from pipeline.layout import FORMAT_DIRS, MANIFEST

REJECTS_DIR = "rejects"
DECONTAMINATION_DIR = "decontamination"
SHARD_DIRS = tuple(FORMAT_DIRS.values())
SIDE_OUTPUT_DIRS = (REJECTS_DIR, DECONTAMINATION_DIR)
OWNED_DIRS = ("",) + SHARD_DIRS + SIDE_OUTPUT_DIRS + (ARCHIVE_DIR,)

_TMP = re.compile(r"\.tmp-[0-9a-f]{32}$")  # shards.atomic_write's temporary names
_SHARD = re.compile(r"^shard-\d{5,}-of-\d{5,}\.(tar|parquet)$")
_SIDE_OUTPUT = re.compile(r"^[A-Za-z0-9_.-]+-\d{5,}-of-\d{5,}\.jsonl$")


class OutputError(Exception):
    """The output folder cannot be cleaned safely; the message says what to do."""


@dataclass(frozen=True)
class Entry:
    folder: str  # one of OWNED_DIRS
    name: str  # file name inside it
    path: str  # full path, as the filesystem spells it


def stale_files(entries: Iterable[Entry], phase: str, keep: set[str] = frozenset(), inputs: set[str] = frozenset()) -> list[str]:
    """The paths among ``entries`` that the cleanup of ``phase`` ("before" or "after") deletes.

    ``keep`` (after a run): the shard paths the new manifest lists. ``inputs``: paths the run
    reads, which are never deleted whatever their name.
    """
    assert phase in ("before", "after"), phase
    out = []
    for e in entries:
        if e.path in inputs or (not _is_remote(e.path) and os.path.abspath(e.path) in inputs):
            continue
        if _TMP.search(e.name):
            out.append(e.path)
        elif phase == "before" and e.folder in SIDE_OUTPUT_DIRS and _SIDE_OUTPUT.match(e.name):
            out.append(e.path)
        elif phase == "before" and e.folder == ARCHIVE_DIR and ARCHIVE_NAME.match(e.name):
            out.append(e.path)  # the run fetches anew; an archive given as --input is kept above
        elif phase == "after" and e.folder in SHARD_DIRS and _SHARD.match(e.name) and e.path not in keep:
            out.append(e.path)
    return sorted(out)


def _is_remote(output: str) -> bool:
    return "://" in output


def list_owned(output: str) -> list[Entry]:
    """The regular files directly inside the build's folders of the literal path ``output``."""
    if _is_remote(output):
        return _list_remote(output)
    entries = []
    root = os.path.realpath(output)
    for folder in OWNED_DIRS:
        path = os.path.join(output, folder) if folder else output
        if folder and os.path.islink(path):
            raise OutputError(
                f"{path!r} is a symbolic link; m3w writes and deletes only inside --output: remove the link or choose another --output"
            )
        if not os.path.isdir(path) or (folder and os.path.dirname(os.path.realpath(path)) != root):
            continue
        with os.scandir(path) as it:
            for d in it:
                if d.is_file(follow_symlinks=False):
                    entries.append(Entry(folder, d.name, os.path.join(path, d.name)))
    return entries


def _glob_escape(path: str) -> str:
    """Beam's match patterns have no quoting; a one-character class matches the character itself."""
    return re.sub(r"([*?\[\]{}])", r"[\1]", path)


def _list_remote(output: str) -> list[Entry]:
    import warnings

    from apache_beam.io.filesystems import FileSystems

    entries = []
    for folder in OWNED_DIRS:
        base = FileSystems.join(output, folder) if folder else output.rstrip("/")
        pattern = FileSystems.join(_glob_escape(base), "*")
        with warnings.catch_warnings():  # "[[]" compiles with a FutureWarning about nested sets
            warnings.simplefilter("ignore", FutureWarning)
            matches = FileSystems.match([pattern])[0].metadata_list
        for m in matches:
            parent, _, name = m.path.rpartition("/")
            if parent.rstrip("/") == base.rstrip("/"):  # exactly this folder, nothing the pattern reached beyond it
                entries.append(Entry(folder, name, m.path))
    return entries


def delete(paths: list[str]) -> None:
    if not paths:
        return
    if any(_is_remote(p) for p in paths):
        from apache_beam.io.filesystems import FileSystems

        FileSystems.delete(paths)
        return
    for p in paths:
        os.remove(p)


def manifest_paths(output: str) -> set[str]:
    """Full paths of the shards the manifest lists (only entries that name a shard file in a
    shard folder: a tampered manifest cannot make the cleanup keep or reach anything else)."""
    import json

    from apache_beam.io.filesystems import FileSystems

    with FileSystems.open(FileSystems.join(output, MANIFEST)) as f:
        shards = json.load(f).get("shards", [])
    keep = set()
    for e in shards:
        folder, _, name = str(e.get("path", "")).partition("/")
        if folder in SHARD_DIRS and _SHARD.match(name):
            keep.add(os.path.join(output, folder, name) if not _is_remote(output) else FileSystems.join(output, folder, name))
    return keep


def remove_stale_files(output: str, phase: str, inputs: Iterable[str] = ()) -> int:
    """Delete what an interrupted or earlier run left (see the module docstring); returns the count."""
    keep = manifest_paths(output) if phase == "after" else set()
    stale = stale_files(list_owned(output), phase, keep=keep, inputs=_normalised(inputs))
    delete(stale)
    return len(stale)


def _normalised(paths: Iterable[str]) -> set[str]:
    out = set()
    for p in paths:
        out.add(p)
        if not _is_remote(p):
            out.add(os.path.abspath(p))
    return out
