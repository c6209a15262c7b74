"""Downloads over loopback only: a video server, and proxies that work, refuse, hang, block or throttle."""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from pipeline import media
from pipeline.acquire.download import classify, download_shard, resolve_url
from pipeline.acquire.manifest import ManifestEntry, write_manifest
from pipeline.acquire.proxies import ProxyListError, ProxyPool, read_proxy_list, redact
from pipeline.config import DownloadParams
from pipeline.files import file_sha256
from pipeline.status import read_status

from netservers import VideoServer, black_hole, dead_port, forwarding_proxy, status_proxy

PASSWORD = "s3cr3t-pw"


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> tuple[Path, list[str]]:
    """Four 6-second synthetic videos to serve: (folder, file names)."""
    from pipeline.config import SampleParams
    from pipeline.synth import read_labels, render_sample_set

    folder = tmp_path_factory.mktemp("served") / "set"
    render_sample_set(folder, SampleParams(n_clips=4, seconds=6.0, seed=21), progress=False)
    return folder, [row["video_file"] for row in read_labels(folder)]


def fast_params(tmp_path: Path, **overrides) -> DownloadParams:
    values = dict(backoff_base=0.0, socket_timeout=1.0, concurrency=1, proxy_cooldown=60.0,
                  max_attempts=6, scratch=str(tmp_path / "scratch"), margin_seconds=1.0)
    values.update(overrides)
    return DownloadParams(**values)


def manifest_for(server: VideoServer, names: list[str], path: Path) -> Path:
    return write_manifest(path, [ManifestEntry(Path(n).stem, server.url(n)) for n in names])


def test_every_video_arrives_through_rotation(tmp_path, videos, caplog):
    folder, names = videos
    caplog.set_level(logging.DEBUG, logger="v2m")
    with VideoServer(folder).running() as server, forwarding_proxy("alice", PASSWORD) as live, \
            black_hole() as hole, status_proxy(403) as blocked, status_proxy(429) as throttled:
        proxies = tmp_path / "proxies.txt"
        proxies.write_text("\n".join(["# dead, hanging, 403, 429, then a working one",
                                      dead_port(), hole, blocked, throttled, live]) + "\n")
        manifest = manifest_for(server, names, tmp_path / "s0001.csv")
        rows = download_shard(manifest, tmp_path / "out", fast_params(tmp_path), seconds=3.0,
                              proxies=proxies, progress=False)
        assert all(server.proxied), "a request bypassed the proxies"
    by_id = {row["video_id"]: row for row in read_status(tmp_path / "out")}
    assert set(by_id) == {Path(n).stem for n in names}
    live_label = redact(live)
    for row in by_id.values():
        assert row["status"] == "ok" and row["error_class"] is None
        assert row["proxy"] == live_label == f"http://***:***@127.0.0.1:{live.rsplit(':', 1)[1]}"
        assert (tmp_path / "out" / row["file"]).is_file()
        assert row["bytes"] == (tmp_path / "out" / row["file"]).stat().st_size
        assert len(row["sha256"]) == 64 and row["ytdlp_version"]
        assert 3.0 <= row["duration"] <= 6.0
    # The first video met every bad proxy in turn; afterwards they rest and the live one serves.
    attempts = sorted(row["attempts"] for row in by_id.values())
    assert attempts == [1, 1, 1, 5]
    assert {row["attempts"] for row in rows} == {1, 5}
    log_text = caplog.text
    for expected in ("proxy", "forbidden", "rate_limited"):
        assert expected in log_text
    everything = log_text + (tmp_path / "out" / "status.parquet").read_bytes().decode("latin-1")
    assert PASSWORD not in everything and "alice" not in everything


def test_404_is_a_permanent_failure_row(tmp_path, videos):
    folder, names = videos
    with VideoServer(folder).running() as server:
        manifest = write_manifest(tmp_path / "s0001.csv", [
            ManifestEntry("missing0001", server.url("missing0001.mp4")),
            ManifestEntry(Path(names[0]).stem, server.url(names[0])),
        ])
        download_shard(manifest, tmp_path / "out", fast_params(tmp_path), seconds=3.0, progress=False)
        assert server.fetched("missing0001.mp4") == 1  # no retry
    rows = {row["video_id"]: row for row in read_status(tmp_path / "out")}
    assert rows["missing0001"]["status"] == "failed"
    assert rows["missing0001"]["error_class"] == "not_found"
    assert rows["missing0001"]["attempts"] == 1
    assert "404" in rows["missing0001"]["error_message"]
    assert rows[Path(names[0]).stem]["status"] == "ok"
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted([names[0], "status.parquet"])


