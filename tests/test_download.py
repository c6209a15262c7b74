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
from pipeline.acquire.download import (STATUS_SCHEMA, ShardDownloader, classify, download_shard, resolved_roots,
                                       source_url)
from pipeline.acquire.manifest import ManifestEntry, ManifestError, read_manifest, write_manifest
from pipeline.acquire.proxies import ProxyListError, ProxyPool, read_proxy_list, redact
from pipeline.config import DownloadParams, load_params
from pipeline.errors import ParamsError
from pipeline.files import file_sha256
from pipeline.status import read_status, write_status

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
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "x.mp4").write_bytes(b"x")
    roots = resolved_roots(["data"])
    assert source_url("file:data/x.mp4", roots) == (tmp_path / "data" / "x.mp4").as_uri()
    assert source_url("https://example.org/v", roots) == "https://example.org/v"


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


# --- Manifests from someone else: local paths confined to download.file_roots -----------------------


@pytest.fixture
def project(tmp_path, monkeypatch, videos) -> Path:
    """A project folder as the working directory: data/sample (the default root) holds a real video;
    ``outside/`` holds a real video and a secret beside it, which no row may copy."""
    folder, names = videos
    monkeypatch.chdir(tmp_path)
    sample = tmp_path / "data" / "sample"
    sample.mkdir(parents=True)
    shutil.copy(folder / names[0], sample / "inside.mp4")
    outside = tmp_path / "outside"
    outside.mkdir()
    shutil.copy(folder / names[1], outside / "secret.mp4")
    (outside / "key.pem").write_text("-----BEGIN PRIVATE KEY-----\n")
    return tmp_path


def project_params(tmp_path: Path, **overrides) -> DownloadParams:
    return fast_params(tmp_path, **{"margin_seconds": 60.0, **overrides})


def copied_files(tmp_path: Path) -> list[str]:
    """Every file the download left in its scratch cache and output folder, status tables aside."""
    places = [tmp_path / "scratch", tmp_path / "out"]
    return sorted(str(p.relative_to(tmp_path)) for place in places if place.exists()
                  for p in place.rglob("*") if p.is_file() and p.name != "status.parquet")


def test_file_urls_outside_the_roots_are_refused_and_never_copied(project):
    sample = project / "data" / "sample"
    (sample / "evil.mp4").symlink_to(project / "outside" / "secret.mp4")      # a link out of the root
    (sample / "away").symlink_to(project / "outside", target_is_directory=True)
    (sample / "alias.mp4").symlink_to(sample / "inside.mp4")                 # a link within it
    secret = project / "outside" / "secret.mp4"
    hostile = {
        "abcdefghijk": "file:///etc/passwd",
        "passwdnoslh": "file:/etc/passwd",
        "passwdlocal": "file://localhost/etc/passwd",
        "passwdquote": "file:///%65tc/passwd",
        "absolutevid": secret.as_uri(),
        "dotdotvideo": "file:data/sample/../../outside/secret.mp4",
        "symlinkfile": "file:data/sample/evil.mp4",
        "symlinkdir0": "file:data/sample/away/key.pem",
        "otherhost00": "file://fileserver/share/secret.mp4",
        "missingout0": "file:///nonexistent/elsewhere.mp4",
    }
    manifest = write_manifest(project / "s0001.csv",
                              [ManifestEntry(i, u) for i, u in hostile.items()]
                              + [ManifestEntry("insideroot0", "file:data/sample/inside.mp4"),
                                 ManifestEntry("aliasinroot", "file:data/sample/alias.mp4")])
    rows = {row["video_id"]: row for row in download_shard(manifest, project / "out", project_params(project),
                                                            seconds=3.0, progress=False)}
    assert rows == {row["video_id"]: row for row in read_status(project / "out")}
    for video_id, url in hostile.items():
        row = rows[video_id]
        assert (row["status"], row["error_class"], row["attempts"]) == ("failed", "forbidden_path", 0), row
        assert repr(url) in row["error_message"]
    assert "outside download.file_roots" in rows["abcdefghijk"]["error_message"]
    assert str(secret) in rows["symlinkfile"]["error_message"]  # names where the link really leads
    assert rows["insideroot0"]["status"] == rows["aliasinroot"]["status"] == "ok"
    assert copied_files(project) == sorted(["out/aliasinroot.mp4", "out/insideroot0.mp4",
                                            "scratch/s0001/done/aliasinroot.json",
                                            "scratch/s0001/done/aliasinroot.mp4",
                                            "scratch/s0001/done/insideroot0.json",
                                            "scratch/s0001/done/insideroot0.mp4"])


