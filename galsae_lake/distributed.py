"""Data-parallel SAE training across processes and GPUs with torch.distributed.

``torchrun --nproc-per-node N -m galsae_lake train-sae ...`` (or the same command under ``srun``
with one task per GPU) trains one SAE run on N ranks: every rank reads the same embeddings, each
global batch of ``batch_size`` rows is split into N slices (one per rank), and the step's math
stays the seed's for the global batch:

- BatchTopK keeps the ``top_k * batch_size`` largest pre-activations of the *global* batch: each
  rank offers its local top candidates, they are all-gathered, and every rank keeps its own
  values above the global threshold (ties at the threshold taken in rank order, so exactly
  ``top_k * batch_size`` codes are kept in all);
- the auxiliary loss's threshold on dead latents is chosen the same way, and its gradient (the
  threshold is one of the activations) goes to the rank that holds that activation;
- losses are divided by the global batch, gradients summed across ranks (all of them, the loss
  terms and the per-latent fire counts in one flat all-reduce per step, as DDP buckets them), so
  the dead-latent statistics and the inference threshold's moving average are global too.

The step computes its gradients by hand with sparse arithmetic (:func:`~galsae_lake.sae.
sparse_loss_and_grads`), which autograd's hooks, and so the ``DistributedDataParallel`` wrapper,
never see: the all-reduce is done here, explicitly, with the same effect (identical weights on
every rank after every step). Rank 0 alone evaluates and writes the lake; ``sae_runs.metrics``
records ``world_size``. Backends: nccl on GPUs (one per rank, ``LOCAL_RANK``), gloo on CPUs.
"""

from __future__ import annotations

import datetime
import os
import re
from dataclasses import dataclass
from typing import Mapping

import torch

from galsae_lake.errors import InputError


@dataclass(frozen=True)
class World:
    """Where this process stands: rank, world size, rank on its node, and the rendezvous."""

    rank: int
    world_size: int
    local_rank: int
    master_addr: str | None = None
    master_port: str | None = None
    launcher: str = "torchrun"

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def first_host(nodelist: str) -> str:
    """The first host of a SLURM node list: ``gpu[03-05,09],cpu1`` -> ``gpu03``."""
    match = re.match(r"([^,\[]+)(?:\[([^\]]+)\])?", nodelist.strip())
    if not match or not match.group(1):
        raise InputError(f"cannot read the SLURM node list {nodelist!r}; set MASTER_ADDR")
    prefix, ranges = match.group(1), match.group(2)
    if not ranges:
        return prefix
    return prefix + ranges.split(",")[0].split("-")[0]


def world_from_env(env: Mapping[str, str] | None = None) -> World | None:
    """The world torchrun (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``) or srun (``SLURM_PROCID``,
    ``SLURM_NTASKS``, ``SLURM_LOCALID``) describes; None when this is one plain process.

    Under srun the rendezvous is ``MASTER_ADDR`` (else the first host of ``SLURM_JOB_NODELIST``)
    and ``MASTER_PORT`` (else 29500 + the job id mod 1000, so two jobs on a node do not collide).
    """
    env = os.environ if env is None else env
    if "WORLD_SIZE" in env and "RANK" in env:
        return World(int(env["RANK"]), int(env["WORLD_SIZE"]), int(env.get("LOCAL_RANK", 0)),
                     env.get("MASTER_ADDR"), env.get("MASTER_PORT"), "torchrun")
    if "SLURM_PROCID" in env and int(env.get("SLURM_NTASKS", "1")) > 1:
        nodes = env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST") or "localhost"
        addr = env.get("MASTER_ADDR") or first_host(nodes)
        port = env.get("MASTER_PORT") or str(29500 + int(env.get("SLURM_JOB_ID", "0")) % 1000)
        return World(int(env["SLURM_PROCID"]), int(env["SLURM_NTASKS"]),
                     int(env.get("SLURM_LOCALID", 0)), addr, port, "srun")
    return None


def init_process_group(world: World, device: str) -> torch.device:
    """Join the group (nccl on GPUs, gloo on CPUs); returns this rank's device."""
    import torch.distributed as dist

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise InputError(f"SAE config: device {device!r} asked for, but no CUDA device is available")
        torch.cuda.set_device(world.local_rank)
        rank_device, backend = torch.device("cuda", world.local_rank), "nccl"
    else:
        rank_device, backend = torch.device("cpu"), "gloo"
    if world.master_addr:
        os.environ.setdefault("MASTER_ADDR", world.master_addr)
    if world.master_port:
        os.environ.setdefault("MASTER_PORT", world.master_port)
    if not dist.is_initialized():
        dist.init_process_group(backend, rank=world.rank, world_size=world.world_size,
                                timeout=datetime.timedelta(minutes=30))
    return rank_device


