"""Rank coordination for `srl train` under `accelerate launch` / torchrun (one process per rank).

Every rank runs the whole of `train()`, but the run folder is shared: two ranks that both create,
clear or rename things in it race (rank 1's `srl/` folder made rank 0 refuse the output as "not
empty"; `--overwrite` on rank 0 could delete it; every rank renamed the same incomplete checkpoint).
So folder work is done by rank 0 alone, inside `on_main_first`: the other ranks wait at a barrier
and then get rank 0's result, or rank 0's error re-raised as their own (a rank never hangs on a
barrier that rank 0 skipped by raising).

The process group is created here, before any trainer exists, through accelerate's `PartialState`
(the same shared state the HF Trainer uses later, so there is one group: gloo on CPU, NCCL on GPU).
A single process (no WORLD_SIZE, or 1) never touches torch.distributed.

The run folder must be on a file system every rank sees (one machine, or NFS across nodes): only
rank 0 writes checkpoints and the merged model, and every rank reads them back on resume.
"""

from __future__ import annotations

import os
from typing import Any, Callable, TypeVar

from srl_sdk.errors import TrainingError, require

__all__ = ["world_size", "rank", "is_main_process", "ensure_process_group", "barrier", "on_main_first", "rank_report"]

T = TypeVar("T")


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1") or 1)


def rank() -> int:
    return int(os.environ.get("RANK", "0") or 0)


def is_main_process() -> bool:
    """Rank 0 of the whole job (all nodes), readable before any process group exists."""
    return rank() == 0


def ensure_process_group() -> None:
    """Start the job's process group (once) when launched with several processes."""
    if world_size() <= 1:
        return
    torch = require("torch", "train")
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return
    accelerate = require("accelerate", "train")
    accelerate.PartialState()  # reads the launcher's env (ACCELERATE_USE_CPU, MASTER_ADDR, ...): gloo or NCCL


def barrier() -> None:
    if world_size() <= 1:
        return
    ensure_process_group()
    require("accelerate", "train").PartialState().wait_for_everyone()


def _broadcast_from_main(value: object) -> object:
    torch = require("torch", "train")
    box = [value]
    torch.distributed.broadcast_object_list(box, src=0)
    return box[0]


def on_main_first(action: Callable[[], T], what: str) -> T:
    """Run `action` on rank 0 only; every rank returns its result or raises its error.

    `what` names the work in the error the other ranks raise ("preparing the run folder").
    The result must be picklable (it is broadcast to the other ranks).
    """
    if world_size() <= 1:
        return action()
    ensure_process_group()
    if is_main_process():
        try:
            result = action()
        except BaseException as exc:  # tell the waiting ranks, then fail here with the original error
            _broadcast_from_main(("error", f"{type(exc).__name__}: {exc}"))
            raise
        _broadcast_from_main(("ok", result))
        return result
    received: Any = _broadcast_from_main(None)
    status, payload = received
    if status == "error":
        raise TrainingError(f"rank 0 failed while {what}: {payload}")
    return payload


def rank_report(trainer) -> dict[str, object]:
    """What every rank ended a stage with, gathered on all ranks; raises if data-parallel ranks disagree.

    Under data parallelism (DDP, or one process) every rank holds the whole model, so the sum of
    its trainable weights must be the same everywhere; so must the global step and, with dynamic
    sampling, the number of generation rounds of every batch (a rank that ran one round more would
    have waited forever in a gather). Under FSDP / DeepSpeed the weights are sharded: only the step
    and the rounds are compared. The report goes into the stage's state.json.
    """
    torch = require("torch", "train")
    accelerate = require("accelerate", "train")
    kind = str(trainer.accelerator.distributed_type).rsplit(".", 1)[-1]  # NO, MULTI_CPU, MULTI_GPU, FSDP, DEEPSPEED
    sharded = kind in ("FSDP", "DEEPSPEED", "MEGATRON_LM")
    with torch.no_grad():
        weights = sum(float(p.detach().double().sum()) for p in trainer.model.parameters() if p.requires_grad)
    mine = {
        "rank": trainer.accelerator.process_index,
        "global_step": int(trainer.state.global_step),
        "trainable_sum": None if sharded else weights,
        "dynamic_sampling_rounds": list(getattr(trainer, "dynamic_sampling_rounds", [])),
    }
    ranks = accelerate.utils.gather_object([mine]) if trainer.accelerator.num_processes > 1 else [mine]
    first = ranks[0]
    for other in ranks[1:]:
        for key in ("global_step", "dynamic_sampling_rounds"):
            if other[key] != first[key]:
                raise TrainingError(f"ranks disagree on {key}: rank 0 has {first[key]}, rank {other['rank']} has {other[key]}")
        if not sharded and abs(other["trainable_sum"] - first["trainable_sum"]) > 1e-6 * max(1.0, abs(first["trainable_sum"])):
            raise TrainingError(
                f"rank {other['rank']}'s trainable weights differ from rank 0's "
                f"({other['trainable_sum']} vs {first['trainable_sum']}): the data-parallel replicas drifted"
            )
    return {"world_size": len(ranks), "distributed_type": kind, "ranks": ranks}