def test_attempts_are_bounded_when_every_proxy_fails(tmp_path, videos):
    folder, names = videos
    with VideoServer(folder).running() as server, status_proxy(403) as blocked:
        proxies = tmp_path / "p.txt"
        proxies.write_text(f"{dead_port()}\n{blocked}\n")
        manifest = manifest_for(server, names[:1], tmp_path / "s0001.csv")
        rows = download_shard(manifest, tmp_path / "out", fast_params(tmp_path, max_attempts=3, proxy_cooldown=0.0),
                              seconds=3.0, proxies=proxies, progress=False)
    assert rows[0]["status"] == "failed" and rows[0]["attempts"] == 3
    assert rows[0]["error_class"] in ("proxy", "forbidden")
    assert "gave up after 3 attempts" in rows[0]["error_message"]


def test_checksum_mismatch_is_a_failure_row(tmp_path, videos):
    folder, names = videos
    with VideoServer(folder).running() as server:
        manifest = write_manifest(tmp_path / "s0001.csv",
                                  [ManifestEntry(Path(names[0]).stem, server.url(names[0]), "0" * 64)])
        rows = download_shard(manifest, tmp_path / "out", fast_params(tmp_path, margin_seconds=60.0),
                              seconds=10.0, progress=False)
    assert rows[0]["error_class"] == "checksum" and rows[0]["attempts"] == 1


def test_file_urls_resolve_against_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert resolve_url("file:data/x.mp4") == (tmp_path / "data" / "x.mp4").as_uri()
    assert resolve_url("https://example.org/v") == "https://example.org/v"


def test_killed_run_resumes_without_refetching(tmp_path, videos):
    folder, names = videos
    params_file = tmp_path / "params.yaml"
    params_file.write_text(yaml.safe_dump({"download": {
        "scratch": str(tmp_path / "scratch"), "concurrency": 1, "backoff_base": 0.0, "margin_seconds": 1.0}}))
    done = tmp_path / "scratch" / "s0001" / "done"
    with VideoServer(folder, delay=0.8).running() as server:
        manifest = manifest_for(server, names, tmp_path / "s0001.csv")
        command = [sys.executable, "-m", "pipeline.cli", "download", "--manifest", str(manifest),
                   "--out", str(tmp_path / "out"), "--seconds", "3", "--params", str(params_file), "--quiet"]
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and len(list(done.glob("*.json"))) < 2:
            time.sleep(0.05)
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
        finished = sorted(p.stem for p in done.glob("*.json"))
        assert 2 <= len(finished) < len(names), "the run was not killed mid-shard"
        assert not (tmp_path / "out").exists(), "a partial output folder appeared"
        before = {Path(n).stem: server.fetched(n) for n in names}
        subprocess.run(command, check=True, capture_output=True)
        after = {Path(n).stem: server.fetched(n) for n in names}
    for video_id in finished:
        assert after[video_id] == before[video_id], f"{video_id} was fetched again"
    assert all(after[Path(n).stem] > 0 for n in names)
    rows = read_status(tmp_path / "out")
    assert [row["status"] for row in rows] == ["ok"] * len(names)


def test_a_refreshed_entry_is_fetched_again_not_taken_from_the_cache(tmp_path, videos):
    """Same video id, new content and sha256 in the manifest (a refreshed shard): no stale file."""
    folder, names = videos
    served = tmp_path / "served"
    served.mkdir()
    name, video_id = names[0], Path(names[0]).stem
    with VideoServer(served).running() as server:
        def run(content: str, sha256: str | None = None, seconds: float = 3.0, scratch: str = "scratch") -> dict:
            shutil.copy(folder / content, served / name)
            manifest = write_manifest(tmp_path / "s0001.csv", [ManifestEntry(video_id, server.url(name), sha256)])
            params = fast_params(tmp_path, scratch=str(tmp_path / scratch))
            return download_shard(manifest, tmp_path / "out", params, seconds=seconds, progress=False)[0]

        old = run(names[0])["sha256"]
        new = run(names[1], scratch="elsewhere")["sha256"]   # what the new content downloads as
        assert old != new
        before = server.fetched(name)                        # yt-dlp may send several requests per video
        row = run(names[1], new)
        fetched = server.fetched(name)
        assert fetched > before, "the cached old content was taken for the refreshed entry"
        assert row["status"] == "ok" and row["sha256"] == new
        assert file_sha256(tmp_path / "out" / row["file"]) == new
        assert run(names[1], new)["sha256"] == new
        assert server.fetched(name) == fetched, "an unchanged entry was fetched again"
        run(names[1], new, seconds=4.0)
        assert server.fetched(name) > fetched, "a new clip length must fetch a new window"