class RankGroup:
    """The collectives one sparse training step needs, over the default process group."""

    def __init__(self, world: World):
        import torch.distributed as dist

        self.dist, self.rank, self.size = dist, world.rank, world.world_size

    # -------------------------------------------------------------- selections over the ranks
    def _global_kth(self, flat: torch.Tensor, k: int):
        """Local top-k candidates, gathered: (local values, local indices, the global k-th
        largest value, every rank's candidates)."""
        local_k = min(k, flat.numel())
        values, index = torch.topk(flat, local_k, sorted=False)
        padded = torch.full((k,), float("-inf"), device=flat.device, dtype=flat.dtype)
        padded[:local_k] = values
        gathered = [torch.empty_like(padded) for _ in range(self.size)]
        self.dist.all_gather(gathered, padded)
        kth = torch.topk(torch.cat(gathered), k, sorted=False).values.min()
        return values, index, kth, gathered

    def batch_topk(self, flat: torch.Tensor, n_keep: int):
        """This rank's share of the global batch's ``n_keep`` largest values: (values,
        indices into ``flat``, ascending). Ties at the threshold go to the lower ranks first."""
        values, index, kth, gathered = self._global_kth(flat, n_keep)
        above = int(sum(int((g > kth).sum()) for g in gathered))
        ties_before = int(sum(int((g == kth).sum()) for g in gathered[:self.rank]))
        take = max(0, min(n_keep - above - ties_before, int((values == kth).sum())))
        keep = values > kth
        if take:
            tied = (values == kth).nonzero().squeeze(1)
            tied = tied[torch.argsort(index[tied])][:take]  # the first in index order
            keep[tied] = True
        idx, order = torch.sort(index[keep])
        return values[keep][order], idx

    def kth_largest(self, flat: torch.Tensor, k: int):
        """The global k-th largest value and, on the one rank that holds it, its index in
        ``flat`` (None elsewhere)."""
        _, _, kth, _ = self._global_kth(flat, k)
        here = (flat == kth).nonzero()
        owner = torch.tensor([self.rank if here.numel() else self.size], device=flat.device)
        self.dist.all_reduce(owner, op=self.dist.ReduceOp.MIN)
        return kth, (int(here[0, 0]) if int(owner) == self.rank else None)

    # -------------------------------------------------------------- reductions
    def sum_(self, tensor: torch.Tensor) -> torch.Tensor:
        self.dist.all_reduce(tensor)
        return tensor

    def min(self, value: torch.Tensor) -> torch.Tensor:
        value = value.detach().clone().reshape(1)
        self.dist.all_reduce(value, op=self.dist.ReduceOp.MIN)
        return value[0]

    def broadcast_model(self, model: torch.nn.Module) -> None:
        """Rank 0's parameters and buffers on every rank (the start of training)."""
        for tensor in list(model.parameters()) + list(model.buffers()):
            self.dist.broadcast(tensor.data, src=0)

    def reduce_step(self, model: torch.nn.Module, out):
        """Sum this step's gradients, loss terms and fire counts over the ranks in one flat
        all-reduce; returns the :class:`~galsae_lake.sae.StepOutput` with global values
        (``fired``: fired on any rank)."""
        params = [p for p in model.parameters()]
        stats = torch.stack([out.mse, out.l1, out.aux,
                             torch.as_tensor(float(out.nnz), device=out.mse.device)])
        flat = torch.cat([p.grad.reshape(-1) for p in params]
                         + [stats.to(params[0].dtype), out.fired.to(params[0].dtype)])
        self.dist.all_reduce(flat)
        offset = 0
        for p in params:
            n = p.grad.numel()
            p.grad.copy_(flat[offset:offset + n].view_as(p.grad))
            offset += n
        mse, l1, aux, nnz = flat[offset:offset + 4]
        fired = flat[offset + 4:] > 0
        return out._replace(mse=mse, l1=l1, aux=aux, loss=mse + l1 + aux, fired=fired,
                            l0=float(nnz) / out.batch_total, nnz=int(nnz))


def shutdown() -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()
