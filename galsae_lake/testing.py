"""Helpers for tests and benchmark scripts: hashing a lake, running the CLI, small analyzed lakes.

Shipped in the package (as ``hats.testing``) so that ``scripts/`` never import ``tests/``.
Nothing here imports pytest.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Iterator

import numpy as np
import polars as pl
import pyarrow as pa

from galsae_lake import gz
from galsae_lake.lake import Lake, vector_array

# ---------------------------------------------------------------- the lake, the CLI


def lake_hash(root: str | os.PathLike) -> str:
    """A hash of every file (path and bytes) and folder under ``root``; '' when it does not exist."""
    root = Path(root)
    if not root.exists():
        return ""
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        digest.update(str(path.relative_to(root)).encode())
        if path.is_file():
            digest.update(path.read_bytes())
    return digest.hexdigest()


@contextlib.contextmanager
def lake_unchanged(root: str | os.PathLike, what: str = "") -> Iterator[None]:
    """Assert that the block leaves every file and folder under ``root`` as it was."""
    before = lake_hash(root)
    yield
    assert lake_hash(root) == before, f"{what or 'the block'} changed the lake at {root}"


def cli(*args: str, lake: str | os.PathLike | None = None, input: str | None = None):
    """Run the CLI in-process; returns click's Result (exit_code, output)."""
    from click.testing import CliRunner

    from galsae_lake.cli import main

    argv = (["--lake", str(lake)] if lake is not None else []) + [str(a) for a in args]
    return CliRunner().invoke(main, argv, input=input, catch_exceptions=False)


def run_cli(*args: str, lake: str | os.PathLike | None = None, env: dict | None = None,
            timeout: float = 120) -> subprocess.CompletedProcess:
    """Run ``galsae-lake`` in a fresh process (as a user would)."""
    argv = [sys.executable, "-m", "galsae_lake"]
    argv += (["--lake", str(lake)] if lake is not None else []) + [str(a) for a in args]
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


def assert_one_line_error(result, *fragments: str) -> None:
    """A user error: non-zero exit, one line starting with 'Error:' holding every fragment
    (case-insensitive), no traceback."""
    output = getattr(result, "output", None)
    if output is None:
        output = result.stdout + result.stderr
    code = getattr(result, "exit_code", getattr(result, "returncode", None))
    assert code not in (0, None), output
    lines = [line for line in output.strip().splitlines() if line.strip()]
    assert "Traceback" not in output, output
    errors = [line for line in lines if line.startswith("Error:")]
    assert len(errors) == 1, output
    for fragment in fragments:
        assert fragment.lower() in errors[0].lower(), output


def assert_refused(root: str | os.PathLike, args, *fragments: str, lake=None):
    """Run the CLI with ``args``; assert one ``Error:`` line holding ``fragments`` and that the
    lake at ``root`` is unchanged. ``lake`` (default ``root``) is passed as ``--lake``; give
    ``lake=False`` when ``args`` name it themselves. Returns click's Result."""
    with lake_unchanged(root, " ".join(map(str, args))):
        result = cli(*args, lake=root if lake is None else (lake or None))
        assert_one_line_error(result, *fragments)
    return result


# ---------------------------------------------------------------- a small analyzed lake
ENCODER = "synth"
RUN_ID = "sae-synth-a1b2c3"
PCA_ID = "pca-synth-d4e5f6"
OLD_PCA_ID = "pca-synth-000000"


def png(color: tuple[int, int, int], size: int) -> bytes:
    """A coloured round blob as PNG bytes."""
    from PIL import Image

    yy, xx = np.mgrid[:size, :size]
    blob = np.exp(-((xx - size / 2) ** 2 + (yy - size / 2) ** 2) / (2 * (size / 6) ** 2))
    rgb = (blob[..., None] * np.array(color)[None, None, :]).astype(np.uint8)
    out = io.BytesIO()
    Image.fromarray(rgb).save(out, "PNG")
    return out.getvalue()