def test_download_command_reports_a_bad_proxy_list_in_one_line(tmp_path):
    proxies = tmp_path / "p.txt"
    proxies.write_text(f"http://bob:{PASSWORD}@127.0.0.1:8080\nftp://127.0.0.1:21\n")
    manifest = write_manifest(tmp_path / "m.csv", [ManifestEntry("abcdefghijk", "https://example.invalid/v")])
    result = subprocess.run([sys.executable, "-m", "pipeline.cli", "download", "--manifest", str(manifest),
                             "--out", str(tmp_path / "o"), "--proxies", str(proxies)],
                            capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"v2m: error: {proxies} line 2: 'ftp://127.0.0.1:21' is not a proxy URL "
        "(scheme://[user:password@]host:port with scheme one of http, https, socks4, socks4a, socks5, socks5h)"]


def test_proxy_list_parsing_and_redaction(tmp_path):
    path = tmp_path / "p.txt"
    path.write_text(f"# comment\n\nhttp://u:{PASSWORD}@10.0.0.1:3128\nsocks5://10.0.0.2:1080  # trailing\n")
    urls = read_proxy_list(path)
    assert urls == [f"http://u:{PASSWORD}@10.0.0.1:3128", "socks5://10.0.0.2:1080"]
    assert redact(urls[0]) == "http://***:***@10.0.0.1:3128"
    assert redact(urls[1]) == urls[1]
    path.write_text(f"http://u:{PASSWORD}@host:notaport\n")
    with pytest.raises(ProxyListError) as err:
        read_proxy_list(path)
    assert "line 1" in str(err.value) and PASSWORD not in str(err.value)
    pool = ProxyPool(urls, cooldown=1.0)
    assert pool.scrub(f"could not reach {urls[0]}") == "could not reach http://***:***@10.0.0.1:3128"
    assert pool.scrub(f"auth failed for u with {PASSWORD}") == "auth failed for u with ***"


def test_pool_rotates_rests_failed_proxies_and_brings_them_back():
    now = [0.0]
    pool = ProxyPool(["http://a:1", "http://b:2", "http://c:3"], cooldown=10.0, clock=lambda: now[0])
    order = [pool.acquire()[0].url for _ in range(4)]
    assert order == ["http://a:1", "http://b:2", "http://c:3", "http://a:1"]
    a = pool.proxies[0]
    pool.failed(a)
    assert [pool.acquire()[0].url for _ in range(4)] == ["http://b:2", "http://c:3", "http://b:2", "http://c:3"]
    pool.failed(a)  # a second failure doubles the rest
    assert a.resting_until == pytest.approx(20.0)
    for proxy in pool.proxies[1:]:
        pool.failed(proxy)
    proxy, wait = pool.acquire()
    assert wait > 0 and proxy.resting_until == min(p.resting_until for p in pool.proxies)
    now[0] = 25.0
    assert pool.acquire() == (a, 0.0) or pool.acquire()[1] == 0.0
    pool.succeeded(a)
    assert a.failures == 0 and a.resting_until == 0.0
    assert ProxyPool(None, 1.0).acquire() == (None, 0.0)


@pytest.mark.parametrize("message, expected", [
    ("ERROR: [youtube] x: Sign in to confirm you're not a bot", "bot_check"),
    ("ERROR: [youtube] x: Private video. Sign in if you've been granted access", "private"),
    ("ERROR: [youtube] x: Video unavailable. This video has been removed by the uploader", "removed"),
    ("ERROR: Unsupported URL: https://example.org/", "unsupported"),
    ("ERROR: something else went wrong", "download_error"),
])
def test_error_classes_from_messages(message, expected):
    from yt_dlp.utils import DownloadError

    assert classify(DownloadError(message))[0] == expected


def test_downloaded_window_is_the_first_seconds(tmp_path, videos):
    folder, names = videos
    with VideoServer(folder).running() as server:
        manifest = manifest_for(server, names[:1], tmp_path / "s0001.csv")
        rows = download_shard(manifest, tmp_path / "out", fast_params(tmp_path, margin_seconds=0.5),
                              seconds=2.0, progress=False)
    info = media.probe(tmp_path / "out" / rows[0]["file"])
    assert 2.5 <= info.duration < 6.0  # the window (plus the keyframe it starts on), not the whole 6 s
    assert json.loads((tmp_path / "scratch" / "s0001" / "done" / f"{rows[0]['video_id']}.json").read_text())["row"]["status"] == "ok"
