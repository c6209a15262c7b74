"""A Ray cluster on loopback for the tests and benchmarks: a head and worker nodes, each a `ray start`.

Every `ray start` runs in its own process group, and stopping a node ends exactly that group, so
a test can kill one node mid-run and teardown never touches another Ray on the machine (which
`ray stop` would).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

RAY = str(Path(sys.executable).parent / "ray")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalCluster:
    """Nodes named ``head``, ``worker-1``, ``worker-2``...; ``root`` holds Ray's session files (keep it short:
    Ray's unix socket paths must fit 107 characters)."""

    def __init__(self, root: Path, object_store_mb: int = 200):
        self.root, self.port, self.groups = Path(root), free_port(), {}
        self.object_store = str(object_store_mb * 2 ** 20)
        # No token authentication on this loopback cluster: Ray 2.60 switches it on for some nodes once
        # any local ray.init() has left ~/.ray/auth_token, and nodes that disagree cannot join.
        self.env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled"}
        self._driver_auth = os.environ.get("RAY_AUTH_MODE")
        os.environ["RAY_AUTH_MODE"] = "disabled"     # this process is the cluster's driver

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _start(self, name: str, args: list[str], cpus: int) -> None:
        process = subprocess.Popen([RAY, "start", *args, "--num-cpus", str(cpus), "--disable-usage-stats",
                                    "--object-store-memory", self.object_store], env=self.env,
                                   start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.groups[name] = process.pid
        output, _ = process.communicate(timeout=180)
        if process.returncode:
            raise RuntimeError(f"ray start ({name}) failed:\n{output[-3000:]}")

    def start_head(self, cpus: int = 1) -> None:
        self._start("head", ["--head", "--node-ip-address", "127.0.0.1", "--port", str(self.port),
                             "--include-dashboard", "false", "--temp-dir", str(self.root)], cpus)

    def start_worker(self, cpus: int = 1) -> str:
        """Add a worker node; its name (``worker-N``)."""
        name = f"worker-{sum(n.startswith('worker') for n in self.groups) + 1}"
        while name in self.groups:
            name += "b"
        self._start(name, ["--address", self.address, "--node-ip-address", "127.0.0.1"], cpus)
        self.wait_nodes(len(self.groups))
        return name

    def alive_nodes(self) -> int:
        import ray

        return sum(node["Alive"] for node in ray.nodes())

    def wait_nodes(self, count: int, timeout: float = 60.0) -> None:
        """Wait until the driver (if connected) sees ``count`` live nodes."""
        import ray

        if not ray.is_initialized():
            return
        deadline = time.monotonic() + timeout
        while self.alive_nodes() != count:
            if time.monotonic() > deadline:
                raise RuntimeError(f"cluster has {self.alive_nodes()} live nodes, expected {count}")
            time.sleep(0.5)

    def kill(self, name: str) -> None:
        """End node ``name``'s processes (TERM, then KILL)."""
        group = self.groups.pop(name, None)
        if group is None:
            return
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(group, sig)
            except ProcessLookupError:
                return
            time.sleep(1.0)

    def stop(self) -> None:
        for name in [n for n in self.groups if n != "head"] + ["head"]:
            self.kill(name)
        if self._driver_auth is None:
            os.environ.pop("RAY_AUTH_MODE", None)
        else:
            os.environ["RAY_AUTH_MODE"] = self._driver_auth