def group_sizes_for(n_features: int) -> list[int]:
    """Matryoshka groups in the seed's proportions (1, 1, 2, 4, 8, 16) summing to ``n_features``."""
    if n_features % 32:
        raise ValueError("n_features must be a multiple of 32")
    g = n_features // 32
    return [g, g, 2 * g, 4 * g, 8 * g, 16 * g]


def votes_frame(ids: list[str], signal: np.ndarray, rng: np.random.Generator) -> pl.DataFrame:
    """Votes in the contract's long shape for every label, each question's fractions summing
    to one; ``signal`` [galaxies x k] tilts the first k labels' fractions (so rho is not noise)."""
    counts = []
    for question, answers in gz.QUESTIONS.items():
        logits = rng.normal(size=(len(ids), len(answers)))
        for a in range(len(answers)):
            j = gz.LABEL_NAMES.index(f"{question}_{answers[a]}")
            if j < signal.shape[1]:
                logits[:, a] += signal[:, j]
        p = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
        total = rng.integers(5, 40, len(ids))
        count = np.floor(p * total[:, None]).astype(np.int32)
        for a, answer in enumerate(answers):
            counts.append(pl.DataFrame({
                "id_str": ids, "question": question, "answer": answer,
                "label": f"{question}_{answer}", "count": count[:, a],
                "total": total.astype(np.int32), "fraction": count[:, a] / total}))
    return pl.concat(counts)


