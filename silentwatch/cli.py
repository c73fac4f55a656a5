"""The one command-line entry point: ``silentwatch <subcommand>``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from silentwatch import __version__

if TYPE_CHECKING:  # the CLI imports the library lazily, per subcommand
    from silentwatch.monitor.bundle import LoadedBundle
    from silentwatch.monitor.bundle.manifest import DetectorCalibration

EXIT_ERROR = 2


class UserError(Exception):
    """Something the user can fix; printed without a traceback, exit code 2."""


def _add_serve(sub: argparse._SubParsersAction) -> None:
    from silentwatch.monitor.config import ServeSettings

    p = sub.add_parser(
        "serve",
        help="serve a classifier bundle over gRPC with Prometheus metrics",
        description="Every option is also an environment variable SILENTWATCH_<OPTION> and a "
        "key of the YAML --config file. Precedence: flags, environment, file, defaults.",
    )
    p.add_argument("--config", type=Path, help="YAML file with any of the keys below")
    for name, field in ServeSettings.model_fields.items():
        flag = "--" + name.replace("_", "-")
        # argparse %-formats help strings: a literal % in a description must be doubled.
        text = (field.description or "").replace("%", "%%")
        p.add_argument(flag, dest=name, default=None, metavar=name.upper(), help=text)
    p.set_defaults(func=_cmd_serve)


def _cmd_serve(args: argparse.Namespace) -> int:
    from silentwatch.monitor.bundle import BundleError
    from silentwatch.monitor.config import ConfigError, ServeSettings, load_settings

    flags = {k: getattr(args, k) for k in ServeSettings.model_fields}
    try:
        settings = load_settings(args.config, **flags)
    except ConfigError as exc:
        raise UserError(str(exc)) from None
    from silentwatch.monitor.telemetry.logs import configure_logging

    configure_logging(settings.log_level, settings.log_format)
    # Only now: gRPC's C core reads GRPC_VERBOSITY (set by configure_logging) when imported.
    from silentwatch.monitor.serving.server import Sidecar

    try:
        text_embedder = None
        if settings.text_mode:
            from silentwatch.monitor.bundle import load_bundle
            from silentwatch.textmode import load_text_embedder

            bundle = load_bundle(settings.bundle)
            if settings.bundle_public_key is not None:
                # Before the embedder loads: a refused bundle must not get a model loaded.
                from silentwatch.monitor.bundle.signature import verify_bundle_signature

                verify_bundle_signature(bundle.path, bundle.sha256, settings.bundle_public_key)
            text_embedder = load_text_embedder(bundle, settings.text_embedder_path)
            sidecar = Sidecar(settings, bundle=bundle, text_embedder=text_embedder).start()
        else:
            sidecar = Sidecar(settings).start()
    except (BundleError, ValueError) as exc:
        # ValueError: detector options the bundle cannot satisfy (named in the message).
        raise UserError(f"cannot serve: {exc}") from None
    except OSError as exc:
        raise UserError(f"cannot bind: {exc}") from None

    def announce() -> None:
        # Machine-readable line for supervisors and tests that start us on port 0; printed
        # once SIGTERM/SIGHUP handlers are in place.
        print(
            json.dumps(
                {"event": "serving", "grpc": sidecar.grpc_target, "metrics": sidecar.metrics_url}
            ),
            flush=True,
        )

    sidecar.wait_for_signal(on_ready=announce)
    return 0


def _add_bundle(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bundle", help="build or inspect classifier bundles")
    bsub = p.add_subparsers(dest="bundle_cmd", required=True)

    t = bsub.add_parser(
        "train",
        help="train a bundle from embeddings + labels, or from labelled texts and an embedder",
        description="Paper A's classifier: StandardScaler + LogisticRegression(C=1, "
        "class_weight='balanced', max_iter=2000) on unit-normalised embeddings.",
    )
    src = t.add_argument_group("input (one of)")
    src.add_argument("--embeddings", type=Path, help=".npy (n, d) matrix; needs --labels")
    src.add_argument(
        "--labels",
        type=Path,
        help=".npy (n,) 0/1 labels, 1 = unsafe; or (n, k), one column per head (--head-names)",
    )
    src.add_argument(
        "--data",
        type=Path,
        help=".npz with arrays 'embeddings' and 'labels', or a CSV/TSV/JSONL/parquet of texts "
        "(needs the offline extra to embed them)",
    )
    txt = t.add_argument_group("text input")
    txt.add_argument("--text-column", default="text")
    txt.add_argument(
        "--label-column",
        default="label",
        help="the label column; a comma-separated list (toxicity,threat,insult) trains one "
        "head per column, the first the default head",
    )
    txt.add_argument(
        "--label-threshold",
        type=float,
        default=0.5,
        help="fractional labels (Civil Comments' rater fractions) count as unsafe at >= this, "
        "in every label column",
    )
    txt.add_argument("--positive-label", help="string label value meaning unsafe, e.g. 'toxic'")
    txt.add_argument(
        "--embedder",
        default="minilm",
        help="'minilm' (packaged all-MiniLM-L6-v2), a local model path or hub id",
    )
    txt.add_argument("--limit", type=int, help="use only the first N rows")
    ident = t.add_argument_group("identity")
    ident.add_argument("--embedder-name", help="name of the model that made --embeddings")
    ident.add_argument("--embedder-version", help="version string callers will send")
    ident.add_argument("--pooling", choices=["mean", "last_token", "cls", "unknown"], default=None)
    ident.add_argument("--classifier-version", help="default: lr-<hash of the weights>")
    ident.add_argument(
        "--head-names",
        help="comma-separated head names, one per label column (default: the column names; "
        "one column: 'default'); names a (n, k) --labels .npy's columns",
    )
    ident.add_argument(
        "--no-normalize",
        action="store_true",
        help="do not put embeddings on the unit sphere (paper A does)",
    )
    fit = t.add_argument_group("fit")
    fit.add_argument(
        "--flag-threshold", type=float, help="flag when P(unsafe) >= this (default 0.5)"
    )
    fit.add_argument("--holdout-fraction", type=float, default=0.2)
    fit.add_argument("--reference-size", type=int, default=2000)
    fit.add_argument("--seed", type=int, default=42)
    det = t.add_argument_group("drift detectors (thresholds calibrated on the held-out rows)")
    det.add_argument(
        "--false-alarm-rate",
        type=float,
        default=0.01,
        help="drift-alarm probability per clean window: the rate at which any drift detector "
        "alarms on a clean window, shared by the drift detectors (default 0.01)",
    )
    det.add_argument(
        "--window-size",
        type=int,
        help="rows per window (default 256, halved until a quarter of the held-out rows fit)",
    )
    det.add_argument(
        "--calibration-windows", type=int, default=1000, help="held-out windows per size"
    )
    det.add_argument(
        "--no-calibration",
        action="store_true",
        help="skip it (the sidecar then calibrates at start-up on a split of the reference)",
    )
    can = t.add_argument_group(
        "canaries (labelled texts and their embeddings: paired canaries, docs/detection.md)"
    )
    can.add_argument(
        "--canaries",
        type=int,
        default=256,
        metavar="N",
        help="with --data texts: keep N held-out rows as canaries, half of each class "
        "(default 256; 0: none)",
    )
    can.add_argument(
        "--canary-file",
        type=Path,
        help="ship these labelled texts as canaries instead (same column options as --data); "
        "embedded with --embedder when the bundle is trained from texts",
    )
    can.add_argument("--canary-limit", type=int, default=256, help="at most this many (256)")
    t.add_argument("--out", type=Path, required=True, help="bundle directory to write")
    t.add_argument("--force", action="store_true", help="replace --out if it exists")
    t.set_defaults(func=_cmd_bundle_train)

    i = bsub.add_parser("inspect", help="print a bundle for a person (verifies it first)")
    i.add_argument("bundle", type=Path)
    i.add_argument("--json", action="store_true", help="print the manifest as JSON")
    i.set_defaults(func=_cmd_bundle_inspect)

    # Ed25519 signatures (docs/security.md): serve --bundle-public-key refuses unsigned bundles.
    k = bsub.add_parser("keygen", help="write a new Ed25519 key pair for signing bundles")
    k.add_argument("--private-key", type=Path, required=True, help="PEM file to write (0600)")
    k.add_argument("--public-key", type=Path, required=True, help="PEM file to write")
    k.set_defaults(func=_cmd_bundle_keygen)
    sg = bsub.add_parser("sign", help="verify a bundle, then write its signature.json")
    sg.add_argument("bundle", type=Path)
    sg.add_argument("--private-key", type=Path, required=True, help="PEM Ed25519 private key")
    sg.set_defaults(func=_cmd_bundle_sign)
    v = bsub.add_parser("verify", help="check a bundle and its signature.json against a key")
    v.add_argument("bundle", type=Path)
    v.add_argument("--public-key", type=Path, required=True, help="PEM Ed25519 public key")
    v.set_defaults(func=_cmd_bundle_verify)


def _split_list(value: str, flag: str) -> list[str]:
    """``a,b,c`` as ``["a", "b", "c"]``; an empty item is a :class:`UserError`."""
    items = [v.strip() for v in value.split(",")]
    if not all(items):
        raise UserError(f"{flag} {value!r} has an empty item; give comma-separated names")
    return items


def _head_names(args: argparse.Namespace, columns: list[str] | None) -> list[str] | None:
    """The heads' names: --head-names, else the label columns when there are several."""
    if args.head_names is not None:
        names = _split_list(args.head_names, "--head-names")
        if columns is not None and len(names) != len(columns):
            raise UserError(
                f"--head-names gives {len(names)} names for {len(columns)} label columns "
                f"({', '.join(columns)}); give one per column"
            )
        return names
    # One column keeps the bundle of old: a single head called "default".
    return columns if columns is not None and len(columns) > 1 else None