def test_a_root_is_followed_through_its_own_symlink_and_can_be_emptied(project):
    """Roots are compared after following symlinks: data/sample may itself be a link."""
    real = project / "elsewhere"
    (project / "data" / "sample").rename(real)
    (project / "data" / "sample").symlink_to(real, target_is_directory=True)
    manifest = write_manifest(project / "s0001.csv", [ManifestEntry("insideroot0", "file:data/sample/inside.mp4")])
    assert download_shard(manifest, project / "out", project_params(project), seconds=3.0,
                          progress=False)[0]["status"] == "ok"
    row = download_shard(manifest, project / "out2", project_params(project, file_roots=(), scratch="s2"),
                         seconds=3.0, progress=False)[0]
    assert row["error_class"] == "forbidden_path" and "download.file_roots is empty" in row["error_message"]


def test_other_local_path_forms_follow_the_same_rule(project):
    """Bare and relative paths never pass a manifest; given to the downloader, they are confined too."""
    manifest = project / "m.csv"
    manifest.write_text("video_id,url\nabcdefghijk,/etc/passwd\n")
    with pytest.raises(ManifestError, match="line 2: url '/etc/passwd' must start with http:, https: or file:"):
        read_manifest(manifest)
    downloader = ShardDownloader(project_params(project), 3.0, ProxyPool(None, 0.0), project / "scratch",
                                 sleep=pytest.fail)
    for url, expected in [("/etc/passwd", "forbidden_path"), ("outside/secret.mp4", "forbidden_path"),
                          ("data/sample/../outside/x", "forbidden_path"), ("ftp://127.0.0.1/x.mp4", "unsupported"),
                          ("file:data/sample/none.mp4", "not_found"), ("file:data/sample", "not_media")]:
        row = downloader.fetch(ManifestEntry("abcdefghijk", url))
        assert (row["error_class"], row["attempts"]) == (expected, 0), (url, row)
    assert downloader.fetch(ManifestEntry("abcdefghijk", "data/sample/inside.mp4"))["status"] == "ok"
    assert copied_files(project) == ["scratch/done/abcdefghijk.json", "scratch/done/abcdefghijk.mp4"]


def test_a_web_page_cannot_lead_yt_dlp_to_a_local_file(project):
    """yt-dlp reads file:// links found on a page when file URLs are on; only file: rows turn them on."""
    served = project / "served"
    served.mkdir()
    playlist = project / "outside" / "list.m3u8"
    playlist.write_text(f"#EXTM3U\n#EXT-X-TARGETDURATION:6\n#EXTINF:6,\n"
                        f"{(project / 'outside' / 'secret.mp4').as_uri()}\n#EXT-X-ENDLIST\n")
    (served / "page.html").write_text(f'<html><body><video><source src="{playlist.as_uri()}" '
                                      'type="application/x-mpegURL"></video></body></html>')
    with VideoServer(served).running() as server:
        manifest = write_manifest(project / "s0001.csv", [ManifestEntry("hlspage0000", server.url("page.html"))])
        row = download_shard(manifest, project / "out", project_params(project), seconds=3.0, progress=False)[0]
    assert (row["error_class"], row["attempts"]) == ("forbidden_path", 1)
    assert copied_files(project) == []


