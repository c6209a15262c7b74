"""Run this test session (or benchmark) in a private network namespace whose only interface is loopback.

Ray's GCS server and raylets listen on every interface whatever ``--node-ip-address`` says (Ray 2.60
has no bind-address setting), so a test cluster started with ``127.0.0.1`` would still be reachable
from the machine's network. In a new network namespace (``unshare --net``, unprivileged through a
user namespace) the only interface is ``lo``: every server the tests start, Ray's included, is
reachable from this machine's loopback only, by construction.

``enter()`` re-executes the current command (``sys.orig_argv``) under ``unshare``; the new process
brings ``lo`` up and carries on. Where user namespaces are refused, the session carries on in the
machine's network and :func:`state` says why, so the Ray cluster fixture can refuse to start.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import socket
import struct
import subprocess
import sys

ENV = "V2M_PRIVATE_NETWORK"     # "entering" -> "yes" inside; "no: <reason>" where unshare failed
_SIOCGIFFLAGS, _SIOCSIFFLAGS, _IFF_UP = 0x8913, 0x8914, 0x1
UNSHARE = ["unshare", "--net", "--map-root-user"]


def _bring_loopback_up() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        request = struct.pack("16sH22x", b"lo", 0)
        flags = struct.unpack("16sH22x", fcntl.ioctl(sock, _SIOCGIFFLAGS, request))[1]
        fcntl.ioctl(sock, _SIOCSIFFLAGS, struct.pack("16sH22x", b"lo", flags | _IFF_UP))


def _unshare_refusal() -> str | None:
    """Why ``unshare`` cannot make a network namespace here, or None when it can."""
    if shutil.which("unshare") is None:
        return "no unshare program (util-linux)"
    try:
        probe = subprocess.run([*UNSHARE, "true"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as error:
        return f"unshare failed: {error}"
    return None if probe.returncode == 0 else f"unshare refused: {probe.stderr.strip()[-300:]}"


def enter(before_exec=None) -> None:
    """Re-execute this process inside a private network namespace, once; inside it, bring ``lo`` up.

    ``before_exec`` runs just before the re-execution (pytest: give the real stdout/stderr back from
    its capture, or the new process would write into the old one's capture files).
    """
    marker = os.environ.get(ENV, "")
    if marker == "entering":
        _bring_loopback_up()
        os.environ[ENV] = "yes"
        return
    if marker:                  # already inside (or already refused): subprocesses inherit the namespace
        return
    refusal = _unshare_refusal()
    if refusal:
        os.environ[ENV] = f"no: {refusal}"
        return
    if before_exec is not None:
        before_exec()
    os.environ[ENV] = "entering"
    sys.stdout.flush()
    sys.stderr.flush()
    os.execvp(UNSHARE[0], [*UNSHARE, sys.executable, *sys.orig_argv[1:]])


def state() -> str:
    """``"yes"`` inside a private network namespace, else ``"no: <reason>"``."""
    return os.environ.get(ENV, "no: private_network.enter() was not called")


def interfaces() -> list[str]:
    """The network interfaces this process can see."""
    return [name for _, name in socket.if_nameindex()]