def build_analyzed_lake(root, n_galaxies: int = 120, n_features: int = 96, n_components: int = 16,
                        top_k: int = 8, image_size: int = 24, steps: int = 50, seed: int = 0,
                        with_pca: bool = True, with_images: bool = True, permutations: int = 5,
                        exclude_question: str = gz.PRIMARY_QUESTION, split: str = "test") -> Lake:
    """A lake with one SAE run (and two PCAs of its encoder) analyzed on ``split`` by the real
    ``analyze`` stage; the model tables are synthetic, in the contract's shapes.

    SAE feature f is active on a galaxy with a propensity falling with f (so frequency ranks are
    known); every galaxy has ``top_k`` active latents; the first labels' votes follow the first
    features. Images are coloured blobs. The newer PCA is ``PCA_ID``.
    """
    from galsae_lake.analysis import analyze

    rng = np.random.default_rng(seed)
    lake = Lake(root)
    ids = [f"g{i:06d}" for i in range(n_galaxies)]
    # sparse codes: top_k latents per galaxy, drawn with propensity ~ 1/(f+8)
    p = 1.0 / (np.arange(n_features) + 8.0)
    p /= p.sum()
    chunks = []
    for start in range(0, n_galaxies, 4096):  # weighted sampling without replacement (Gumbel top-k)
        m = min(4096, n_galaxies - start)
        keys = np.log(p)[None, :] - np.log(-np.log(rng.random((m, n_features))))
        chunks.append(np.argpartition(-keys, top_k - 1, axis=1)[:, :top_k])
    active = np.concatenate(chunks)
    rows = np.repeat(np.arange(n_galaxies), top_k)
    feats = active.reshape(-1)
    acts = rng.exponential(1.0, rows.size).astype(np.float32) + 0.05
    frequency = np.bincount(feats, minlength=n_features) / n_galaxies
    dense = np.zeros((n_galaxies, n_features), np.float32)
    dense[rows, feats] = acts
    sizes = group_sizes_for(n_features)
    edges = np.cumsum(sizes)
    group = np.searchsorted(edges, np.arange(n_features), side="right")
    config = {"input_dim": 4, "group_sizes": sizes, "top_k": top_k, "l1_coeff": 1e-3,
              "aux_penalty": 0.03, "n_batches_to_dead": 256, "aux_k_multiplier": 16,
              "epochs": 2, "learning_rate": 1e-4, "batch_size": 256, "random_seed": 0}
    levels = [{"level": i, "latents": int(c), "fvu": float(0.6 * 0.75 ** i)}
              for i, c in enumerate(edges)]
    metrics = {"split": split, "fvu": levels[-1]["fvu"], "fvu_per_level": levels,
               "explained_variance_seed": 0.8, "l0": float(top_k), "dead_fraction": 0.0,
               "threshold": 0.1, "n_train": 10, "n_test": n_galaxies, "normalization": "train"}
    now = datetime.now(timezone.utc)
    with lake.transaction("test-build", {"seed": seed}) as tx:
        if with_images:
            colors = rng.integers(40, 256, (n_galaxies, 3))
            tx.write("images", pl.DataFrame({
                "id_str": ids, "image": [png(tuple(c), image_size) for c in colors]}),
                partition={"split": split})
        tx.write("embeddings", pa.table({"id_str": ids, "embedding": vector_array(
            rng.normal(size=(n_galaxies, 4)))}), partition={"encoder": ENCODER, "split": split})
        tx.write("votes", votes_frame(ids, 3 * dense[:, :8], rng),
                 partition={"catalog": "volunteers", "split": split})
        tx.write("sae_runs", pl.DataFrame({
            "run_id": [RUN_ID], "encoder": [ENCODER], "config": [json.dumps(config)],
            "checkpoint": [f"models/sae/{RUN_ID}"], "metrics": [json.dumps(metrics)],
            "created_at": [now]}))
        step = np.arange(steps, dtype=np.int64) * 10
        tx.write("sae_training_log", pl.DataFrame({
            "step": step, "epoch": (step // 100).astype(np.int32), "loss": 1.0 / (1 + step / 50),
            "mse": 0.8 / (1 + step / 50), "l1": np.full(steps, 0.01), "aux": np.full(steps, 0.02),
            "l0": np.full(steps, float(top_k)), "dead_fraction": np.linspace(0.2, 0.0, steps),
            "lr": np.linspace(1e-4, 1e-5, steps)}), partition={"run_id": RUN_ID})
        tx.write("sae_activations", pl.DataFrame({
            "id_str": [ids[r] for r in rows], "feature": feats.astype(np.int32), "activation": acts}),
            partition={"run_id": RUN_ID, "split": split})
        tx.write("sae_features", pl.DataFrame({
            "feature": np.arange(n_features, dtype=np.int32), "group": group.astype(np.int32),
            "frequency": frequency, "mean_activation": dense.sum(0) / np.maximum(1, (dense > 0).sum(0)),
            "max_activation": dense.max(0)}), partition={"run_id": RUN_ID})
    models = [RUN_ID]
    if with_pca:
        for age, pid in enumerate((OLD_PCA_ID, PCA_ID)):  # the newer one is paired
            evr = np.sort(rng.dirichlet(np.ones(n_components * 2))[:n_components])[::-1]
            scores = rng.normal(size=(n_galaxies, n_components)).astype(np.float32)
            with lake.transaction("test-pca", {"pid": pid}) as tx:
                tx.write("pca_components", pa.table({
                    "component": np.arange(n_components, dtype=np.int32),
                    "explained_variance_ratio": evr,
                    "loading": vector_array(rng.normal(size=(n_components, 4)))}),
                    partition={"pca_id": pid})
                tx.write("pca_scores", pl.DataFrame({
                    "id_str": np.repeat(ids, n_components),
                    "component": np.tile(np.arange(n_components, dtype=np.int32), n_galaxies),
                    "score": scores.reshape(-1)}), partition={"pca_id": pid, "split": split})
                tx.write("pca_runs", pl.DataFrame({
                    "pca_id": [pid], "encoder": [ENCODER], "n_components": [n_components],
                    "fit_split": [split], "n_fit": [n_galaxies], "input_dim": [4],
                    "explained_variance": [float(evr.sum())],
                    "checkpoint": [f"models/pca/{pid}"],
                    "created_at": [now + timedelta(seconds=age)]}).with_columns(
                    pl.col("n_components", "input_dim").cast(pl.Int32)))
            models.append(pid)
    for model_id in models:
        analyze(lake, model_id, split=split, permutations=permutations,
                exclude_question=exclude_question)
    return lake
