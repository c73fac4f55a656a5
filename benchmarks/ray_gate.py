"""The same gate, local vs on a Ray cluster: wall time per stage, Ray's fixed overheads,
where Ray starts to pay, and per-token throughput of MiniLM-L6 and SmolLM2-135M.

Four parts, each measured in a fresh Python process (so no run inherits another's imported
torch, loaded weights or warm Ray workers):

* **overheads** on a fresh local Ray cluster (``ray.init(num_cpus=2)``) or the cluster at
  ``--ray-address``: cluster start (or connect), the worker probe the CLI runs on connect,
  the ``info()`` task (a worker opens the model once), a second ``info()`` task, an actor
  pool of ``replicas`` model replicas embedding 2 texts (twice: each gate side starts its
  own pool), the threads torch gets inside a 1-CPU replica; beside them the local path's
  fixed cost (open the model, embed 2 texts);
* **sweep**: the gate of ``examples/gate/minilm-cls.yaml`` (MiniLM-L6 mean pooling -> the
  same weights with CLS pooling: both sides run the full MiniLM-L6 forward pass) on N
  texts, caching off so every run really embeds, local and then on Ray (``replicas`` 2 x
  1 CPU); for each N the gate report's ``timings`` per stage, and a linear fit
  ``wall = fixed + per_text * N`` per engine;
* **throughput**: real (non-padding) tokens per second of the local embedder, counted with
  its own tokenizer at its own truncation: MiniLM-L6 with 2 and with 1 torch thread, and
  SmolLM2-135M (``smollm2``, last-token pooling) with 2 threads;
* the tables, printed as markdown, and everything as JSON (``--json``).

N up to 2,000 comes from ``examples/data/civil_comments_sample.csv``; larger N from that
file pooled with ``../shared/data/civil_comments/{autolabel_civil_comments_1k,
cody140_civil_comments_4900}.csv`` when present (same columns: text, toxicity), duplicates
dropped. Rows are sampled without class balancing (``balance: false``) so N is exact.

    python benchmarks/ray_gate.py --quick               # ~3 minutes: 250 and 500 texts
    python benchmarks/ray_gate.py                       # 250 .. all pooled texts
    python benchmarks/ray_gate.py --rows 1000 4000 --skip throughput
    python benchmarks/ray_gate.py --ray-address head:6379   # an existing cluster

Cache and output folders live under ``benchmarks/.cache/ray_gate`` (gitignored).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from harness import ROOT, SHARED_DATA, cpu_model, markdown_table

SAMPLE = ROOT / "examples" / "data" / "civil_comments_sample.csv"
BASE_CONFIG = ROOT / "examples" / "gate" / "minilm-cls.yaml"
POOL_EXTRA = [
    SHARED_DATA / "civil_comments" / "autolabel_civil_comments_1k.csv",
    SHARED_DATA / "civil_comments" / "cody140_civil_comments_4900.csv",
]
WORK = ROOT / "benchmarks" / ".cache" / "ray_gate"
STAGES = ("data", "embed_old", "embed_new", "heads", "stress", "bundle", "total")


# -- data ----------------------------------------------------------------------------------
def _rows(path: Path) -> list[tuple[str, str]]:
    csv.field_size_limit(sys.maxsize)
    with path.open(newline="", encoding="utf-8") as fh:
        return [
            (r["text"], r["toxicity"])
            for r in csv.DictReader(fh)
            if (r.get("text") or "").strip() and r.get("toxicity") not in (None, "")
        ]


def pooled_csv() -> tuple[Path, int]:
    """The sample pooled with the shared Civil Comments files that have its columns."""
    out = WORK / "pooled_civil_comments.csv"
    seen: set[str] = set()
    rows: list[tuple[str, str]] = []
    for path in [SAMPLE, *[p for p in POOL_EXTRA if p.is_file()]]:
        for text, tox in _rows(path):
            if text not in seen:
                seen.add(text)
                rows.append((text, tox))
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["text", "toxicity"])
        w.writerows(rows)
    return out, len(rows)


def data_for(n: int, pooled: Path | None) -> Path:
    return SAMPLE if n <= 2000 or pooled is None else pooled


# -- children: one measurement per fresh process ------------------------------------------
def _gate_config(n: int, data: Path, out: Path, engine: str, address: str | None) -> Any:
    from silentwatch.offline.gate.config import load_gate_config

    cfg = load_gate_config(BASE_CONFIG)
    cfg.data.path = data
    cfg.data.max_rows = n
    cfg.data.balance = False
    cfg.embedding.cache_dir = None  # caching off: every run embeds
    cfg.output.dir = out
    cfg.output.overwrite = True
    if engine == "ray":
        cfg.execution = cfg.execution.with_ray_address(address or "local", 2)
    return cfg


def _ray_init(address: str | None) -> float:
    import logging

    import ray

    t = time.perf_counter()
    if address is None:
        ray.init(
            address="local",
            num_cpus=2,
            include_dashboard=False,
            log_to_driver=False,
            logging_level=logging.WARNING,
        )
    else:
        ray.init(address=address, logging_level=logging.WARNING)
    return time.perf_counter() - t


def child_gate(n: int, data: Path, engine: str, address: str | None) -> dict[str, Any]:
    from silentwatch.offline.gate.run import run_gate

    out = WORK / f"gate-{engine}-{n}"
    shutil.rmtree(out, ignore_errors=True)
    cfg = _gate_config(n, data, out, engine, address)
    res: dict[str, Any] = {"engine": engine, "rows": n}
    if engine == "ray":
        import ray

        from silentwatch.offline.execution.cluster import check_workers

        res["cluster_start"] = _ray_init(address)
        t = time.perf_counter()
        check_workers()  # what the CLI's connect runs before the gate
        res["probe"] = time.perf_counter() - t
    t = time.perf_counter()
    report, _ = run_gate(cfg)
    res["run_gate"] = time.perf_counter() - t
    res["timings"] = report.timings_seconds
    res["verdict"] = report.verdict
    res["frozen_auc"] = None if report.frozen_on_new is None else report.frozen_on_new.roc_auc
    res["old_auc"] = report.old_on_old.roc_auc
    res["execution"] = report.execution
    if engine == "ray":
        t = time.perf_counter()
        ray.shutdown()
        res["shutdown"] = time.perf_counter() - t
    import torch

    res["driver_torch_threads"] = torch.get_num_threads()
    return res


def child_overheads(address: str | None, texts: list[str]) -> dict[str, Any]:
    import ray

    from silentwatch.offline.execution import ExecutionSettings, RayEmbedder
    from silentwatch.offline.execution.cluster import check_workers
    from silentwatch.offline.gate.config import EmbeddingSettings

    res: dict[str, Any] = {"cluster_start": _ray_init(address)}
    res["cluster_cpus"] = float(ray.cluster_resources().get("CPU", 0))
    t = time.perf_counter()
    check_workers()
    res["probe"] = time.perf_counter() - t
    settings = EmbeddingSettings(cache_dir=None)
    # batch_size 1: 2 texts make 2 blocks, so the pool really starts 2 replicas
    execution = ExecutionSettings(engine="ray", address=address, replicas=2, batch_size=1)
    for k in (1, 2):
        emb = RayEmbedder("minilm", settings, execution)
        t = time.perf_counter()
        emb.info()
        res[f"info_task_{k}"] = time.perf_counter() - t
    for k in (1, 2):
        t = time.perf_counter()
        emb.embed(texts[:2])
        res[f"pool_2_texts_{k}"] = time.perf_counter() - t

    @ray.remote(num_cpus=1)
    def threads() -> tuple[int, str | None]:
        import torch

        return torch.get_num_threads(), os.environ.get("OMP_NUM_THREADS")

    res["replica_torch_threads"], res["replica_omp_num_threads"] = ray.get(threads.remote())
    t = time.perf_counter()
    ray.shutdown()
    res["shutdown"] = time.perf_counter() - t
    return res


def child_local_fixed(texts: list[str]) -> dict[str, Any]:
    t = time.perf_counter()
    from silentwatch.offline.embedders import open_embedder

    emb = open_embedder("minilm")
    res = {"local_open": time.perf_counter() - t}
    t = time.perf_counter()
    emb.embed(texts[:2])
    res["local_2_texts"] = time.perf_counter() - t
    return res


def child_throughput(spec: str, texts: list[str], threads: int, reps: int) -> dict[str, Any]:
    import torch

    torch.set_num_threads(threads)
    from silentwatch.offline.embedders import open_embedder

    t = time.perf_counter()
    emb = open_embedder(spec)
    load = time.perf_counter() - t
    enc = emb.tokenizer(texts, truncation=True, max_length=emb.max_length, padding=False)
    tokens = int(sum(len(ids) for ids in enc["input_ids"]))
    emb.embed(texts[:8])  # warm-up: first-call allocations
    walls = []
    for _ in range(reps):
        t = time.perf_counter()
        emb.embed(texts)
        walls.append(time.perf_counter() - t)
    best = min(walls)
    params = sum(p.numel() for p in emb.model.parameters())
    emb_params = emb.model.get_input_embeddings().weight.numel()
    cfg = emb.model.config
    return {
        "spec": spec,
        "threads": threads,
        "texts": len(texts),
        "tokens": tokens,
        "tokens_per_text": tokens / len(texts),
        "max_length": emb.max_length,
        "load_s": load,
        "walls": walls,
        "best_s": best,
        "texts_per_s": len(texts) / best,
        "tokens_per_s": tokens / best,
        "params": params,
        "embedding_params": emb_params,
        "layers": cfg.num_hidden_layers,
        "hidden": cfg.hidden_size,
    }


#: OpenMP's default wait policy spins at every barrier; on a VM whose vCPUs are shared with
#: other tenants a spinning thread that is descheduled stalls its partner, and torch with 2
#: threads ran slower than with 1 (see docs/benchmarks.md). PASSIVE sleeps instead.
PASSIVE = {"OMP_WAIT_POLICY": "PASSIVE"}
#: The sweep's engines: the CLI's default local run, the same with PASSIVE, and Ray.
ENGINES: dict[str, tuple[str, dict[str, str]]] = {
    "local": ("local", {}),
    "local-passive": ("local", PASSIVE),
    "ray": ("ray", {}),
}


def _cpu_by_pid() -> dict[int, float]:
    """utime + stime (s) of every process now running, by pid."""
    tick = os.sysconf("SC_CLK_TCK")
    out = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                f = (d / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            out[int(d.name)] = (int(f[11]) + int(f[12])) / tick
    return out


def run_child(
    argv: list[str], timeout: float = 3600, env: dict[str, str] | None = None
) -> dict[str, Any]:
    """This script in a fresh process, its last stdout line parsed as JSON.

    Also measures what else ran meanwhile: ``other_cpu_s``, the CPU seconds used during the
    run by processes outside the child's tree (this machine is shared; 2 cores give
    ``2 x wall`` CPU seconds), and the 1-minute load average at the end. ``other_cpu_s`` is
    a lower bound: a process that starts and exits during the run is not seen.
    """
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "RAY_DEDUP_LOGS": "0", **(env or {})}
    before = _cpu_by_pid()
    t = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, __file__, *argv],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd=ROOT,
        check=False,
    )
    wall = time.perf_counter() - t
    after = _cpu_by_pid()
    # The child's tree has exited by now; what is left, less this process, is other work.
    other = sum(c - before.get(pid, 0.0) for pid, c in after.items() if pid != os.getpid())
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        sys.stderr.write(proc.stderr[-4000:])
        raise RuntimeError(f"child {argv} exited {proc.returncode}")
    res = json.loads(lines[-1])
    res["child_wall_s"] = wall
    res["other_cpu_s"] = max(other, 0.0)
    res["other_cpu_share"] = res["other_cpu_s"] / (wall * (os.cpu_count() or 1))
    res["load1_end"] = os.getloadavg()[0]
    return res


# -- the parent ----------------------------------------------------------------------------
def fit(ns: list[int], walls: list[float]) -> tuple[float, float]:
    """Least squares ``wall = fixed + per_text * n``; (fixed s, per-text s)."""
    if len(ns) < 2:
        return float("nan"), float("nan")
    slope, intercept = np.polyfit(np.asarray(ns, float), np.asarray(walls, float), 1)
    return float(intercept), float(slope)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="250 and 1,000 texts, short throughput")
    p.add_argument("--rows", type=int, nargs="+", help="texts per gate (default 250 .. pool)")
    p.add_argument("--ray-address", help="an existing cluster (default: start a local one)")
    p.add_argument("--skip", nargs="*", default=[], choices=["overheads", "sweep", "throughput"])
    p.add_argument("--json", type=Path, help="write every measurement here")
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--n", type=int, help=argparse.SUPPRESS)
    p.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--engine", help=argparse.SUPPRESS)
    p.add_argument("--spec", help=argparse.SUPPRESS)
    p.add_argument("--threads", type=int, help=argparse.SUPPRESS)
    p.add_argument("--reps", type=int, default=1, help=argparse.SUPPRESS)
    args = p.parse_args()

    if args.child:
        texts = [t for t, _ in _rows(args.data or SAMPLE)]
        if args.child == "gate":
            out = child_gate(args.n, args.data, args.engine, args.ray_address)
        elif args.child == "overheads":
            out = child_overheads(args.ray_address, texts)
        elif args.child == "local_fixed":
            out = child_local_fixed(texts)
        else:
            out = child_throughput(args.spec, texts[: args.n], args.threads, args.reps)
        print(json.dumps(out))
        return 0

    WORK.mkdir(parents=True, exist_ok=True)
    pooled, pool_n = pooled_csv()
    pooled_or_none = pooled if pool_n > 2000 else None
    if args.rows:
        rows = args.rows
    elif args.quick:
        rows = [250, 500]
    else:
        rows = [250, 1000, 2000] + ([4000, pool_n] if pool_n > 4000 else [])
    addr = ["--ray-address", args.ray_address] if args.ray_address else []
    results: dict[str, Any] = {
        "machine": cpu_model(),
        "cores": os.cpu_count(),
        "pool_rows": pool_n,
        "config": str(BASE_CONFIG.relative_to(ROOT)),
        "ray_address": args.ray_address or "local (ray.init(num_cpus=2))",
    }
    import ray
    import torch

    results["versions"] = {"ray": ray.__version__, "torch": torch.__version__}
    print(f"# {results['machine']}, {results['cores']} cores, ray {ray.__version__}, "
          f"torch {torch.__version__}; pool of {pool_n:,} texts", flush=True)  # fmt: skip

    if "overheads" not in args.skip:
        o = run_child(["--child", "overheads", *addr])
        lf = run_child(["--child", "local_fixed"])
        o.update({k: v for k, v in lf.items() if k.startswith("local_")})
        results["overheads"] = o
        print("\n## Fixed overheads (s)\n")
        names = [
            ("cluster start (ray.init)", "cluster_start"),
            ("worker probe (CLI connect)", "probe"),
            ("info task, first (worker opens the model)", "info_task_1"),
            ("info task, second", "info_task_2"),
            ("actor pool of 2, 2 texts, first", "pool_2_texts_1"),
            ("actor pool of 2, 2 texts, second", "pool_2_texts_2"),
            ("ray.shutdown", "shutdown"),
            ("local: import + open MiniLM", "local_open"),
            ("local: embed 2 texts", "local_2_texts"),
        ]
        print(markdown_table(["step", "s"], [(a, f"{o[k]:.2f}") for a, k in names], "lr"))
        print(f"\nother processes used {100 * o['other_cpu_share']:.0f}% of the CPUs meanwhile")
        print(f"\nreplica torch threads {o['replica_torch_threads']} "
              f"(OMP_NUM_THREADS={o['replica_omp_num_threads']})", flush=True)  # fmt: skip

    if "sweep" not in args.skip:
        sweep = []
        for n in rows:
            data = data_for(n, pooled_or_none)
            if n > (2000 if data == SAMPLE else pool_n):
                print(f"skip {n}: only {pool_n} texts", flush=True)
                continue
            for name, (engine, env) in ENGINES.items():
                r = run_child(["--child", "gate", "--n", str(n), "--data", str(data),
                               "--engine", engine, *addr], env=env)  # fmt: skip
                r["data"] = data.name
                r["engine"] = name
                sweep.append(r)
                if args.json:  # partial results survive an interrupted sweep
                    args.json.write_text(json.dumps({**results, "sweep": sweep}, indent=2))
                t = r["timings"]
                print(f"{name:13} {n:6,} texts: gate {t['total']:.1f} s "
                      f"(+{r.get('cluster_start', 0) + r.get('probe', 0):.1f} s start) "
                      f"verdict {r['verdict']}; other processes used "
                      f"{100 * r['other_cpu_share']:.0f}% of the CPUs", flush=True)  # fmt: skip
        results["sweep"] = sweep
        _print_sweep(sweep)

    if "throughput" not in args.skip:
        tp = []
        n_mini, n_smol = (200, 40) if args.quick else (1000, 300)
        reps_mini = 1 if args.quick else 3
        for spec, n, threads, reps, env in (
            ("minilm", n_mini, 2, reps_mini, {}),
            ("minilm", n_mini, 2, reps_mini, PASSIVE),
            ("minilm", n_mini, 1, reps_mini, {}),
            ("smollm2", n_smol, 2, 1, {}),
            ("smollm2", n_smol, 2, 1, PASSIVE),
        ):
            r = run_child(["--child", "throughput", "--spec", spec, "--n", str(n),
                           "--threads", str(threads), "--reps", str(reps),
                           "--data", str(SAMPLE)], env=env)  # fmt: skip
            r["omp"] = "passive" if env else "default"
            tp.append(r)
        results["throughput"] = tp
        print("\n## Throughput (local embedder, real tokens, best of the reps)\n")
        print(
            markdown_table(
                ["model", "threads", "OMP wait", "texts", "tokens", "tok/text", "s", "texts/s",
                 "tok/s", "others' CPU %"],
                [
                    (
                        r["spec"],
                        r["threads"],
                        r["omp"],
                        f"{r['texts']:,}",
                        f"{r['tokens']:,}",
                        f"{r['tokens_per_text']:.1f}",
                        f"{r['best_s']:.2f}",
                        f"{r['texts_per_s']:.1f}",
                        f"{r['tokens_per_s']:,.0f}",
                        f"{100 * r['other_cpu_share']:.0f}",
                    )
                    for r in tp
                ],
                "lrlrrrrrrr",
            )
        )  # fmt: skip
        print("\n" + markdown_table(
            ["model", "params", "embedding params", "layers", "hidden"],
            [(r["spec"], f"{r['params']:,}", f"{r['embedding_params']:,}", r["layers"],
              r["hidden"]) for r in tp if r["threads"] == 2 and r["omp"] == "default"],
            "lrrrr",
        ))  # fmt: skip

    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
        print(f"\nwrote {args.json}")
    return 0


def _print_sweep(sweep: list[dict[str, Any]]) -> None:
    by = {(r["engine"], r["rows"]): r for r in sweep}
    ns = sorted(
        {r["rows"] for r in sweep if ("local", r["rows"]) in by and ("ray", r["rows"]) in by}
    )
    print("\n## Gate wall time, local vs Ray (s; caching off)\n")
    table = []
    for n in ns:
        lo, lp, ra = by[("local", n)], by.get(("local-passive", n)), by[("ray", n)]
        start = ra["cluster_start"] + ra["probe"]
        t_lo, t_ra = lo["timings"]["total"], ra["timings"]["total"]
        t_lp = lp["timings"]["total"] if lp else float("nan")
        table.append(
            (
                f"{n:,}",
                ra["data"],
                f"{t_lo:.1f}",
                f"{t_lp:.1f}",
                f"{t_ra:.1f}",
                f"{t_ra + start:.1f}",
                f"{t_ra / t_lo:.2f}",
                f"{(t_ra + start) / t_lo:.2f}",
                f"{(t_ra + start) / t_lp:.2f}",
                "/".join(r["verdict"] for r in (lo, lp, ra) if r),
                "/".join(f"{100 * r['other_cpu_share']:.0f}" for r in (lo, lp, ra) if r),
                "/".join(f"{r['load1_end']:.1f}" for r in (lo, lp, ra) if r),
            )
        )
    print(
        markdown_table(
            ["rows", "data", "local s", "local PASSIVE s", "ray s", "ray + start s", "ratio",
             "ratio + start", "ratio + start vs PASSIVE", "verdicts", "others' CPU % (at least)",
             "load l/p/r"],
            table,
            "llrrrrrrrlll",
        )
    )  # fmt: skip
    engines = [e for e in ENGINES if any((e, n) in by for n in ns)]
    print("\n## Per stage (s): " + " / ".join(engines) + "\n")
    print(
        markdown_table(
            ["rows", *STAGES],
            [
                (
                    f"{n:,}",
                    *(
                        " / ".join(
                            f"{by[(e, n)]['timings'].get(s, 0):.1f}"
                            for e in engines
                            if (e, n) in by
                        )
                        for s in STAGES
                    ),
                )
                for n in ns
            ],
            "l" + "r" * len(STAGES),
        )
    )
    for engine in engines:
        runs = [by[(engine, n)] for n in ns if (engine, n) in by]
        rows = [r["rows"] for r in runs]
        f0, f1 = fit(rows, [r["timings"]["total"] for r in runs])
        e0, e1 = fit(rows, [r["timings"]["embed_old"] + r["timings"]["embed_new"] for r in runs])
        print(f"\n{engine}: gate = {f0:.1f} s + {1e3 * f1:.2f} ms x rows; "
              f"embedding (both sides) = {e0:.1f} s + {1e3 * e1:.2f} ms x rows "
              f"({2 / e1 if e1 > 0 else float('nan'):.0f} texts/s)")  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
