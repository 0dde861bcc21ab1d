"""Benchmark `analyze` against the seed's loops, on a synthetic lake of the real test-split size.

    python scripts/bench_analyze.py                       # 35,000 galaxies, 2048 SAE + 64 PCA, 46 labels
    python scripts/bench_analyze.py --scale --n 1000000   # sparse codes of 1M galaxies: time, peak memory

The lake holds what the pipeline would: embeddings (train and test), long votes that follow the
Galaxy Zoo decision tree (NULL where a question was not asked, fractions in tenths: ties), sparse
codes of a 2,048-latent SAE with ~k non-zero codes per galaxy and power-law frequencies, and a real
PCA (64 components) fitted on train. `analyze` runs on both models with the default 20
permutations; the seed's loops (scipy.stats.spearmanr per feature-label pair with its NaN/std/n
checks; one sklearn LinearRegression per feature on median-imputed labels) are timed on a random
sample of pairs and features of the same data in the same run and scaled to the full size (one
pass over the labels; the seed makes a second pass for its "secondary" view, not counted).
The scale run does `analyze` in a child process and reports its peak resident memory.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    # one BLAS thread: multi-threaded OpenBLAS spin-waits on a busy machine (10x slower lstsq)
    os.environ.setdefault(_var, "1")

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from galsae_lake import gz  # noqa: E402
from galsae_lake.lake import Lake, vector_array  # noqa: E402

GROUP_SIZES = [64, 64, 128, 256, 512, 1024]


def sparse_codes(rng, n: int, F: int, k: int):
    """~k distinct features per galaxy, power-law frequencies; (row, feature, activation)."""
    p = 1.0 / np.arange(1, F + 1) ** 0.8
    p /= p.sum()
    draw = rng.choice(F, size=(n, int(k * 1.05)), p=p).astype(np.int32)
    draw.sort(axis=1)
    keep = np.ones(draw.shape, bool)
    keep[:, 1:] = draw[:, 1:] != draw[:, :-1]
    rows = np.nonzero(keep)[0].astype(np.int64)
    features = draw[keep]
    values = rng.exponential(size=len(features)).astype(np.float32)
    return rows, features, values


def vote_fractions(rng, n: int) -> np.ndarray:
    """[n x 46] fractions in tenths, NaN where the question was not asked (decision tree)."""
    out = np.full((n, len(gz.LABEL_NAMES)), np.nan)
    column = {name: j for j, name in enumerate(gz.LABEL_NAMES)}
    for question, answers in gz.QUESTIONS.items():
        parent = gz.DEPENDENCIES[question]
        asked = np.ones(n, bool) if parent is None else np.nan_to_num(out[:, column[parent]]) >= 0.3
        p = rng.dirichlet(np.ones(len(answers)), size=int(asked.sum()))
        counts = rng.multinomial(10, p)
        cols = [column[f"{question}_{a}"] for a in answers]
        out[np.ix_(np.flatnonzero(asked), cols)] = counts / 10.0
    return out


def votes_table(ids: np.ndarray, fractions: np.ndarray) -> pa.Table:
    n, L = fractions.shape
    questions = [gz.question_of(name) for name in gz.LABEL_NAMES]
    answers = [name.rsplit("_", 1)[1] for name in gz.LABEL_NAMES]
    flat = fractions.reshape(-1)
    missing = np.isnan(flat)
    return pa.table({
        "id_str": pa.array(np.repeat(ids, L), pa.string()),
        "question": pa.array(np.tile(questions, n)),
        "answer": pa.array(np.tile(answers, n)),
        "label": pa.array(np.tile(gz.LABEL_NAMES, n)),
        "count": pa.array(np.where(missing, 0, np.nan_to_num(flat) * 10).astype(np.int32)),
        "total": pa.array(np.where(missing, 0, 10).astype(np.int32)),
        "fraction": pa.array(flat, mask=missing),
    })


def build(root: Path, n: int, n_train: int, F: int, k: int, dim: int, seed: int = 0,
          chunk: int = 100_000) -> dict:
    """Write the synthetic lake; returns what is needed to run the seed's loops on it."""
    rng = np.random.default_rng(seed)
    lake = Lake(root)
    run_id = "sae-bench-000000"
    keep_dense = n <= 100_000  # the seed's loops need the data in memory; not for the scale run
    test_codes, test_fractions = [], []
    with lake.transaction("bench-fixture", {"n": n, "features": F, "k": k}) as tx:
        for split, size in (("train", n_train), ("test", n)):
            emb_w = tx.writer("embeddings", {"encoder": "bench", "split": split})
            votes_w = tx.writer("votes", {"catalog": "volunteers", "split": split})
            codes_w = tx.writer("sae_activations", {"run_id": run_id, "split": split})
            for start in range(0, size, chunk):
                m = min(chunk, size - start)
                ids = np.array([f"{split}-{i:07d}" for i in range(start, start + m)], dtype=object)
                emb_w.write(pa.table({"id_str": pa.array(ids, pa.string()), "embedding":
                                      vector_array(rng.normal(size=(m, dim)).astype(np.float32))}))
                fractions = vote_fractions(rng, m)
                votes_w.write(votes_table(ids, fractions))
                rows, features, values = sparse_codes(rng, m, F, k)
                codes_w.write(pa.table({"id_str": pa.array(ids[rows], pa.string()),
                                        "feature": features, "activation": values}))
                if split == "test" and keep_dense:
                    test_codes.append((rows + start, features, values))
                    test_fractions.append(fractions)
            for w in (emb_w, votes_w, codes_w):
                w.close()
        tx.write("sae_runs", pa.table({
            "run_id": [run_id], "encoder": ["bench"],
            "config": [json.dumps({"input_dim": dim, "group_sizes": GROUP_SIZES[: _groups(F)],
                                   "top_k": k})],
            "checkpoint": [""], "metrics": ["{}"],
            "created_at": pa.array([0], pa.timestamp("us", tz="UTC"))}))
    out = {"run_id": run_id}
    if keep_dense:
        rows, features, values = (np.concatenate(a) for a in zip(*test_codes))
        out.update(codes=(rows, features, values), labels=np.concatenate(test_fractions))
    return out


