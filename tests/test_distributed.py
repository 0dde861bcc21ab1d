"""Data-parallel SAE training (torch.distributed, gloo on CPU): the step's math on two ranks is the
one-process math on the global batch; torchrun trains one run that rank 0 alone writes."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from galsae_lake.distributed import RankGroup, World, first_host, world_from_env
from galsae_lake.lake import Lake
from galsae_lake.sae import sparse_loss_and_grads
from galsae_lake.train import train_sae
from galsae_lake.testing import lake_hash
from test_sae import SMALL, _pair, directions, planted, write_embeddings

# (dead latents, top_k, shift of b_enc): as the one-process test of the seed's math
CASES = [(0, 4, 0.0), (5, 4, 0.0), (30, 4, 0.0), (10, 40, -2.0)]
ROWS = 37  # odd: the ranks get 19 and 18 rows


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_step(rank: int, world_size: int, port: int, out: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world_size)
    group = RankGroup(World(rank, world_size, rank))
    results = []
    for dead, top_k, shift in CASES:
        model, _ = _pair(dead, top_k)
        x = torch.randn(ROWS, 24, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
        with torch.no_grad():
            model.b_enc.add_(shift)
        part = x.tensor_split(world_size)[rank]
        step = group.reduce_step(model, sparse_loss_and_grads(model, part, group=group,
                                                              batch_total=ROWS))
        model.make_decoder_weights_and_grad_unit_norm()
        results.append({"grads": {n: getattr(model, n).grad.clone()
                                  for n in ("W_enc_t", "b_enc", "W_dec", "b_dec")},
                        **{k: float(getattr(step, k)) for k in ("loss", "mse", "l1", "aux",
                                                                "l0", "min_kept")},
                        "fired": step.fired.clone()})
    torch.save(results, f"{out}.{rank}")
    dist.destroy_process_group()


@pytest.mark.slow  # fresh processes / a JVM / a Ray cluster
def test_two_ranks_take_the_seeds_step_on_the_global_batch(tmp_path):
    mp.spawn(_rank_step, args=(2, _free_port(), str(tmp_path / "step")), nprocs=2)
    ranks = [torch.load(tmp_path / f"step.{r}") for r in range(2)]
    for case, (dead, top_k, shift) in enumerate(CASES):
        model, _ = _pair(dead, top_k)
        x = torch.randn(ROWS, 24, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
        with torch.no_grad():
            model.b_enc.add_(shift)
        one = sparse_loss_and_grads(model, x)
        model.make_decoder_weights_and_grad_unit_norm()
        for got in (ranks[0][case], ranks[1][case]):  # both ranks hold the same step
            for key in ("loss", "mse", "l1", "aux", "l0", "min_kept"):
                assert got[key] == pytest.approx(float(getattr(one, key)), rel=1e-10,
                                                 abs=1e-14), (case, key)
            assert torch.equal(got["fired"], one.fired)
            for name, grad in got["grads"].items():
                torch.testing.assert_close(grad, getattr(model, name).grad, rtol=1e-10, atol=1e-13)
        if dead > 4:
            assert ranks[0][case]["aux"] > 0


def test_world_from_torchrun_and_srun_environments():
    assert world_from_env({}) is None
    assert world_from_env({"SLURM_PROCID": "0", "SLURM_NTASKS": "1"}) is None  # one task
    w = world_from_env({"RANK": "3", "WORLD_SIZE": "8", "LOCAL_RANK": "1"})
    assert (w.rank, w.world_size, w.local_rank, w.launcher) == (3, 8, 1, "torchrun")
    w = world_from_env({"SLURM_PROCID": "5", "SLURM_NTASKS": "8", "SLURM_LOCALID": "1",
                        "SLURM_JOB_NODELIST": "gpu[03-05,09],cpu1", "SLURM_JOB_ID": "123456"})
    assert (w.rank, w.world_size, w.local_rank, w.launcher) == (5, 8, 1, "srun")
    assert (w.master_addr, w.master_port) == ("gpu03", "29956")
    assert first_host("node7") == "node7" and first_host("a[1-2]") == "a1"


@pytest.mark.parametrize("env", [
    {"RANK": "0", "WORLD_SIZE": "2"},
    {"SLURM_PROCID": "0", "SLURM_NTASKS": "2", "MASTER_ADDR": "127.0.0.1"},
])
def test_batch_smaller_than_the_world_fails_before_joining(tmp_path, monkeypatch, env):
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    lake = Lake(tmp_path / "lake")
    rng = np.random.default_rng(0)
    write_embeddings(lake, "planted", {"train": planted(rng, 50, directions(rng))})
    before = lake_hash(lake.root)
    from galsae_lake.errors import InputError

    with pytest.raises(InputError, match="smaller than the 2 ranks"):
        train_sae(lake, "planted", overrides=SMALL + ["batch_size=1"], progress=False)
    assert lake_hash(lake.root) == before


@pytest.mark.slow  # fresh processes / a JVM / a Ray cluster
def test_torchrun_two_cpu_processes_train_one_run(tmp_path):
    rng = np.random.default_rng(1)
    D = directions(rng)
    splits = {"train": planted(rng, 1500, D), "test": planted(rng, 400, D, offset=0.8)}
    lakes = {n: Lake(tmp_path / f"lake{n}") for n in (1, 2)}
    for lake in lakes.values():
        write_embeddings(lake, "planted", splits)
    args = ["train-sae", "--encoder", "planted", "--quiet"] + [a for s in SMALL for a in ("--set", s)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("RANK", None), env.pop("WORLD_SIZE", None)
    one = subprocess.run([sys.executable, "-m", "galsae_lake", "--lake", str(lakes[1].root), *args],
                         capture_output=True, text=True, env=env, timeout=300)
    assert one.returncode == 0, one.stderr
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                          "--nproc-per-node", "2", "-m", "galsae_lake", "--lake",
                          str(lakes[2].root), *args],
                         capture_output=True, text=True, env=env, timeout=300)
    assert two.returncode == 0, two.stderr
    assert two.stdout.split() == one.stdout.split()  # one run id, printed once (rank 0)
    runs = {n: lake.read("sae_runs") for n, lake in lakes.items()}
    assert runs[2].height == 1
    metrics = {n: json.loads(r["metrics"][0]) for n, r in runs.items()}
    assert metrics[1]["world_size"] == 1 and metrics[2]["world_size"] == 2
    # the same math on the same batches: reconstruction as good as one process
    assert metrics[2]["fvu"] == pytest.approx(metrics[1]["fvu"], abs=0.01)
    assert metrics[2]["l0"] == pytest.approx(metrics[1]["l0"], rel=0.05)
    log = {n: lake.read("sae_training_log", run_id=runs[n]["run_id"][0]).sort("step")
           for n, lake in lakes.items()}
    assert log[1]["step"].to_list() == log[2]["step"].to_list()
    np.testing.assert_allclose(log[2]["loss"].to_numpy(), log[1]["loss"].to_numpy(), rtol=0.02)