def _check_heads(y, names: list[str] | None, from_columns: bool) -> None:
    """Head names and per-head class counts, checked before anything is embedded or fitted."""
    from silentwatch.monitor.training.train import check_head_labels

    try:
        check_head_labels(y, names)
    except ValueError as exc:
        hint = (
            "; rename the heads with --head-names"
            if from_columns and "head name" in str(exc) and "invalid" in str(exc)
            else ""
        )
        raise UserError(f"{exc}{hint}") from None


def _load_xy(args: argparse.Namespace):
    """Embeddings, labels ((n,) or (n, k)), the embedder, the texts and the head names."""
    import numpy as np

    if args.embeddings is not None:
        if args.labels is None:
            raise UserError("--embeddings needs --labels")
        y = np.load(args.labels, allow_pickle=False)
        names = _head_names(args, None)
        _check_heads(y, names, from_columns=False)
        return np.load(args.embeddings, allow_pickle=False), y, None, None, names
    if args.data is None:
        raise UserError("give --embeddings and --labels, or --data")
    if args.data.suffix == ".npz":
        with np.load(args.data, allow_pickle=False) as z:
            missing = {"embeddings", "labels"} - set(z.files)
            if missing:
                raise UserError(f"{args.data} lacks arrays {sorted(missing)} (it has {z.files})")
            names = _head_names(args, None)
            _check_heads(z["labels"], names, from_columns=False)
            return z["embeddings"], z["labels"], None, None, names
    from silentwatch.monitor.training.datasets import load_labelled_texts

    columns = _split_list(args.label_column, "--label-column")
    names = _head_names(args, columns)
    table = load_labelled_texts(
        args.data,
        text_column=args.text_column,
        label_column=columns if len(columns) > 1 else columns[0],
        label_threshold=args.label_threshold,
        positive_label=args.positive_label,
        limit=args.limit,
    )
    # Before the embedder loads: embedding thousands of texts to then refuse a head wastes
    # minutes.
    _check_heads(table.labels, names, from_columns=args.head_names is None)
    try:
        from silentwatch.offline.embedders import load_embedder
    except ImportError as exc:
        raise UserError(
            f"embedding texts needs the offline extra ({exc}); pip install 'silentwatch[offline]', "
            "or pass precomputed --embeddings"
        ) from None
    emb = load_embedder(args.embedder)
    print(f"embedding {len(table.texts):,} texts with {emb.name} ({emb.pooling} pooling) ...")
    return emb.embed(table.texts), table.labels, emb, list(table.texts), names


