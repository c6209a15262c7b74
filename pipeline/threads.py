"""CPU thread policy: one rule for every stage, `v2m generate`, training and the benchmarks.

Why torch work collapses when another program holds a core: torch's intra-op pool has one thread
per core, every parallel op ends at a barrier, and libgomp's idle threads spin at that barrier.
With one of two cores taken, each op waits for the thread that shares its core with the other
program (a whole scheduler time slice, milliseconds, for ops that take microseconds), and the
spinning thread burns the core the other program needs: measured 6-7x slower, not 2x.

The rule, applied by :func:`apply` (called from the one wrapper every stage and ``v2m`` command
goes through, pipeline/cli.py's ``user_errors``):

1. a passive OpenMP wait policy (``OMP_WAIT_POLICY=PASSIVE``): idle pool threads sleep instead of
   spinning. libgomp reads it once, when torch loads it, so :func:`prepare_environment` sets it
   when ``pipeline`` is imported (pipeline/__init__.py), before any module imports torch;
2. intra-op threads = the cores this process may use (``os.sched_getaffinity``) minus the cores
   other programs keep busy (their CPU share over a short sample, rounded), at least 1;
3. glibc's allocator keeps freed memory for reuse (:func:`keep_freed_memory`, also at import):
   by default every block over its mmap threshold (at most 32 MiB: a batch of logits, a flow
   batch, a Demucs spectrogram) is a fresh ``mmap`` whose pages the kernel faults in and zeroes
   on first touch, then unmaps on free, every step again. Measured on a 2-core machine: a
   training step 1.15 -> 0.90 s, system time 0.35 -> 0.00 s per step.

``V2M_THREADS=N`` fixes the count instead; ``V2M_THREADS=legacy`` keeps torch's own defaults and
no wait policy (the behaviour before this rule, for before/after benchmarks). An explicit
``OMP_WAIT_POLICY`` or ``OMP_NUM_THREADS`` in the environment is respected.

This module imports neither torch nor anything heavy: ``import pipeline`` must stay cheap.
"""

from __future__ import annotations

import dataclasses
import os
import sys

ENV = "V2M_THREADS"
LEGACY = "legacy"
# Seconds of /proc/stat sampling to see what else runs: long enough to see a busy program
# (scheduler ticks are 1-4 ms), short enough to add little to a stage's start-up.
SAMPLE_SECONDS = 0.15


@dataclasses.dataclass(frozen=True)
class ThreadPlan:
    """What :func:`apply` chose and why (the timing table records it)."""

    threads: int | None          # None: torch's default (legacy)
    allowed_cores: int
    busy_cores: float            # other programs' load, in cores
    source: str                  # "auto", "V2M_THREADS", "OMP_NUM_THREADS" or "legacy"


def mode() -> str:
    """``legacy``, ``fixed`` or ``auto``, from ``V2M_THREADS``.

    Raises:
        ValueError: a value that is neither a positive integer nor ``legacy``.
    """
    value = os.environ.get(ENV, "").strip().lower()
    if not value or value == "auto":
        return "auto"
    if value == LEGACY:
        return LEGACY
    if value.isdigit() and int(value) > 0:
        return "fixed"
    raise ValueError(f"{ENV}={value!r}: expected a positive thread count, 'auto' or '{LEGACY}'")


def prepare_environment() -> None:
    """Set the OpenMP wait policy before torch is imported (a no-op under ``legacy``).

    Idle libgomp threads then sleep at once instead of spinning for up to ~300k iterations
    (its default when no policy is set), which is what takes a contended core away.
    """
    try:
        if mode() == LEGACY:
            return
    except ValueError:
        return  # reported by apply(), where a stage can turn it into one clear line
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    keep_freed_memory()


# glibc mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4
# Free memory at the heap's top returned to the system only beyond this much (mallopt takes an int).
TRIM_THRESHOLD_BYTES = 1 << 30


def keep_freed_memory() -> bool:
    """Serve every allocation from the heap (no per-block ``mmap``) and keep up to
    :data:`TRIM_THRESHOLD_BYTES` of freed memory for the next one: the repeated large tensors of
    a training step or a batch loop then reuse warm pages instead of page-faulting fresh ones.
    The price is a resident size that stays near the process's peak. glibc only (a no-op
    elsewhere, and under ``legacy``); ``MALLOC_MMAP_MAX_`` or ``MALLOC_TRIM_THRESHOLD_`` in the
    environment (glibc's own knobs) are respected. True when applied.
    """
    if not sys.platform.startswith("linux") or mode() == LEGACY:
        return False
    if "MALLOC_MMAP_MAX_" in os.environ or "MALLOC_TRIM_THRESHOLD_" in os.environ:
        return False
    try:
        import ctypes
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(_M_MMAP_MAX, 0)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES))
    except (OSError, AttributeError):  # musl and other libcs: no mallopt, nothing to change
        return False


