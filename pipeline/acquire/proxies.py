"""A rotating pool of proxies with per-proxy health, and redaction of their credentials.

The paper's downloads went through a pre-compiled list of public proxies, moving to the next
one when a proxy failed. Here each proxy keeps a failure count and rests for a cooldown that
doubles with every consecutive failure; the pool hands out the next healthy proxy in turn.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable
from urllib.parse import urlsplit

from pipeline.errors import UserError
from pipeline.files import content_lines

SCHEMES = ("http", "https", "socks4", "socks4a", "socks5", "socks5h")
DIRECT = None  # the "proxy" of a direct connection


class ProxyListError(UserError, ValueError):
    """A proxy list that cannot be used; the message names the file and line (never a password)."""


def redact(url: str) -> str:
    """The URL with its user name and password replaced: safe for logs and status tables.

    Works on malformed URLs too (a bad port must not leak the password into the error about it).
    """
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    host = parts.netloc.rsplit("@", 1)[1]
    return parts._replace(netloc=f"***:***@{host}").geturl()


@dataclass
class Proxy:
    url: str
    failures: int = 0
    resting_until: float = 0.0
    successes: int = 0

    @property
    def label(self) -> str:
        return redact(self.url)


def read_proxy_list(path: Path | str) -> list[str]:
    """Proxy URLs from a file: one per line, ``#`` comments and blank lines skipped."""
    path = Path(path)
    if not path.is_file():
        raise ProxyListError(f"{path}: no such proxy list")
    urls = []
    for line_number, text in content_lines(path):
        parts = urlsplit(text)
        if parts.scheme not in SCHEMES or not parts.hostname:
            raise ProxyListError(f"{path} line {line_number}: {redact(text)!r} is not a proxy URL "
                                 f"(scheme://[user:password@]host:port with scheme one of {', '.join(SCHEMES)})")
        try:
            parts.port
        except ValueError:
            raise ProxyListError(f"{path} line {line_number}: {redact(text)!r} has a bad port") from None
        urls.append(text)
    if not urls:
        raise ProxyListError(f"{path}: lists no proxies")
    return urls


class ProxyPool:
    """Round-robin over healthy proxies; a failed proxy rests ``cooldown * 2**(failures-1)`` seconds.

    Thread-safe: several download workers share one pool. With no proxies, every call gives
    the direct connection.
    """

    def __init__(self, urls: list[str] | None, cooldown: float, clock: Callable[[], float] = time.monotonic):
        self.proxies = [Proxy(u) for u in (urls or [])]
        self.cooldown = cooldown
        self.clock = clock
        self._next = 0
        self._lock = threading.Lock()

    @property
    def direct(self) -> bool:
        return not self.proxies

    def acquire(self) -> tuple[Proxy | None, float]:
        """The next proxy to try and how long to wait for it (0 when one is healthy now)."""
        if self.direct:
            return DIRECT, 0.0
        with self._lock:
            now = self.clock()
            n = len(self.proxies)
            for offset in range(n):
                proxy = self.proxies[(self._next + offset) % n]
                if proxy.resting_until <= now:
                    self._next = (self._next + offset + 1) % n
                    return proxy, 0.0
            soonest = min(self.proxies, key=lambda p: p.resting_until)
            self._next = (self.proxies.index(soonest) + 1) % n
            return soonest, soonest.resting_until - now

    def failed(self, proxy: Proxy | None) -> None:
        if proxy is None:
            return
        with self._lock:
            proxy.failures += 1
            proxy.resting_until = self.clock() + self.cooldown * 2 ** (proxy.failures - 1)

    def succeeded(self, proxy: Proxy | None) -> None:
        if proxy is None:
            return
        with self._lock:
            proxy.failures = 0
            proxy.resting_until = 0.0
            proxy.successes += 1

    def scrub(self, text: str) -> str:
        """Remove proxy credentials from a message (yt-dlp errors can quote the proxy URL)."""
        return scrub(text, self.proxies)


