"""The Ray engine of the per-shard stages (``compute.engine: ray``): per-video work on a cluster.

The stage process stays the driver: it reads every input, writes every output (the same files,
Parquet tables and status rows as the local engine) and owns resumption. Workers get their
inputs as bytes through Ray's object store and send their results back the same way, so no data
folder has to be shared; each worker needs the project installed and the model folders at the
same absolute path as on the driver (the stages pass model folders as absolute paths).

Two shapes of work, one interface:
  - :meth:`RayEngine.tasks`: a plain function per video, a CPU task (download, clip, flow);
  - :meth:`RayEngine.actors`: a model loaded once per actor of a pool, called on batches of videos
    (Demucs, CLIP, EnCodec), on a GPU when ``compute.<pool>.gpus`` says so.
Each finished video goes to a :class:`Journal` on the driver's disk as soon as it comes back, so a
killed run resumes without redoing it. A task whose worker dies is retried up to
``compute.max_retries`` times (Ray's own retries); after that the video gets a :class:`Lost`
result that the stage turns into a failed status row naming the cause.

Ray is imported only once a :class:`RayEngine` is made (and by the code that runs on its
workers): ``engine: local`` users never import it.
"""

from __future__ import annotations

import hashlib
import json
import pickle
import shutil
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from tqdm import tqdm

from pipeline.config import ComputeParams, ModelActorParams
from pipeline.errors import UserError
from pipeline.files import atomic_path

LOCAL_NODE = "local"   # the status rows' ``node`` of videos done by the local engine


@dataclass
class Lost:
    """A video whose work never finished: its worker died on every try."""

    cause: str


def node_label() -> str:
    """This Ray worker's node: ``host/node-id prefix`` (two nodes on one machine share the host)."""
    import ray

    return f"{socket.gethostname()}/{ray.get_runtime_context().get_node_id()[:8]}"


def fingerprint(*parts: Any) -> str:
    """A short hash of the params and input identity a journal entry was made for."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


class Journal:
    """Finished videos of one stage and shard on the driver's disk: ``<folder>/<id>.pkl``, each
    ``{"request": fingerprint, "node": ..., "value": ...}`` written atomically. An entry counts only for
    the same request (params + input bytes), so a rerun with changed params or inputs redoes it.
    """

    def __init__(self, folder: Path | str):
        self.folder = Path(folder)

    def _path(self, key: str) -> Path:
        return self.folder / f"{key}.pkl"

    def get(self, key: str, request: str) -> tuple[str, Any] | None:
        """``(node, value)`` of a finished video made for ``request``, else None."""
        path = self._path(key)
        if not path.is_file():
            return None
        with open(path, "rb") as handle:
            entry = pickle.load(handle)
        return (entry["node"], entry["value"]) if entry["request"] == request else None

    def clear(self) -> None:
        """Drop the journal once the shard's outputs are written."""
        shutil.rmtree(self.folder, ignore_errors=True)

    def put(self, key: str, request: str, node: str, value: Any) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        with atomic_path(self._path(key)) as temp, open(temp, "wb") as handle:
            pickle.dump({"request": request, "node": node, "value": value}, handle, protocol=5)


@dataclass
class Work:
    """One video's work: its key (the video id), the request fingerprint, and a callable that
    gives the task's arguments (read lazily, so inputs are in memory only while in flight)."""

    key: str
    request: str
    args: Callable[[], tuple]


def _call(fn: Callable, args: tuple) -> tuple[str, Any]:
    return node_label(), fn(*args)


class _ModelActor:
    """Holds one model, loaded once by ``factory(*init)``; ``run(fn, batch)`` = ``fn(model, batch)``."""

    def __init__(self, factory: Callable, init: tuple, threads: int):
        import torch

        # torch's CPU threads = the CPUs the actor was given, so actors sharing a node do not
        # oversubscribe it (and a result matches a local run with as many threads).
        torch.set_num_threads(threads)
        self.model = factory(*init)

    def run(self, fn: Callable, batch: list[tuple]) -> tuple[str, list]:
        return node_label(), fn(self.model, batch)