@pytest.mark.parametrize("name", ["v.mp4;rm -rf victim;.mp4", "v$(rm -rf victim).mp4", "v`rm -rf victim`|true.mp4"])
def test_shell_metacharacters_in_urls_are_only_names(project, videos, name):
    """No shell sees a URL: yt-dlp and ffmpeg get it as one argument, over HTTP and as a file: URL.
    (Served names end in .mp4: without a known extension ffmpeg's range download cannot pick a format.)"""
    folder, names = videos
    victim = project / "victim"
    victim.mkdir()
    (victim / "keep.txt").write_text("still here")
    served = project / "served"
    served.mkdir()
    shutil.copy(folder / names[2], served / name)
    shutil.copy(folder / names[2], project / "data" / "sample" / name)
    with VideoServer(served).running() as server:
        manifest = write_manifest(project / "s0001.csv", [
            ManifestEntry("shellhttp00", server.url(name)),
            ManifestEntry("shellmissin", server.url(f"absent.mp4;rm -rf {victim}")),
            ManifestEntry("shellfile00", f"file:data/sample/{name}")])
        assert [e.url for e in read_manifest(manifest)][0].endswith(name)   # the CSV keeps the row whole
        rows = {r["video_id"]: r for r in download_shard(manifest, project / "out", project_params(project),
                                                          seconds=3.0, progress=False)}
        assert server.fetched(name) >= 1
    assert (victim / "keep.txt").read_text() == "still here"
    assert rows["shellhttp00"]["status"] == rows["shellfile00"]["status"] == "ok", rows
    assert (rows["shellmissin"]["error_class"], rows["shellmissin"]["attempts"]) == ("not_found", 1)
    assert file_sha256(project / "out" / rows["shellfile00"]["file"]) == file_sha256(folder / names[2])


# --- Permanent failures are tried once ---------------------------------------------------------------


def test_permanent_failures_are_tried_once_without_backoff_transient_ones_retry(project, videos):
    folder, names = videos
    served = project / "served"
    served.mkdir()
    shutil.copy(folder / names[0], served / "good.mp4")
    (served / "garbage.mp4").write_bytes(b"this is no video\n" * 64)
    (served / "plain.html").write_text("<html><body>no video here</body></html>")
    (project / "data" / "sample" / "notes.mp4").write_text("a text file with a media extension\n")
    sleeps: list[float] = []
    params = project_params(project, backoff_base=30.0, max_attempts=4)
    downloader = ShardDownloader(params, 3.0, ProxyPool(None, 0.0), project / "scratch", sleep=sleeps.append)
    with VideoServer(served).running() as server:
        permanent = [
            ("not_media", ManifestEntry("notmedialoc", "file:data/sample/notes.mp4")),
            ("not_media", ManifestEntry("notmediaweb", server.url("garbage.mp4"))),
            ("not_found", ManifestEntry("notfound000", server.url("absent.mp4"))),
            ("unsupported", ManifestEntry("unsupported", server.url("plain.html"))),
            ("checksum", ManifestEntry("checksum000", server.url("good.mp4"), "0" * 64)),
        ]
        for expected, entry in permanent:
            row = downloader.fetch(entry)
            assert (row["status"], row["error_class"], row["attempts"]) == ("failed", expected, 1), row
            assert "gave up" not in row["error_message"]
        assert server.fetched("absent.mp4") == 1 and server.fetched("garbage.mp4") >= 1
    assert sleeps == [], "a permanent failure waited for a retry"
    with status_proxy(429) as throttled:
        pool = ProxyPool([throttled], cooldown=0.0)
        transient = ShardDownloader(params, 3.0, pool, project / "scratch2", sleep=sleeps.append)
        row = transient.fetch(ManifestEntry("throttled00", "http://127.0.0.1:9/v.mp4"))
    assert (row["error_class"], row["attempts"]) == ("rate_limited", 4)
    assert "gave up after 4 attempts" in row["error_message"]
    assert len(sleeps) == 3 and all(15.0 <= s <= 30.0 * 4 for s in sleeps)  # backoff between the 4 tries


@pytest.mark.parametrize("message, expected", [
    ("ERROR: ffmpeg exited with code 183", "not_media"),
    ("ERROR: This format cannot be partially downloaded. Aborting", "unsupported"),
    ("file:// URLs are disabled by default in yt-dlp for security reasons. Use --enable-file-urls", "forbidden_path"),
    ("ERROR: ffmpeg exited with code 1", "download_error"),
])
def test_deterministic_yt_dlp_failures_get_permanent_classes(message, expected):
    from yt_dlp.utils import DownloadError

    assert classify(DownloadError(message))[0] == expected


