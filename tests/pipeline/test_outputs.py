"""The stale-file cleanup touches nothing outside --output, and a rerun converges to the new corpus."""
from __future__ import annotations

import io
import json
import os
import string

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from warcio.statusandheaders import StatusAndHeaders
from warcio.warcwriter import WARCWriter

from pipeline.cli import main as build_m3w
from pipeline.outputs import _list_remote, list_owned, remove_stale_files, stale_files
from pipeline.verify import verify
from tests.conftest import REPO

SAMPLE = str(REPO / "samples" / "demo.warc.gz")


def _touch(path, data: bytes = b"x") -> str:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)
    return str(path)


def _victims(root) -> dict[str, bytes]:
    """Files a careless cleanup would take: m3w's own names, in folders m3w writes."""
    paths = [
        "victimA/wds/mine.tar",
        "victimA/wds/shard-00000-of-00001.tar",
        "victimA/parquet/shard-00000-of-00001.parquet",
        "victimA/rejects/rejects-00000-of-00001.jsonl",
        "victimA/decontamination/matches-00000-of-00001.jsonl",
        "victimA/config.yaml.tmp-" + "0" * 32,
    ]
    for p in paths:
        _touch(os.path.join(root, p), p.encode())
    return {p: p.encode() for p in paths}


def _unchanged(root, victims: dict[str, bytes]) -> None:
    for rel, data in victims.items():
        path = os.path.join(root, rel)
        assert os.path.exists(path), f"{rel} was deleted"
        assert open(path, "rb").read() == data


def _one_page_warc(path, html: bytes) -> str:
    with open(path, "wb") as f:
        w = WARCWriter(f, gzip=True)
        headers = StatusAndHeaders("200 OK", [("Content-Type", "text/html; charset=utf-8")], protocol="HTTP/1.1")
        w.write_record(w.create_warc_record("http://example.com/", "response", payload=io.BytesIO(html), http_headers=headers))
    return str(path)


def test_glob_characters_in_output_touch_nothing_outside_it(tmp_path):
    victims = _victims(tmp_path)
    out = str(tmp_path / "vict*")
    assert build_m3w(["build", "--input", SAMPLE, "--output", out, "--direct_running_mode=in_memory"]) == 0
    _unchanged(tmp_path, victims)
    assert verify(out) == []  # the corpus went to the folder literally named "vict*"


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=st.text(alphabet=string.ascii_letters + "*?[]{}!-_.,^", min_size=1, max_size=12), phase=st.sampled_from(["before", "after"]))
def test_no_output_name_reaches_another_folder(tmp_path_factory, name, phase):
    if name in (".", "..") or name.startswith("victim"):
        return
    root = tmp_path_factory.mktemp("glob")
    victims = _victims(root)
    out = os.path.join(root, name)
    os.makedirs(os.path.join(out, "wds"), exist_ok=True)
    _touch(os.path.join(out, "manifest.json"), b'{"shards": []}')
    remove_stale_files(out, phase)
    assert all(e.path.startswith(out + os.sep) or os.path.dirname(e.path) == out for e in _list_remote(out))
    _unchanged(root, victims)


def test_only_own_file_names_are_deleted(tmp_path):
    out = tmp_path / "out"
    own = {
        "before": [
            "rejects/rejects-00000-of-00002.jsonl",
            "decontamination/matches-00001-of-00002.jsonl",
            "fetched/fetched-20261201000000-0123456789ab.warc.gz",
            "wds/shard-00000-of-00001.tar.tmp-" + "a" * 32,
        ],
        "after": ["wds/shard-00003-of-00004.tar", "parquet/shard-00003-of-00004.parquet", "x.tmp-" + "b" * 32],
    }
    users = ["wds/mine.tar", "rejects/notes.txt", "fetched/crawl.warc.gz", "parquet/shard-1.parquet", "wds/sub/shard-00000-of-00001.tar", "other/shard-00000-of-00001.tar"]
    for rel in sum(own.values(), []) + users:
        _touch(out / rel)
    entries = list_owned(str(out))
    got_before = set(stale_files(entries, "before"))
    assert got_before == {str(out / r) for r in own["before"]} | {str(out / own["after"][2])}
    got_after = set(stale_files(entries, "after", keep=set()))
    assert got_after == {str(out / r) for r in own["after"]} | {str(out / own["before"][3])}
    # A file the run reads is never deleted, whatever its name.
    reads = str(out / own["before"][2])  # an earlier run's fetched archive, given as --input
    assert reads not in stale_files(entries, "before", inputs={reads})