def _cmd_bundle_train(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from silentwatch.monitor.bundle import BundleError, EmbedderSpec, Thresholds, load_bundle
    from silentwatch.monitor.bundle.manifest import DetectorSettings
    from silentwatch.monitor.training import train_bundle

    try:
        detectors: DetectorSettings | str | None = None
        if args.no_calibration:
            detectors = None
        elif (args.window_size, args.false_alarm_rate, args.calibration_windows) == (
            None,
            0.01,
            1000,
        ):
            detectors = "auto"
        else:
            detectors = DetectorSettings(
                false_alarm_rate=args.false_alarm_rate,
                window_size=args.window_size or 256,
                calibration_windows=args.calibration_windows,
                seed=args.seed,
            )
    except ValidationError as exc:
        raise UserError(
            "invalid detector options: "
            + "; ".join(f"{e['loc'][0]}: {e['msg']}" for e in exc.errors())
        ) from None
    try:
        if args.canaries < 0:
            raise UserError("--canaries must be 0 (none) or a positive count")
        x, y, emb, texts, head_names = _load_xy(args)
        if emb is not None:
            spec = emb.spec(args.embedder_version)
        else:
            if not args.embedder_name or not args.embedder_version:
                raise UserError(
                    "precomputed embeddings need --embedder-name and --embedder-version "
                    "(the version callers will send; the sidecar refuses others)"
                )
            spec = EmbedderSpec(
                name=args.embedder_name,
                version=args.embedder_version,
                pooling=args.pooling or "unknown",
                normalized=not args.no_normalize,
            )
        canaries = None
        if args.canary_file is not None:
            from silentwatch.monitor.training.datasets import load_labelled_texts

            columns = _split_list(args.label_column, "--label-column")
            ct = load_labelled_texts(
                args.canary_file,
                text_column=args.text_column,
                label_column=columns if len(columns) > 1 else columns[0],
                label_threshold=args.label_threshold,
                positive_label=args.positive_label,
                limit=args.canary_limit,
            )
            # Embedded by the bundle's embedder when there is one: paired canaries need
            # the reference embeddings; without them text mode still re-scores the texts.
            canaries = (
                (list(ct.texts), ct.labels)
                if emb is None
                else (list(ct.texts), ct.labels, emb.embed(list(ct.texts)))
            )
        res = train_bundle(
            x,
            y,
            args.out,
            head_names=head_names,
            canaries=canaries,
            texts=texts,
            canary_count=args.canaries,
            embedder=spec,
            classifier_version=args.classifier_version,
            thresholds=Thresholds()
            if args.flag_threshold is None
            else Thresholds(flag=args.flag_threshold),
            holdout_fraction=args.holdout_fraction,
            reference_size=args.reference_size,
            seed=args.seed,
            detectors=detectors,
            overwrite=args.force,
        )
    except (BundleError, ValueError, OSError) as exc:
        raise UserError(str(exc)) from None
    metrics = ", ".join(
        f"{k} {v:.0f}" if k == "positives" else f"{k} {v:.3f}"
        for k, v in res.holdout_metrics.items()
    )
    print(f"wrote bundle {res.classifier_version} to {res.path} (held-out: {metrics})")
    if len(res.head_metrics) > 1:
        for name, hm in res.head_metrics.items():
            auc = f"roc_auc {hm['roc_auc']:.3f}" if "roc_auc" in hm else "no roc_auc (one class)"
            pos = f", {hm['positives']:.0f} positives" if "positives" in hm else ""
            print(f"  head {name}: held-out {auc}{pos}")
    cal = load_bundle(res.path).manifest.detectors
    if cal is not None:
        print(
            f"drift thresholds calibrated on {cal.holdout_rows:,} held-out rows at "
            f"{cal.settings.false_alarm_rate:g} false alarms (any drift detector) per window "
            f"of {cal.settings.window_size} rows ({cal.seconds:.1f} s)"
        )
    else:
        print("drift thresholds not calibrated: the sidecar calibrates at start-up")
    can = load_bundle(res.path).canaries
    if can is not None:
        paired = "with" if can.embeddings is not None else "without"
        print(
            f"{len(can.texts)} canaries ({int(can.labels.sum())} unsafe), {paired} reference "
            "embeddings"
        )
        if can.head_labels is not None:
            b = load_bundle(res.path)
            per = ", ".join(
                f"{n} {int(c)}"
                for n, c in zip(b.head_names, can.head_labels.sum(axis=0), strict=True)
            )
            print(f"  unsafe canaries per head: {per}")
    return 0


def family_lines(cal: DetectorCalibration) -> list[str]:
    """``bundle inspect``'s account of how the drift detectors share the false-alarm rate.

    Parameters
    ----------
    cal : DetectorCalibration
        A bundle's calibration.

    Returns
    -------
    list of str
        One or two indented lines.
    """
    fam = cal.family
    alpha = cal.settings.false_alarm_rate
    if fam is None:
        # Written before the family-wise calibration: each detector holds alpha alone.
        return [
            f"  per-detector thresholds: each drift detector at {alpha:g} alone, so the drift "
            "alarm's rate can reach their number times that; rebuild with `silentwatch bundle "
            "train` for family-wise thresholds"
        ]
    size = str(cal.settings.window_size)
    rate = fam.measured_rate[size]
    return [
        f"  family-wise: any of {', '.join(fam.detectors)} alarms on at most {alpha:g} of "
        "clean windows",
        f"  at n={size} each is set at level {fam.levels[size]:.4g} (family rate "
        f"{rate:.4g} on the calibration windows, leave-one-out"
        + ("; too few windows to hold it)" if rate > alpha else ")"),
    ]


def head_lines(bundle: LoadedBundle) -> list[str]:
    """``bundle inspect``'s table of heads: name, share of unsafe rows, held-out ROC-AUC.

    Parameters
    ----------
    bundle : LoadedBundle
        A loaded bundle (a legacy one has one head, "default").

    Returns
    -------
    list of str
        A header line and one indented line per head, the default first.
    """
    lines = [f"heads             {len(bundle.heads)} (default {bundle.heads[0].name})"]
    width = max(len(h.name) for h in bundle.heads)
    for h in bundle.heads:
        t = h.training
        auc = t.holdout_metrics.get("roc_auc")
        pos = t.holdout_metrics.get("positives")
        lines.append(
            f"  {h.name:<{width}}  {t.positive_rate:6.1%} unsafe  held-out roc_auc "
            + ("   n/a" if auc is None else f"{auc:.4f}")
            + ("" if pos is None else f" ({pos:.0f} positives of {t.n_holdout:,})")
            + f"  flag at {h.thresholds.flag:g}"
        )
    return lines


def _cmd_bundle_inspect(args: argparse.Namespace) -> int:
    from silentwatch.monitor.bundle import BundleError, load_bundle

    try:
        b = load_bundle(args.bundle)
    except BundleError as exc:
        raise UserError(str(exc)) from None
    m = b.manifest
    if args.json:
        print(m.to_json())
        return 0
    e = m.embedder
    ref = b.reference
    lines = [
        f"bundle            {b.path}  (verified; manifest sha256 {b.sha256[:16]})",
        f"classifier        {m.classifier_version}  created {m.created_at:%Y-%m-%d %H:%M:%S %Z}",
        f"embedder          {e.name}  version {e.version}  pooling {e.pooling}"
        f"  {'unit-normalised' if e.normalized else 'raw'}",
        f"  weights sha256  {e.weights_sha256 or '(not recorded)'}",
        f"  also accepts    {', '.join(e.accepted_versions) or '(no other versions)'}",
        f"dimension         {m.embedding_dim}",
        f"thresholds        flag at P(unsafe) >= {m.thresholds.flag}; "
        f"high confidence > {m.thresholds.high_confidence}",
        f"training          {m.training.n_train:,} rows, {m.training.n_holdout:,} held out, "
        f"{m.training.positive_rate:.1%} unsafe, seed {m.training.seed}",
        f"  estimator       {m.training.estimator}",
    ]
    for k, v in m.training.holdout_metrics.items():
        lines.append(
            f"  held-out {k:<8} {v:.0f}" if k == "positives" else f"  held-out {k:<8} {v:.4f}"
        )
    lines += head_lines(b)
    lines.append(
        f"reference         {ref.embeddings.shape[0]:,} embeddings, mean score "
        f"{float(ref.scores.mean()):.3f}"
        + (f", {len(ref.extra)} further arrays (mean, detector state)" if ref.extra else "")
    )
    cal = m.detectors
    if cal is None:
        lines.append("drift detectors   not calibrated (the sidecar calibrates at start-up)")
    else:
        st = cal.settings
        lines.append(
            f"drift detectors   calibrated on {cal.holdout_rows:,} held-out rows: "
            f"{st.false_alarm_rate:g} false alarms per window, window {st.window_size}, "
            f"{st.calibration_windows} windows per size"
        )
        lines += family_lines(cal)
        size = str(st.window_size)
        for name, table in cal.thresholds.items():
            lines.append(f"  {name:<19} threshold {table[size]:.6g} at n={size}")
    for name, digest in m.files.items():
        lines.append(f"file              {name}  sha256 {digest}")
    print("\n".join(lines))
    return 0


def _cmd_bundle_keygen(args: argparse.Namespace) -> int:
    from silentwatch.monitor.bundle import BundleError
    from silentwatch.monitor.bundle.signature import generate_keypair

    try:
        fingerprint = generate_keypair(args.private_key, args.public_key)
    except BundleError as exc:
        raise UserError(str(exc)) from None
    print(
        f"wrote Ed25519 key {fingerprint}: private {args.private_key} (keep it off the "
        f"serving hosts), public {args.public_key} (serve --bundle-public-key)"
    )
    return 0


def _cmd_bundle_sign(args: argparse.Namespace) -> int:
    from silentwatch.monitor.bundle import BundleError
    from silentwatch.monitor.bundle.signature import sign_bundle

    try:
        path = sign_bundle(args.bundle, args.private_key)
    except BundleError as exc:
        raise UserError(str(exc)) from None
    print(f"signed bundle {args.bundle}: wrote {path}")
    return 0


def _cmd_bundle_verify(args: argparse.Namespace) -> int:
    from silentwatch.monitor.bundle import BundleError, load_bundle
    from silentwatch.monitor.bundle.signature import verify_bundle_signature

    try:
        b = load_bundle(args.bundle)
        fingerprint = verify_bundle_signature(b.path, b.sha256, args.public_key)
    except BundleError as exc:
        raise UserError(str(exc)) from None
    print(f"bundle {b.path} verified: manifest sha256 {b.sha256[:16]}, signed by key {fingerprint}")
    return 0


def _add_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="build a bundle, start the sidecar, replay clean traffic, a benign traffic shift "
        "and an embedder update",
        description="Trains a bundle (with canaries) on a synthetic 384-d world or --data, serves "
        "it on loopback and replays three phases through gRPC: clean, a benign shift (input "
        "drift, no page) and an embedder update (a silent failure, paged by the paired canaries "
        "submitted at its deploy). Prints what /metrics showed beside the ground truth.",
    )
    p.add_argument("--out", type=Path, help="working directory (default: a temp dir)")
    p.add_argument(
        "--data",
        type=Path,
        help="a labelled CSV/JSONL/parquet: use real all-MiniLM-L6-v2 embeddings of it",
    )
    p.add_argument("--text-column", default="text")
    p.add_argument("--label-column", default="label")
    p.add_argument("--label-threshold", type=float, default=0.5)
    p.add_argument(
        "--requests",
        type=int,
        default=12000,
        help="embeddings to replay in all, a third per phase",
    )
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument(
        "--label-fraction",
        type=float,
        default=0.3,
        help="share of requests that get a delayed human label",
    )
    p.add_argument(
        "--drift",
        type=float,
        default=0.02,
        help="paper A Gaussian drift s (per-dimension convention) of the embedder update",
    )
    p.add_argument("--seed", type=int, default=42)
    p.add_argument(
        "--rate",
        type=float,
        default=0.0,
        help="replay at most this many embeddings per second (0: as fast as possible); "
        "a slow replay lets a scraping Prometheus see each phase in turn",
    )
    p.add_argument(
        "--keep-serving",
        action="store_true",
        help="leave the sidecar up afterwards (ports 50051 / 9464 unless given)",
    )
    p.add_argument("--port", type=int)
    p.add_argument("--metrics-port", type=int)
    p.set_defaults(func=_cmd_demo)


