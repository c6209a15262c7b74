"""Download throughput over loopback: videos per minute, direct and through N rotating proxies.

Serves synthetic videos from a 127.0.0.1 HTTP server and fetches them with the real download
code (yt-dlp + ffmpeg range download), through working forwarding proxies, some of them dead.

Usage: python benchmarks/download.py [--videos 12] [--seconds 10] [--proxies 4] [--concurrency 2]
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.acquire.download import download_shard  # noqa: E402
from pipeline.acquire.manifest import ManifestEntry, write_manifest  # noqa: E402
from pipeline.config import DownloadParams, SampleParams  # noqa: E402
from pipeline.synth import read_labels, render_sample_set  # noqa: E402
from tests.netservers import VideoServer, dead_port, forwarding_proxy  # noqa: E402


def run(scratch: Path, server: VideoServer, names: list[str], proxies: list[str], concurrency: int,
        label: str) -> float:
    manifest = write_manifest(scratch / f"{label}.csv", [ManifestEntry(Path(n).stem, server.url(n)) for n in names])
    proxy_file = None
    if proxies:
        proxy_file = scratch / f"{label}.txt"
        proxy_file.write_text("\n".join(proxies) + "\n")
    params = DownloadParams(concurrency=concurrency, backoff_base=0.0, socket_timeout=2.0,
                            scratch=str(scratch / f"cache-{label}"), margin_seconds=1.0)
    start = time.perf_counter()
    rows = download_shard(manifest, scratch / f"out-{label}", params, seconds=5.0, proxies=proxy_file, progress=False)
    elapsed = time.perf_counter() - start
    ok = sum(r["status"] == "ok" for r in rows)
    rate = 60.0 * ok / elapsed
    print(f"{label:<28} {ok:3d}/{len(names)} ok in {elapsed:6.2f} s  -> {rate:7.1f} videos/min")
    return rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", type=int, default=12)
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each served video")
    parser.add_argument("--proxies", type=int, default=4)
    parser.add_argument("--concurrency", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch_name:
        scratch = Path(scratch_name)
        render_sample_set(scratch / "served", SampleParams(n_clips=args.videos, seconds=args.seconds, seed=99),
                          progress=False)
        names = [row["video_file"] for row in read_labels(scratch / "served")]
        results = {}
        with VideoServer(scratch / "served").running() as server, contextlib.ExitStack() as stack:
            live = [stack.enter_context(forwarding_proxy("user", "pw")) for _ in range(args.proxies)]
            run(scratch, server, names[:1], [], 1, "warm-up (not counted)")
            results["direct"] = run(scratch, server, names, [], args.concurrency, "direct")
            results["1"] = run(scratch, server, names, live[:1], args.concurrency, "1 proxy")
            results["n"] = run(scratch, server, names, live, args.concurrency, f"{args.proxies} proxies")
            half_dead = [dead_port() for _ in range(args.proxies // 2)] + live[: args.proxies - args.proxies // 2]
            results["dead"] = run(scratch, server, names, half_dead, args.concurrency,
                                  f"{args.proxies} proxies, {args.proxies // 2} dead")
    print(f"download over loopback, {args.videos} videos of {args.seconds:g} s, concurrency {args.concurrency}: "
          f"direct {results['direct']:.1f}, 1 proxy {results['1']:.1f}, {args.proxies} proxies {results['n']:.1f}, "
          f"half dead {results['dead']:.1f} videos/min (ratio {args.proxies} proxies / direct "
          f"{results['n'] / results['direct']:.2f})")


if __name__ == "__main__":
    main()
