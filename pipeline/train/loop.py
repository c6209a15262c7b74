"""The training loop (paper section 5.1): AdamW, linear warmup then cosine decay, EMA weights.

One call of :func:`train` runs (or resumes) a run to ``params.max_steps`` optimizer steps:

- Accelerate carries devices, mixed precision, gradient accumulation and multi-process runs
  (``accelerate launch``); ``train.batch_size`` is the global micro-batch, each process loads
  its slice of it, so the data order does not depend on the number of processes.
- The exponential moving average of the trainable weights is bias-corrected (a zero shadow
  divided by ``1 - decay**updates``) and is what validation scores and what is exported: the
  best EMA weights by validation loss go to ``export_dir`` with ``save_pretrained``.
- ``accelerator.save_state`` checkpoints (model, optimizer, scheduler, scaler, RNG, plus the
  EMA and the loop's own state) go to ``work_dir/checkpoints/step_<N>``; a new call resumes
  from the newest one, and reaches the same weights as a run never stopped: the data position,
  the condition-dropout masks and the random streams are all functions of the step.
  Checkpoints made under other train params, model config or training clips are dropped, not
  resumed (``work_dir/run.json`` records what made them).
- DVCLive (through Accelerate's ``dvclive`` tracker, ``dvcyaml=False``) gets one log call per
  ``log_every`` steps: ``loss`` (mean over the interval), ``lr`` (of the interval's last update),
  ``tokens_per_s`` (training steps' wall time: data, forward, backward, update) and, when a
  validation ran in the interval, ``val_loss``, plotted at the interval's last step (choose
  ``eval_every`` a multiple of ``log_every`` for it to be the step it was measured at). Steps
  after the last whole interval are not logged; ``metrics.json`` gets the final ``val_loss`` and
  ``best_val_loss`` at the end. Each checkpoint carries a copy of the DVCLive folder, which a
  resumed run restores (DVCLive ``resume=True``): no step twice, none lost.
"""

from __future__ import annotations

import logging
import math
import shutil
import time
from pathlib import Path
from typing import Any, Callable

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from tqdm import tqdm

from pipeline.config import TrainParams
from pipeline.errors import UserError
from pipeline.files import atomic_path
from pipeline.model.v2m import V2MModel
from pipeline.train.checkpointing import (CHECKPOINTS, check_identity, checkpoints, restore_live,
                                          save_checkpoint)
from pipeline.train.data import SegmentDataset, ce_sums, make_loader

log = logging.getLogger("v2m.train")

METRICS = ("loss", "val_loss", "lr", "tokens_per_s")


# -- schedule -----------------------------------------------------------------------------------