class RayEngine:
    """A connection to a Ray cluster (``compute.ray_address``) running one stage's per-video work."""

    def __init__(self, params: ComputeParams):
        try:
            import ray
        except ImportError as error:
            raise UserError(f"compute.engine is ray, but Ray is not installed ({error}); run setup.sh") from None
        self.ray, self.params = ray, params
        if not ray.is_initialized():
            address = params.ray_address or None
            try:
                # A joined cluster's workers import the project from their own install (README).
                ray.init(address=address, include_dashboard=False if address is None else None,
                         log_to_driver=False, configure_logging=False)
            except ConnectionError as error:
                raise UserError(f"compute.ray_address {params.ray_address!r}: cannot join the Ray cluster "
                                f"({error})") from None

    def service(self, cls: type, *args, name: str):
        """A named actor of ``cls(*args)`` on the driver's node (it may read the driver's files), one per name."""
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        here = NodeAffinitySchedulingStrategy(self.ray.get_runtime_context().get_node_id(), soft=False)
        try:
            self.ray.kill(self.ray.get_actor(name))   # a killed driver's leftover
        except ValueError:
            pass
        return self.ray.remote(cls).options(name=name, num_cpus=0, scheduling_strategy=here).remote(*args)

    def _window(self, cpus: float) -> int:
        """Tasks in flight at once: enough to keep every CPU busy, few enough to bound memory."""
        total = self.ray.cluster_resources().get("CPU", 1.0)
        return max(2, int(2 * total / max(cpus, 0.25)))

    def _lost(self, error: BaseException) -> Lost:
        name = type(error).__name__
        return Lost(f"worker lost after {self.params.max_retries} retries ({name}: "
                    f"{str(error).splitlines()[0][:200] if str(error) else 'no detail'})")

    def tasks(self, fn: Callable, work: Sequence[Work], journal: Journal, *, cpus: float, desc: str,
              progress: bool = True) -> dict[str, Lost]:
        """Run ``fn(*w.args())`` as a CPU task for every ``w`` not yet in ``journal``; results go to it.

        ``fn`` must be a module-level function (workers import it by name). An exception raised by
        ``fn`` itself is a bug, not bad input (the task functions turn bad input into status rows),
        and is raised here.

        Returns:
            the videos lost to dying workers, by key.
        """
        remote = self.ray.remote(_call).options(num_cpus=cpus, max_retries=self.params.max_retries,
                                                retry_exceptions=False)
        todo = [w for w in work if journal.get(w.key, w.request) is None]
        lost: dict[str, Lost] = {}
        pending: dict[Any, Work] = {}
        queue = iter(todo)
        window = self._window(cpus)
        with tqdm(total=len(work), initial=len(work) - len(todo), desc=desc, unit="clip",
                  disable=not progress) as bar:
            while True:
                while len(pending) < window:
                    item = next(queue, None)
                    if item is None:
                        break
                    pending[remote.remote(fn, item.args())] = item
                if not pending:
                    break
                ready, _ = self.ray.wait(list(pending), num_returns=1)
                item = pending.pop(ready[0])
                try:
                    node, value = self.ray.get(ready[0])
                except self.ray.exceptions.RayTaskError as error:
                    raise error.as_instanceof_cause() from None
                except self.ray.exceptions.RayError as error:
                    lost[item.key] = self._lost(error)
                else:
                    journal.put(item.key, item.request, node, value)
                bar.update(1)
        return lost

    def actors(self, factory: Callable, init: tuple, fn: Callable, work: Sequence[Work], journal: Journal, *,
               pool: ModelActorParams, desc: str, progress: bool = True) -> dict[str, Lost]:
        """Run ``fn(model, [w.args() ...])`` on batches of ``pool.batch_size`` videos over ``pool.actors``
        actors, each holding ``factory(*init)`` loaded once; ``fn`` returns one value per video.

        A dead actor is restarted (its model reloaded) and its batch retried, up to ``compute.max_retries``
        times; then that batch's videos are lost and the pool goes on with the actors left.

        Returns:
            the videos lost to dying workers, by key.
        """
        ray, retries = self.ray, self.params.max_retries
        actor_cls = ray.remote(_ModelActor).options(num_cpus=pool.cpus, num_gpus=pool.gpus, max_restarts=retries,
                                                    max_task_retries=retries)
        todo = [w for w in work if journal.get(w.key, w.request) is None]
        batches = iter([todo[i:i + pool.batch_size] for i in range(0, len(todo), pool.batch_size)])
        lost: dict[str, Lost] = {}
        if not todo:
            return lost
        threads = max(1, int(pool.cpus))
        idle = [actor_cls.remote(factory, init, threads) for _ in range(min(pool.actors, len(todo)))]
        busy: dict[Any, tuple[Any, list[Work]]] = {}
        with tqdm(total=len(work), initial=len(work) - len(todo), desc=desc, unit="clip",
                  disable=not progress) as bar:
            while True:
                while idle:
                    batch = next(batches, None)
                    if batch is None:
                        break
                    actor = idle.pop()
                    busy[actor.run.remote(fn, [w.args() for w in batch])] = (actor, batch)
                if not busy:
                    for batch in batches:      # no actor left alive
                        for item in batch:
                            lost[item.key] = Lost("no model actor left alive")
                            bar.update(1)
                    break
                ready, _ = ray.wait(list(busy), num_returns=1)
                actor, batch = busy.pop(ready[0])
                try:
                    node, values = ray.get(ready[0])
                except ray.exceptions.RayTaskError as error:
                    raise error.as_instanceof_cause() from None
                except ray.exceptions.RayError as error:
                    for item in batch:
                        lost[item.key] = self._lost(error)
                    ray.kill(actor, no_restart=True)
                else:
                    for item, value in zip(batch, values):
                        journal.put(item.key, item.request, node, value)
                    idle.append(actor)
                bar.update(len(batch))
        for actor in idle:
            ray.kill(actor)
        return lost


def open_engine(params: ComputeParams | None) -> RayEngine | None:
    """The Ray engine when ``params.engine`` is ray, else None (the stage runs its local path)."""
    if params is None or params.engine == "local":
        return None
    return RayEngine(params)


def journal_for(params: ComputeParams, stage: str, shard: str) -> Journal:
    return Journal(Path(params.scratch) / stage / shard)


def put_files(folder: Path, files: dict[str, bytes]) -> None:
    """Write the files a worker sent back (name -> bytes) into ``folder``."""
    for name, data in files.items():
        (folder / name).write_bytes(data)


def results(work: Sequence[Work], journal: Journal, lost: dict[str, Lost]) -> Iterator[tuple[str, str | None, Any]]:
    """``(key, node, value)`` of each video in input order, read back from the journal one at a time;
    a lost video gives ``(key, None, Lost)``."""
    for item in work:
        if item.key in lost:
            yield item.key, None, lost[item.key]
            continue
        found = journal.get(item.key, item.request)
        if found is None:
            raise RuntimeError(f"{item.key}: neither finished nor lost (engine bug)")
        yield item.key, found[0], found[1]


def in_temp_dir(fn: Callable[[Path], Any]) -> Any:
    """``fn(folder)`` in a fresh temporary folder on the worker, removed after."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="v2m-") as folder:
        return fn(Path(folder))