def scrub(text: str, proxies: list[Proxy]) -> str:
    """``text`` with the URLs and passwords of ``proxies`` redacted."""
    for proxy in proxies:
        text = text.replace(proxy.url, proxy.label)
        password = urlsplit(proxy.url).password
        if password:
            text = text.replace(password, "***")
    return text


class SharedProxyPool:
    """One :class:`ProxyPool` for a whole Ray cluster, run as a named actor (``compute.engine: ray``).

    It reads the proxy list itself (the driver passes the file's path, never its URLs), so rotation
    and the cooldowns of failed proxies hold across every worker. A proxy that has not yet worked
    (new, or back from a rest) is leased to one worker at a time, so many workers never pile onto
    a proxy that is about to fail; one that works is shared in turn. Proxies are named by their
    index in calls; a URL leaves the actor only as the reply to :meth:`lease`.
    """

    def __init__(self, proxy_file: str, cooldown: float, lease_seconds: float = 600.0,
                 clock: Callable[[], float] = time.monotonic):
        self.pool = ProxyPool(read_proxy_list(proxy_file), cooldown, clock=clock)
        self.clock, self.lease_seconds = clock, lease_seconds
        self.trying: dict[int, float] = {}   # index -> when an untried proxy was leased (a dead worker's lapses)

    def lease(self) -> tuple[int, str, float]:
        """``(index, url, seconds to wait before using it)`` of the next proxy in turn; ``(-1, "", s)``
        when every healthy proxy is being tried by another worker: ask again after ``s``."""
        pool, now = self.pool, self.clock()
        self.trying = {i: t for i, t in self.trying.items() if now - t < self.lease_seconds}
        n = len(pool.proxies)
        healthy = False
        for offset in range(n):
            index = (pool._next + offset) % n
            proxy = pool.proxies[index]
            if proxy.resting_until > now:
                continue
            healthy = True
            if proxy.successes == 0 or proxy.failures:
                if index in self.trying:
                    continue
                self.trying[index] = now
            pool._next = (index + 1) % n
            return index, proxy.url, 0.0
        if healthy:
            return -1, "", 0.2
        proxy, wait = pool.acquire()          # all resting: the soonest back, after its rest
        index = pool.proxies.index(proxy)
        self.trying[index] = now
        return index, proxy.url, wait

    def failed(self, index: int) -> None:
        self.trying.pop(index, None)
        self.pool.failed(self.pool.proxies[index])

    def succeeded(self, index: int) -> None:
        self.trying.pop(index, None)
        self.pool.succeeded(self.pool.proxies[index])

    def stats(self) -> list[dict]:
        """Per proxy, redacted: label, successes, consecutive failures."""
        return [{"proxy": p.label, "successes": p.successes, "failures": p.failures} for p in self.pool.proxies]


@dataclass
class LeasedProxy(Proxy):
    index: int = -1


class LeasedProxyPool:
    """A download worker's view of a :class:`SharedProxyPool` actor: the interface of :class:`ProxyPool`."""

    direct = False

    def __init__(self, actor):
        import ray

        self.ray, self.actor = ray, actor
        self.leased: dict[int, LeasedProxy] = {}

    def acquire(self) -> tuple[LeasedProxy, float]:
        index, url, wait = self.ray.get(self.actor.lease.remote())
        while index < 0:             # every healthy proxy is on trial elsewhere
            time.sleep(wait)
            index, url, wait = self.ray.get(self.actor.lease.remote())
        proxy = self.leased.setdefault(index, LeasedProxy(url, index=index))
        return proxy, wait

    def failed(self, proxy: LeasedProxy | None) -> None:
        # Waited for, so the next lease anywhere in the cluster already sees this proxy resting.
        if proxy is not None:
            self.ray.get(self.actor.failed.remote(proxy.index))

    def succeeded(self, proxy: LeasedProxy | None) -> None:
        if proxy is not None:
            self.ray.get(self.actor.succeeded.remote(proxy.index))

    def scrub(self, text: str) -> str:
        return scrub(text, list(self.leased.values()))