def _groups(F: int) -> int:
    sizes = np.cumsum(GROUP_SIZES)
    if F not in sizes:
        raise SystemExit(f"--features must be one of {', '.join(map(str, sizes))}")
    return int(np.flatnonzero(sizes == F)[0]) + 1


def seed_pair_seconds(columns: np.ndarray, labels: np.ndarray, pairs: list[tuple[int, int]]) -> float:
    """Mean seconds of the seed's per-pair body (make_figures.compute_max_correlations)."""
    from scipy.stats import spearmanr
    started = time.perf_counter()
    for f, j in pairs:
        feature_vals = columns[:, f]
        gz_vals = labels[:, j]
        common_mask = ~np.isnan(gz_vals)
        if np.sum(common_mask) > 10:
            a, b = feature_vals[common_mask], gz_vals[common_mask]
            if np.std(a) > 0 and np.std(b) > 0:
                corr, _ = spearmanr(a, b)
                _ = 0 if np.isnan(corr) else abs(corr)
    return (time.perf_counter() - started) / len(pairs)


def seed_regression_seconds(columns: np.ndarray, labels: np.ndarray) -> float:
    """Mean seconds of the seed's per-feature regression (compute_novelty_via_regression)."""
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LinearRegression
    from sklearn.metrics import r2_score
    X = SimpleImputer(strategy="median").fit_transform(labels)
    started = time.perf_counter()
    for f in range(columns.shape[1]):
        y = columns[:, f]
        reg = LinearRegression().fit(X, y)
        _ = max(0, r2_score(y, reg.predict(X)))
    return (time.perf_counter() - started) / columns.shape[1]


def _folder_bytes(folder: Path) -> int:
    total = 0
    for path in folder.rglob("*"):
        try:
            total += path.stat().st_size if path.is_file() else 0
        except OSError:  # removed while we looked
            pass
    return total


def run_scale(args) -> None:
    import threading
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        root = Path(args.lake) if args.lake else Path(tmp) / "lake"
        spill = Path(tmp) / "spill"
        spill.mkdir()
        t = time.perf_counter()
        if not Lake(root).exists("sae_runs"):
            build(root, args.n, 1000, args.features, args.k, dim=8)
            print(f"built lake: {args.n:,} galaxies, ~{args.n * args.k:,} codes "
                  f"in {time.perf_counter() - t:.0f} s")
        else:
            print(f"lake {root} reused (built by an earlier --scale --lake run; its own --n)")
        trees = [Path(__file__).resolve().parents[1], *map(Path, args.compare_tree)]
        for engine, tree in [(e, t) for e in args.engines for t in trees]:
            code = ("import json,resource,sys,time;from galsae_lake.analysis import analyze;"
                    "from galsae_lake.lake import Lake;"
                    f"r=analyze(Lake({str(root)!r}),'sae-bench-000000',"
                    f"permutations={args.permutations},threads={args.threads},engine={engine!r},"
                    f"memory_limit={args.memory_limit!r},temp_directory={str(spill)!r});"
                    "print(json.dumps({'seconds':r['seconds'],'timings':r['timings'],"
                    "'duckdb':r['duckdb'],"
                    "'peak_gb':resource.getrusage(resource.RUSAGE_SELF).ru_maxrss/2**20}))")
            # one BLAS thread, as for the real-size run: on the busy machine a 2-thread OpenBLAS
            # took 0.9-3.5 s for an [18 x 1M] @ [1M x 63] product that takes 0.05 s on one
            env = dict(os.environ, PYTHONPATH=str(tree),
                       OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")
            peak_spill = [0]
            done = threading.Event()

            def watch() -> None:  # the spill folder's largest size while analyze runs
                while not done.wait(0.5):
                    peak_spill[0] = max(peak_spill[0], _folder_bytes(spill))

            watcher = threading.Thread(target=watch)
            watcher.start()
            try:
                out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                                     text=True)
            finally:
                done.set()
                watcher.join()
            if out.returncode:
                raise SystemExit(out.stderr)
            result = json.loads(out.stdout.strip().splitlines()[-1])
            duck = result["duckdb"]
            phases = ", ".join(f"{k} {v:.1f}" for k, v in result["timings"].items())
            print(f"[{tree}] analyze --engine {engine} (SAE, {args.features} features, "
                  f"{args.permutations} permutations): {result['seconds']:.1f} s ({phases}), peak "
                  f"RSS {result['peak_gb']:.2f} GB; duckdb {duck['threads']} threads, memory_limit "
                  f"{duck['memory_limit']}, spill folder {duck['temp_directory']} peaked at "
                  f"{peak_spill[0] / 2**30:.2f} GB")