def _cmd_demo(args: argparse.Namespace) -> int:
    from silentwatch.demo.run import run_demo

    if args.rate < 0:
        raise UserError(f"--rate must be >= 0 (got {args.rate:g}); 0 replays unthrottled")
    default_port = (50051, 9464) if args.keep_serving else (0, 0)
    try:
        run_demo(
            out_dir=args.out,
            data=args.data,
            requests=args.requests,
            batch_size=args.batch_size,
            label_fraction=args.label_fraction,
            drift=args.drift,
            seed=args.seed,
            rate=args.rate,
            port=default_port[0] if args.port is None else args.port,
            metrics_port=default_port[1] if args.metrics_port is None else args.metrics_port,
            keep_serving=args.keep_serving,
            **(
                {
                    "text_column": args.text_column,
                    "label_column": args.label_column,
                    "label_threshold": args.label_threshold,
                }
                if args.data
                else {}
            ),
        )
    except KeyboardInterrupt:
        print("\ninterrupted; sidecar stopped", file=sys.stderr)
        return 130
    except (ValueError, OSError) as exc:
        raise UserError(str(exc)) from None
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="silentwatch",
        description="Keep embedding-based safety classifiers honest.",
    )
    p.add_argument("--version", action="version", version=f"silentwatch {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    _add_serve(sub)
    _add_bundle(sub)
    _add_demo(sub)
    from silentwatch.offline_cli import add_offline_commands

    add_offline_commands(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except UserError as exc:
        print(f"silentwatch: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