def test_file_roots_are_a_validated_list(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("download:\n  file_roots: data/sample\n")
    with pytest.raises(ParamsError, match="download.file_roots must be a list"):
        load_params(path, ["download"])
    path.write_text("download:\n  file_roots: [data/sample, '']\n")
    with pytest.raises(ParamsError, match="download.file_roots: lists an empty folder name"):
        load_params(path, ["download"])
    path.write_text("download:\n  file_root: [data/sample]\n")
    with pytest.raises(ParamsError, match="unknown key 'download.file_root'.*did you mean 'download.file_roots'"):
        load_params(path, ["download"])
    from pipeline.embedded import SAMPLE_DIR

    assert DownloadParams().file_roots == (str(SAMPLE_DIR),)  # the embedded sample shard's files are allowed


# --- v2m manifest status ------------------------------------------------------------------------------


def status_row(video_id: str, error_class: str | None = None) -> dict:
    return {"video_id": video_id, "status": "ok" if error_class is None else "failed", "error_class": error_class,
            "error_message": None if error_class is None else "x", "attempts": 1, "proxy": None, "bytes": None,
            "sha256": None, "duration": None, "fetched_at": None, "ytdlp_version": None, "file": None}


def test_manifest_status_counts_constructed_status_tables(tmp_path, monkeypatch, capsys):
    from pipeline import cli

    monkeypatch.chdir(tmp_path)
    manifests, raw = tmp_path / "data" / "manifests", tmp_path / "data" / "raw"
    ids = [f"vid{i:08d}" for i in range(14)]
    write_manifest(manifests / "s0001.csv", [ManifestEntry(i, f"https://example.org/{i}") for i in ids[:10]])
    write_manifest(manifests / "s0002.csv", [ManifestEntry(i, f"https://example.org/{i}") for i in ids[10:]])
    classes = [None, None, None, None, "not_found", "not_found", "private", "checksum", "proxy"]  # ids[9]: no row
    write_status(raw / "s0001" / "status.parquet",
                 [status_row(i, c) for i, c in zip(ids, classes)] + [status_row("notlisted00", "removed")],
                 STATUS_SCHEMA)
    cli.main(["manifest", "status", "--json"])
    report = json.loads(capsys.readouterr().out)
    first, second = report["shards"]
    assert first == {"shard": "s0001", "ids": 10, "downloaded": 4, "failed": 5,
                     "failed_by_class": {"checksum": 1, "not_found": 2, "private": 1, "proxy": 1},
                     "permanent": 4, "transient": 1, "not_tried": 1,
                     "resolves": 0.5, "resolves_low": 0.4, "resolves_high": 0.6}
    assert second == {"shard": "s0002", "ids": 4, "downloaded": 0, "failed": 0, "failed_by_class": {},
                      "permanent": 0, "transient": 0, "not_tried": 4,
                      "resolves": None, "resolves_low": 0.0, "resolves_high": 1.0}
    assert report["total"] == {"shard": "total", "ids": 14, "downloaded": 4, "failed": 5,
                               "failed_by_class": first["failed_by_class"], "permanent": 4, "transient": 1,
                               "not_tried": 5, "resolves": 0.5, "resolves_low": 0.2857, "resolves_high": 0.7143}
    cli.main(["manifest", "status", "s0001"])
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and lines[1].split()[:7] == ["s0001", "10", "4", "5", "1", "50.0%", "40.0%-60.0%"]
    assert lines[1].endswith("checksum* 1, not_found* 2, private* 1, proxy 1")
    cli.main(["manifest", "status"])
    assert capsys.readouterr().out.splitlines()[-1].split()[:6] == ["total", "14", "4", "5", "5", "50.0%"]


def test_manifest_status_errors_are_one_line(tmp_path, monkeypatch, capsys):
    from pipeline import cli

    monkeypatch.chdir(tmp_path)
    write_manifest(tmp_path / "data" / "manifests" / "s0001.csv", [ManifestEntry("vid00000000", "https://e.org/v")])
    (tmp_path / "data" / "raw" / "s0001").mkdir(parents=True)
    (tmp_path / "data" / "raw" / "s0001" / "status.parquet").write_text("not parquet")
    for argv, expected in [(["s0009"], "data/manifests/s0009.csv: no such manifest"),
                           (["first"], "'first' is not a shard name"),
                           (["s0001"], "data/raw/s0001/status.parquet: not a download status table")]:
        with pytest.raises(SystemExit) as exit_:
            cli.main(["manifest", "status", *argv])
        stderr = capsys.readouterr().err
        assert exit_.value.code == 2 and len(stderr.strip().splitlines()) == 1, stderr
        assert stderr.startswith("v2m: error: ") and expected in stderr