def test_symlinked_output_folder_is_refused_and_its_target_untouched(tmp_path, capsys):
    elsewhere = tmp_path / "elsewhere"
    _touch(elsewhere / "rejects-00000-of-00001.jsonl", b"keep me")
    out = tmp_path / "out"
    out.mkdir()
    os.symlink(elsewhere, out / "rejects")
    assert build_m3w(["build", "--input", SAMPLE, "--output", str(out), "--direct_running_mode=in_memory"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "symbolic link" in err[0]
    assert (elsewhere / "rejects-00000-of-00001.jsonl").read_bytes() == b"keep me"


def test_a_run_that_keeps_nothing_keeps_its_rejects_and_drops_old_shards(tmp_path):
    out = str(tmp_path / "out")
    assert build_m3w(["build", "--input", SAMPLE, "--output", out, "--direct_running_mode=in_memory"]) == 0
    assert os.listdir(os.path.join(out, "wds"))
    # A crawl whose only page fails the text filters: 0 documents, 1 reject.
    empty = _one_page_warc(tmp_path / "one.warc.gz", b"<html><body><p>Too short.</p></body></html>")
    assert build_m3w(["build", "--input", empty, "--output", out, "--direct_running_mode=in_memory"]) == 0
    assert verify(out) == []
    assert json.load(open(os.path.join(out, "manifest.json")))["shards"] == []
    assert not [n for n in os.listdir(os.path.join(out, "wds")) if n.startswith("shard-")]
    lines = [line for name in os.listdir(os.path.join(out, "rejects")) for line in open(os.path.join(out, "rejects", name))]
    assert any(json.loads(line)["url"] == "http://example.com/" for line in lines)


@pytest.mark.parametrize(
    "manifest",
    [
        b"\x00\xff not json",
        b"[]",
        b'{"shards": 3}',
        b'{"shards": [{"path": "../../etc/passwd", "format": "wds", "bytes": 1, "sha256": "0", "documents": 0, "images": 0}]}',
        b'{"shards": [{"path": "/etc/hostname", "format": "wds", "bytes": 1, "sha256": "0", "documents": 0, "images": 0}]}',
        b'{"shards": [{"path": "wds/../../x.tar", "format": "wds", "bytes": 1, "sha256": "0", "documents": 0, "images": 0}]}',
        b'{"shards": [{"path": "wds/a.tar"}], "totals": 5}',
        b'{"shards": ["wds/a.tar"]}',
    ],
    ids=["binary", "list", "shards-not-list", "dotdot", "absolute", "nested-dotdot", "missing-keys", "entry-not-object"],
)
def test_verify_reports_a_malformed_manifest_without_following_it(tmp_path, manifest, capsys):
    out = tmp_path / "out"
    _touch(out / "manifest.json", manifest)
    errors = verify(str(out))
    assert errors and all(isinstance(e, str) for e in errors)
    assert build_m3w(["verify", str(out)]) == 1
    assert "FAILED" in capsys.readouterr().out


def test_cleanup_ignores_manifest_entries_outside_the_shard_folders(tmp_path):
    out = tmp_path / "out"
    victim = _touch(tmp_path / "victim" / "shard-00000-of-00001.tar")
    _touch(out / "wds" / "shard-00000-of-00001.tar")
    entry = {"path": "../victim/shard-00000-of-00001.tar"}
    _touch(out / "manifest.json", json.dumps({"shards": [entry]}).encode())
    assert remove_stale_files(str(out), "after") == 1  # the unlisted shard inside --output
    assert os.path.exists(victim)