def lr_factor(update: int, warmup_steps: int, max_steps: int) -> float:
    """Learning-rate multiplier of optimizer update ``update`` (1-based).

    Linear warmup ``update / warmup_steps`` up to 1 at ``warmup_steps``, then a half cosine
    from 1 to 0 at ``max_steps`` (so the last update has lr 0).
    """
    if warmup_steps and update <= warmup_steps:
        return update / warmup_steps
    if max_steps <= warmup_steps:
        return 1.0
    progress = min((update - warmup_steps) / (max_steps - warmup_steps), 1.0)
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def make_scheduler(optimizer: torch.optim.Optimizer, warmup_steps: int, max_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """LambdaLR whose ``i``-th value (after ``i`` scheduler steps) is the lr of update ``i + 1``."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda i: lr_factor(i + 1, warmup_steps, max_steps))


def parameter_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW groups: decay on weight matrices; none on biases, norms, embeddings and positional tables."""
    no_decay: set[int] = set()
    norms = (torch.nn.LayerNorm, torch.nn.GroupNorm, torch.nn.RMSNorm, torch.nn.modules.batchnorm._BatchNorm,
             torch.nn.Embedding)
    for module in model.modules():
        if isinstance(module, norms):
            no_decay.update(id(p) for p in module.parameters(recurse=False))
    decay, keep = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        leaf = name.rsplit(".", 1)[-1]
        if (p.ndim < 2 or id(p) in no_decay or "norm" in name.lower() or "embed" in leaf or "pos" in leaf
                or leaf in ("spatial", "cls", "cls_token", "query", "queries")):
            keep.append(p)
        else:
            decay.append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": keep, "weight_decay": 0.0}]


# -- EMA ------------------------------------------------------------------------------------------


class EMA:
    """Bias-corrected exponential moving average of the trainable parameters.

    ``shadow = decay * shadow + (1 - decay) * weight`` from a zero shadow; the average is
    ``shadow / (1 - decay**updates)`` (Adam's moment correction), so after one update it equals
    the weights and early averages are not pulled towards zero.
    Has ``state_dict``/``load_state_dict`` for ``accelerator.register_for_checkpointing``.
    """

    def __init__(self, model: torch.nn.Module, decay: float):
        self.decay = float(decay)
        self.names = [n for n, p in model.named_parameters() if p.requires_grad]
        params = dict(model.named_parameters())
        self.shadow = {n: torch.zeros_like(params[n], dtype=torch.float32) for n in self.names}
        self.updates = 0

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        params = dict(model.named_parameters())
        for n in self.names:
            self.shadow[n].mul_(self.decay).add_(params[n].detach().float(), alpha=1.0 - self.decay)
        self.updates += 1

    def correction(self) -> float:
        return 1.0 - self.decay ** self.updates

    @torch.no_grad()
    def averaged(self) -> dict[str, torch.Tensor]:
        """The bias-corrected average of every trainable parameter (float32)."""
        if self.updates == 0:
            raise RuntimeError("the EMA has no updates yet")
        c = self.correction()
        return {n: s / c for n, s in self.shadow.items()}

    def state_dict(self) -> dict[str, Any]:
        return {"decay": self.decay, "updates": self.updates, "shadow": {n: s.cpu() for n, s in self.shadow.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.decay, self.updates = float(state["decay"]), int(state["updates"])
        for n, s in state["shadow"].items():
            self.shadow[n].copy_(s)


class swapped_weights:
    """Context manager: the model holds ``weights`` inside the block, its own weights after it."""

    def __init__(self, model: torch.nn.Module, weights: dict[str, torch.Tensor]):
        self.model, self.weights = model, weights

    def __enter__(self) -> torch.nn.Module:
        params = dict(self.model.named_parameters())
        self.saved = {n: params[n].detach().clone() for n in self.weights}
        with torch.no_grad():
            for n, w in self.weights.items():
                params[n].copy_(w.to(params[n].device, params[n].dtype))
        return self.model

    def __exit__(self, *exc) -> None:
        params = dict(self.model.named_parameters())
        with torch.no_grad():
            for n, w in self.saved.items():
                params[n].copy_(w)


class LoopState:
    """What the loop itself must remember across a restart (checkpointed with the run)."""

    def __init__(self):
        self.step = 0
        self.best_val = math.inf
        self.best_step = 0
        self.best_weights: dict[str, torch.Tensor] | None = None
        self.last_val_step = -1
        self.last_val = math.nan
        self.interval = {"loss": 0.0, "steps": 0, "tokens": 0, "seconds": 0.0}
        self.pending_val: float | None = None
        self.last_loss = math.nan

    def state_dict(self) -> dict[str, Any]:
        return {"step": self.step, "best_val": self.best_val, "best_step": self.best_step,
                "best_weights": self.best_weights, "last_val_step": self.last_val_step, "last_val": self.last_val,
                "interval": dict(self.interval), "pending_val": self.pending_val, "last_loss": self.last_loss}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key, value in state.items():
            setattr(self, key, value)


# -- the loop --------------------------------------------------------------------------------------


def condition_mask(seed: int, step: int, micro: int, batch: int, p: float, rank: int = 0,
                   world: int = 1) -> torch.Tensor | None:
    """This process's condition-dropout mask ``[B]`` for micro-batch ``micro`` of update ``step``.

    Drawn over the global batch from a generator seeded by ``(seed, step, micro)``, so it does
    not depend on the process count and a resumed run draws the same masks.
    """
    if p <= 0:
        return None
    g = torch.Generator().manual_seed((seed * 1_000_003 + step) * 1_009 + micro)
    mask = torch.rand(batch * world, generator=g) < p
    return mask[rank * batch:(rank + 1) * batch]


def _validate(accelerator: Accelerator, model: torch.nn.Module, val_set: SegmentDataset, batch_size: int) -> float:
    """Per-token CE over every validation segment, each process scoring its share."""
    ranks = range(accelerator.process_index, len(val_set), accelerator.num_processes)
    total, count = ce_sums(model, val_set, batch_size, indices=list(ranks), device=accelerator.device,
                           autocast=accelerator.autocast)
    sums = accelerator.reduce(torch.tensor([total, count], dtype=torch.float64, device=accelerator.device), "sum")
    return float(sums[0] / sums[1])


def train(model: V2MModel, train_set: SegmentDataset, val_set: SegmentDataset | None, params: TrainParams, *,
          identity: dict[str, Any], work_dir: Path, live_dir: Path, export_dir: Path, progress: bool = True,
          callback: Callable[[int, dict[str, Any]], None] | None = None,
          export_files: dict[str, str] | None = None) -> dict[str, Any]:
    """Train ``model`` to ``params.max_steps`` updates (resuming from ``work_dir`` if it holds a checkpoint).

    Args:
        model: a V2MModel (anything whose ``forward(visual, motion, codes, drop_condition=)``
            returns ``.loss`` and has ``save_pretrained`` and ``config.condition_dropout``).
        train_set: training segments (``train=True``).
        val_set: evaluation segments (``train=False``), or None to export the last EMA weights.
        params: the ``train`` section.
        identity: the run's :func:`pipeline.train.experiment.run_identity`; checkpoints in
            ``work_dir`` made under another identity are dropped, not resumed.
        work_dir: checkpoints (``work_dir/checkpoints/step_<N>``); resumed from when present.
        live_dir: the DVCLive folder (metrics.json, plots/metrics/*.tsv).
        export_dir: where the best EMA weights are saved (``save_pretrained``, atomically).
        progress: show a tqdm bar (main process only).
        callback: called on the main process after every update with ``(step, info)``; an
            exception it raises stops the run as a kill would (tests use it).
        export_files: extra text files written into ``export_dir`` with the weights (name -> content).

    Returns:
        ``steps``, ``best_val_loss``, ``best_step``, ``final_train_loss`` (mean loss of the last
        update), ``tokens_per_s`` (audio tokens per training second, this call), ``seconds``,
        ``resumed_from`` (step, 0 for a fresh run).
    """
    started = time.perf_counter()
    work_dir, live_dir, export_dir = Path(work_dir), Path(live_dir), Path(export_dir)
    accelerator = Accelerator(mixed_precision=params.mixed_precision, gradient_accumulation_steps=params.grad_accum,
                              log_with="dvclive", step_scheduler_with_optimizer=False)
    rank, world = accelerator.process_index, accelerator.num_processes
    if params.batch_size % world:
        raise UserError(f"train.batch_size ({params.batch_size}) must divide by the process count ({world})")
    if accelerator.is_main_process:
        check_identity(work_dir, identity)
        for partial in (work_dir / CHECKPOINTS).glob(".step_*.partial"):   # a save that was killed
            shutil.rmtree(partial, ignore_errors=True)
    accelerator.wait_for_everyone()
    latest = checkpoints(work_dir)[-1] if checkpoints(work_dir) else None
    set_seed(params.seed)

    condition_dropout = model.config.condition_dropout
    optimizer = torch.optim.AdamW(parameter_groups(model, params.weight_decay), lr=params.lr,
                                  betas=tuple(params.betas), weight_decay=params.weight_decay)
    scheduler = make_scheduler(optimizer, params.warmup_steps, params.max_steps)
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    raw = accelerator.unwrap_model(model)
    ema = EMA(raw, params.ema_decay)
    state = LoopState()
    accelerator.register_for_checkpointing(ema, state)

    if latest is not None:
        accelerator.load_state(str(latest))
        log.info("resumed from %s (step %d)", latest, state.step)
        if accelerator.is_main_process:
            restore_live(latest, live_dir, state.step)
    resumed_from = state.step
    accelerator.wait_for_everyone()
    accelerator.init_trackers("v2m", init_kwargs={"dvclive": {
        "dir": str(live_dir), "dvcyaml": False, "save_dvc_exp": False, "resume": resumed_from > 0}})

    loader = make_loader(train_set, params.batch_size, shuffle=True, seed=params.seed,
                         num_workers=params.num_workers, infinite=True,
                         start_batch=state.step * params.grad_accum, rank=rank, world=world)
    per_process = params.batch_size // world
    batches = iter(loader)
    bar = tqdm(total=params.max_steps, initial=state.step, desc="train", unit="step", dynamic_ncols=True,
               disable=not (progress and accelerator.is_local_main_process))
    run_tokens, run_seconds = 0, 0.0

    def evaluate() -> None:
        if val_set is None or len(val_set) == 0:
            return
        weights = ema.averaged()
        with swapped_weights(raw, weights):
            val = _validate(accelerator, model, val_set, per_process)
        state.last_val_step, state.last_val, state.pending_val = state.step, val, val
        if val < state.best_val:
            state.best_val, state.best_step = val, state.step
            state.best_weights = {n: w.detach().cpu().clone() for n, w in weights.items()}
        bar.write(f"step {state.step}: val_loss {val:.4f} (best {state.best_val:.4f} at {state.best_step})") \
            if progress and accelerator.is_local_main_process else None

    model.train()
    while state.step < params.max_steps:
        tick = time.perf_counter()
        step_loss = torch.zeros((), device=accelerator.device)
        tokens = 0
        for micro in range(params.grad_accum):
            batch = next(batches)
            codes = batch["codes"].to(accelerator.device)
            visual = batch["visual"].to(accelerator.device)
            motion = batch["motion"].to(accelerator.device) if batch["motion"] is not None else None
            drop = condition_mask(params.seed, state.step, micro, codes.shape[0], condition_dropout, rank, world)
            with accelerator.accumulate(model):
                with accelerator.autocast():
                    out = model(visual, motion, codes,
                                drop_condition=drop.to(accelerator.device) if drop is not None else None)
                accelerator.backward(out.loss)
                if accelerator.sync_gradients and params.clip_grad > 0:
                    accelerator.clip_grad_norm_(model.parameters(), params.clip_grad)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            step_loss += out.loss.detach().float() / params.grad_accum
            tokens += codes.shape[0] * codes.shape[1] * codes.shape[2] * world
        lr = optimizer.param_groups[0]["lr"]
        if not accelerator.optimizer_step_was_skipped:
            scheduler.step()
            ema.update(raw)
        state.step += 1
        loss = float(accelerator.reduce(step_loss, "mean"))
        seconds = time.perf_counter() - tick
        run_tokens, run_seconds = run_tokens + tokens, run_seconds + seconds
        state.last_loss = loss
        iv = state.interval
        iv["loss"] += loss
        iv["steps"] += 1
        iv["tokens"] += tokens
        iv["seconds"] += seconds
        bar.update(1)
        bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.3g}")

        if state.step % params.eval_every == 0 or state.step == params.max_steps:
            evaluate()
        if state.step % params.log_every == 0:
            values = {"loss": iv["loss"] / iv["steps"], "lr": lr,
                      "tokens_per_s": iv["tokens"] / max(iv["seconds"], 1e-9)}
            if state.pending_val is not None:
                values["val_loss"] = state.pending_val
            accelerator.log(values, step=state.step)
            state.interval = {"loss": 0.0, "steps": 0, "tokens": 0, "seconds": 0.0}
            state.pending_val = None
        if state.step % params.checkpoint_every == 0 or state.step == params.max_steps:
            save_checkpoint(accelerator, work_dir, state.step, live_dir)
        if callback is not None and accelerator.is_main_process:
            callback(state.step, {"loss": loss, "lr": lr, "model": raw, "ema": ema, "state": state})
    bar.close()

    if state.last_val_step != state.step:        # resumed at the end, or no validation yet
        evaluate()
    export = state.best_weights if state.best_weights is not None else ema.averaged()
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        with swapped_weights(raw, export), atomic_path(export_dir) as temp:
            raw.save_pretrained(temp, extra_files=export_files)
        live = accelerator.get_tracker("dvclive", unwrap=True)
        if math.isfinite(state.best_val):     # metrics.json: the latest values, the best one too
            live.summary.update(val_loss=state.last_val, best_val_loss=state.best_val, best_step=state.best_step)
    accelerator.wait_for_everyone()
    accelerator.end_training()
    summary = {"steps": state.step, "best_val_loss": state.best_val if math.isfinite(state.best_val) else None,
               "best_step": state.best_step, "final_train_loss": state.last_loss,
               "tokens_per_s": run_tokens / run_seconds if run_seconds else None,
               "seconds": time.perf_counter() - started, "resumed_from": resumed_from}
    return summary