def allowed_cores() -> list[int]:
    """The CPU indices this process may run on."""
    if hasattr(os, "sched_getaffinity"):
        return sorted(os.sched_getaffinity(0))
    return list(range(os.cpu_count() or 1))


def busy_cores(cores: list[int], seconds: float = SAMPLE_SECONDS) -> float:
    """Cores' worth of CPU time other programs used over ``seconds`` on ``cores`` (0 .. len(cores)).

    This process sleeps while it samples, and the CPU time of its ancestors (the ``dvc repro`` or
    shell that started it, which waits for it and is often still finishing its own bookkeeping as
    the stage starts) is taken out: only programs that compete with this one count.
    """
    try:
        import psutil
    except ImportError:  # pragma: no cover - psutil comes with accelerate
        return 0.0
    family = _own_family(psutil)
    before = _cpu_seconds(family)
    shares = psutil.cpu_percent(interval=seconds, percpu=True)
    ours = max(0.0, _cpu_seconds(family) - before) / seconds
    return max(0.0, sum(shares[i] for i in cores if i < len(shares)) / 100.0 - ours)


def _own_family(psutil) -> list:
    """This process and its ancestors."""
    me = psutil.Process()
    try:
        return [me, *me.parents()]
    except psutil.Error:
        return [me]


def _cpu_seconds(processes: list) -> float:
    """User + system CPU seconds of ``processes`` (those gone or unreadable count 0)."""
    total = 0.0
    for process in processes:
        try:
            times = process.cpu_times()
            total += times.user + times.system
        except Exception:  # noqa: BLE001 - psutil.Error subclasses, a process that just ended
            continue
    return total


def plan(seconds: float = SAMPLE_SECONDS) -> ThreadPlan:
    """The thread count for this process now (see the module's rule)."""
    how = mode()
    cores = allowed_cores()
    if how == LEGACY:
        return ThreadPlan(None, len(cores), 0.0, LEGACY)
    if how == "fixed":
        return ThreadPlan(int(os.environ[ENV]), len(cores), 0.0, ENV)
    if _USER_OMP_THREADS.isdigit() and int(_USER_OMP_THREADS) > 0:
        return ThreadPlan(int(_USER_OMP_THREADS), len(cores), 0.0, "OMP_NUM_THREADS")
    busy = busy_cores(cores, seconds) if len(cores) > 1 else 0.0
    return ThreadPlan(max(1, len(cores) - int(busy + 0.5)), len(cores), busy, "auto")


_applied: ThreadPlan | None = None
# A count the user put in the environment before v2m started wins over the automatic one.
_USER_OMP_THREADS = os.environ.get("OMP_NUM_THREADS", "").strip()


def apply(seconds: float = SAMPLE_SECONDS) -> ThreadPlan:
    """Choose the intra-op thread count and set it for torch (and OpenCV) in this process.

    Torch need not be imported yet: ``OMP_NUM_THREADS``/``MKL_NUM_THREADS`` are set for it to read
    when it loads (and for child processes); if it is loaded, ``torch.set_num_threads`` is called.

    Raises:
        ValueError: a bad ``V2M_THREADS`` (see :func:`mode`).
    """
    global _applied
    chosen = plan(seconds)
    if chosen.threads is not None:
        threads = chosen.threads
        os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(threads)
        if "torch" in sys.modules:
            sys.modules["torch"].set_num_threads(threads)
        if "cv2" in sys.modules:
            sys.modules["cv2"].setNumThreads(threads)
    _applied = chosen
    return chosen


def applied() -> ThreadPlan | None:
    """The last plan :func:`apply` set in this process (None before any)."""
    return _applied


def free_workers() -> int:
    """Worker threads or processes for side work: the cores the applied policy found free, 1 before any
    stage applied it (so a library call outside a stage never fans out on a machine it did not look at)."""
    plan = applied()
    return plan.threads if plan is not None and plan.threads else 1


__all__ = ["ThreadPlan", "allowed_cores", "applied", "apply", "busy_cores", "free_workers", "keep_freed_memory", "mode", "plan", "prepare_environment"]
