"""Training: aligned feature segments (:mod:`pipeline.train.data`) and the Accelerate loop
(:mod:`pipeline.train.loop`) with EMA weights, checkpoints that resume and DVCLive metrics."""

from pipeline.train.data import (SegmentBatchSampler, SegmentDataset, collate, derangement_of_segments,
                                 held_out_ce, make_loader, token_nll)
from pipeline.train.checkpointing import checkpoints
from pipeline.train.loop import EMA, lr_factor, make_scheduler, parameter_groups, train

__all__ = [
    "EMA", "SegmentBatchSampler", "SegmentDataset", "checkpoints", "collate", "derangement_of_segments",
    "held_out_ce", "lr_factor", "make_loader", "make_scheduler", "parameter_groups", "token_nll", "train",
]