def run_real(args) -> None:
    from galsae_lake.analysis import analyze
    from galsae_lake.pca import fit_pca
    rng = np.random.default_rng(1)
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        root = Path(tmp) / "lake"
        t = time.perf_counter()
        data = build(root, args.n, args.n_train, args.features, args.k, args.dim)
        lake = Lake(root)
        pca_id = fit_pca(lake, "bench", n_components=args.components)
        print(f"built lake: {args.n:,} test galaxies, {args.features} SAE features "
              f"(~{args.k} per galaxy), PCA {args.components} in {time.perf_counter() - t:.0f} s")
        models = (("sae", data["run_id"]), ("pca", pca_id))
        # ours: median of --repeat runs per engine and model, without the null (the seed's
        # outputs) and with it (our extra); runs interleaved so that a busy spell hits all alike
        keys = [(e, name, p) for e in args.engines for p in (0, args.permutations)
                for name, _ in models]
        walls = {key: [] for key in keys}
        cpus = {key: [] for key in keys}
        phases = {}
        for _ in range(args.repeat):
            for engine, name, p in keys:
                t, c = time.perf_counter(), time.process_time()
                r = analyze(lake, dict(models)[name], permutations=p, threads=args.threads,
                            engine=engine, memory_limit=args.memory_limit)
                walls[engine, name, p].append(time.perf_counter() - t)
                cpus[engine, name, p].append(time.process_time() - c)
                phases[engine, name, p] = r
        ours, ours_cpu = {}, {}
        for engine, name, p in keys:
            r, w = phases[engine, name, p], walls[engine, name, p]
            detail = ", ".join(f"{k} {v:.2f}" for k, v in r["timings"].items())
            print(f"analyze --engine {engine} {name}, {p:2d} permutations: median {np.median(w):.2f} s "
                  f"wall ({np.median(cpus[engine, name, p]):.2f} s CPU) over {args.repeat} runs "
                  f"[{', '.join(f'{x:.2f}' for x in w)}] ({r['features']} features x "
                  f"{r['labels']} labels, {r['rows']:,} galaxies; last run: {detail})")
        for engine in args.engines:
            for p in (0, args.permutations):
                ours[engine, p] = sum(np.median(walls[engine, name, p]) for name, _ in models)
                ours_cpu[engine, p] = sum(np.median(cpus[engine, name, p]) for name, _ in models)

        # the seed's loops on samples of the same data
        rows, features, values = data["codes"]
        labels = data["labels"]
        L = labels.shape[1]
        sae_sample = rng.choice(args.features, size=args.sample_features, replace=False)
        sae_cols = np.zeros((args.n, len(sae_sample)), np.float32)
        for i, f in enumerate(sae_sample):
            hit = features == f
            sae_cols[rows[hit], i] = values[hit]
        scores = lake.read("pca_scores", pca_id=pca_id, split="test").sort("id_str", "component")
        pca_cols = scores["score"].to_numpy().reshape(args.n, args.components)
        columns = np.hstack([sae_cols, pca_cols[:, :8]])
        # pairs drawn in proportion: 2,048 SAE features for 64 PCA components
        n_sae = len(sae_sample)
        share = args.features / (args.features + args.components)
        pairs = [(int(rng.integers(n_sae)) if rng.random() < share
                  else n_sae + int(rng.integers(columns.shape[1] - n_sae)), int(rng.integers(L)))
                 for _ in range(args.sample_pairs)]
        t, c = time.perf_counter(), time.process_time()
        per_pair = seed_pair_seconds(columns, labels, pairs)
        per_fit = seed_regression_seconds(columns[:, : args.sample_regressions], labels)
        seed_seconds = time.perf_counter() - t
        seed_cpu_share = (time.process_time() - c) / seed_seconds  # CPU per wall second (1 BLAS thread)
        n_features = args.features + args.components
        L2 = L - len(gz.QUESTIONS[gz.PRIMARY_QUESTION])
        primary = per_pair * n_features * L
        # make_figures' secondary figures call compute_max_correlations again with
        # exclude_smooth_featured=True (own cache file): every pair again, smooth-or-featured skipped
        secondary = per_pair * n_features * L2
        regressions = per_fit * n_features
        seed_same = primary + secondary + regressions
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
        print(f"seed, per pair (spearmanr with its NaN/std/n checks): {per_pair * 1e3:.3f} ms "
              f"(mean of {len(pairs):,} pairs); per LinearRegression: {per_fit * 1e3:.1f} ms "
              f"(mean of {args.sample_regressions}); sampling took {seed_seconds:.0f} s")
        print(f"seed, scaled: primary view {n_features:,} x {L} pairs = {primary:.0f} s; "
              f"secondary view {n_features:,} x {L2} pairs = {secondary:.0f} s; "
              f"novelty {n_features:,} regressions = {regressions:.0f} s; total {seed_same:.0f} s")
        for engine in args.engines:
            base = ours[engine, 0]
            print(f"ours ({engine}), sum of the two models' medians: {base:.2f} s without the null, "
                  f"{ours[engine, args.permutations]:.2f} s with {args.permutations} permutations")
            print(f"speed-up ({engine}), same outputs as the seed (primary + secondary + novelty; "
                  f"ours with 0 permutations): {seed_same / base:.0f}x; without the seed's "
                  f"secondary pass: {(primary + regressions) / base:.0f}x; ours with the "
                  f"{args.permutations}-permutation null (work the seed does not do): "
                  f"{seed_same / ours[engine, args.permutations]:.0f}x")
            print(f"CPU time instead of wall clock ({engine}; the machine is shared): seed "
                  f"{seed_same * seed_cpu_share:.0f} s (its sample ran at {seed_cpu_share:.2f} CPU s "
                  f"per wall s), ours {ours_cpu[engine, 0]:.2f} s of this process without the null "
                  f"(DuckDB's worker threads included): "
                  f"{seed_same * seed_cpu_share / ours_cpu[engine, 0]:.0f}x")
        print(f"peak RSS of the benchmark process {peak:.2f} GB")
        # the seed's make_figures keeps only SAE features firing on > 1% of galaxies
        frequent = int((np.bincount(features, minlength=args.features) / args.n > 0.01).sum())
        seed_frequent = (per_pair * (L + L2) + per_fit) * (frequent + args.components)
        print(f"note: the seed's get_top_sae_features keeps features with frequency > 1%: "
              f"{frequent:,} of {args.features:,} here; the seed's loops on those alone: "
              f"{seed_frequent:.0f} s")
        print(f"load average during the run: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=35_000, help="test-split galaxies")
    parser.add_argument("--n-train", type=int, default=35_000, help="train-split galaxies (PCA fit)")
    parser.add_argument("--features", type=int, default=2048)
    parser.add_argument("--components", type=int, default=64)
    parser.add_argument("--k", type=int, default=64, help="non-zero codes per galaxy")
    parser.add_argument("--dim", type=int, default=640, help="embedding dimension")
    parser.add_argument("--permutations", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=5, help="runs of analyze per model")
    parser.add_argument("--sample-pairs", type=int, default=3000)
    parser.add_argument("--sample-features", type=int, default=128)
    parser.add_argument("--sample-regressions", type=int, default=60)
    parser.add_argument("--engines", default="duckdb,numpy",
                        type=lambda text: [e for e in text.split(",") if e],
                        help="comma-separated engines to time (duckdb, numpy)")
    parser.add_argument("--memory-limit", default="4GB", help="DuckDB's memory limit")
    parser.add_argument("--scale", action="store_true", help="1M-galaxy memory run (SAE only)")
    parser.add_argument("--tmp", default=None, help="folder for the temporary lake")
    parser.add_argument("--lake", default=None,
                        help="--scale: build the lake here once and reuse it in later runs")
    parser.add_argument("--compare-tree", action="append", default=[], metavar="PATH",
                        help="--scale: also run analyze with the galsae_lake of this checkout "
                             "(e.g. a git worktree of an older commit), same lake, same run")
    args = parser.parse_args()
    (run_scale if args.scale else run_real)(args)


if __name__ == "__main__":
    main()
