"""Manifest shards: validation with line numbers, and add-shard's skipping and params update."""

from __future__ import annotations

import pytest

from pipeline import cli
from pipeline.acquire.manifest import (ManifestEntry, ManifestError, add_shard, read_manifest, watch_url,
                                       write_manifest)
from pipeline.config import load_params

PARAMS = """# top comment
data:                # shards
  shards: [s0000]
  exclude_file: excl.txt
"""


def ids(n: int, prefix: str = "v") -> list[str]:
    return [f"{prefix}{i:010d}" for i in range(n)]


@pytest.fixture
def project(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text(PARAMS)
    (tmp_path / "data" / "manifests").mkdir(parents=True)
    return tmp_path


def test_add_shard_writes_next_shard_skips_known_ids_and_updates_params(project):
    listing = project / "V2M-20k.txt"
    listing.write_text("# V2M ids\n" + "\n".join(ids(10)) + "\n\n")
    (project / "excl.txt").write_text(ids(10)[1] + "\n")
    manifests = project / "data" / "manifests"
    write_manifest(manifests / "s0000.csv", [ManifestEntry(ids(10)[0], "file:data/sample/x.mp4")])
    path, skipped = add_shard(listing, 3, manifest_dir=manifests, params_file="params.yaml",
                              exclude_file=project / "excl.txt")
    assert path.name == "s0001.csv" and skipped == 2
    assert [e.video_id for e in read_manifest(path)] == ids(10)[2:5]
    assert all(e.url == watch_url(e.video_id) for e in read_manifest(path))
    assert path.read_text().splitlines()[0] == "video_id"  # default urls are not written out
    text = (project / "params.yaml").read_text()
    assert "# top comment" in text and "# shards" in text
    assert load_params("params.yaml", ["data"])["data"].shards == ("s0000", "s0001")
    path2, skipped2 = add_shard(listing, 100, manifest_dir=manifests, params_file="params.yaml",
                                exclude_file=project / "excl.txt")
    assert path2.name == "s0002.csv" and skipped2 == 5
    assert [e.video_id for e in read_manifest(path2)] == ids(10)[5:]
    assert load_params("params.yaml", ["data"])["data"].shards == ("s0000", "s0001", "s0002")
    with pytest.raises(ManifestError, match="no new ids"):
        add_shard(listing, 1, manifest_dir=manifests, params_file="params.yaml", exclude_file=project / "excl.txt")


def test_add_shard_rejects_invalid_ids_with_line_numbers(project):
    listing = project / "ids.txt"
    listing.write_text(f"{ids(1)[0]}\nshort\n{ids(2)[1]}\nhas space in\n")
    with pytest.raises(ManifestError) as err:
        add_shard(listing, 5, manifest_dir=project / "data" / "manifests", params_file="params.yaml")
    assert "line 2: 'short'" in str(err.value) and "line 4: 'has space in'" in str(err.value)


@pytest.mark.parametrize("content, message", [
    ("id,url\nabcdefghijk,\n", "line 1: the header must start with 'video_id'"),
    ("video_id,colour\nabcdefghijk,red\n", "line 1: unknown column 'colour'"),
    ("video_id\nabcdefghijk\nabc\n", "line 3: 'abc' is not a video id"),
    ("video_id\nabcdefghijk\n\nabcdefghijk\n", "line 4: abcdefghijk repeats line 2"),
    ("video_id,url\nabcdefghijk,ftp://x/y\n", "line 2: url 'ftp://x/y' must start with"),
    ("video_id,url,sha256\nabcdefghijk,,xyz\n", "line 2: sha256 'xyz' is not 64 hex digits"),
    ("video_id\nabcdefghijk,extra\n", "line 2: 2 fields, the header has 1"),
])
def test_bad_manifests_are_rejected_with_the_line_number(tmp_path, content, message):
    path = tmp_path / "s0001.csv"
    path.write_text(content)
    with pytest.raises(ManifestError) as err:
        read_manifest(path)
    assert str(err.value).startswith(f"{path} ") and message in str(err.value)


def test_manifest_round_trip_keeps_urls_and_checksums(tmp_path):
    entries = [ManifestEntry("abcdefghijk", "file:data/sample/abcdefghijk.mp4", "a" * 64),
               ManifestEntry("bcdefghijkl", watch_url("bcdefghijkl"))]
    assert read_manifest(write_manifest(tmp_path / "s.csv", entries)) == entries


def test_manifest_command_prints_result_and_errors_in_one_line(project, capsys):
    listing = project / "ids.txt"
    listing.write_text("\n".join(ids(4)) + "\n")
    cli.main(["manifest", "add-shard", "--ids", str(listing), "--n", "2"])
    out = capsys.readouterr().out
    assert "s0001.csv (2 videos" in out and "data.shards" in out
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["manifest", "add-shard", "--ids", "nope.txt", "--n", "2"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip() == "v2m: error: nope.txt: no such id list"
