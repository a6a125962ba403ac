"""The ``facebench`` command."""
from __future__ import annotations

import argparse
import json
import math
import signal
import sys
import threading
from pathlib import Path

from facebench.registry import UnknownNameError

EPILOG = "Data root: --root, else $FACEBENCH_DATA, else data/ in the checkout; one folder per dataset under it."


def _json_line(doc: dict) -> str:
    """One line of strict JSON (NaN → null) for the last line of stdout."""
    def clean(v):
        if isinstance(v, float) and not math.isfinite(v):
            return None
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items()}
        if isinstance(v, list):
            return [clean(x) for x in v]
        return v
    return json.dumps(clean(doc), allow_nan=False)


def print_metrics(m: dict) -> None:
    pct = lambda v: "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:.2f}%"  # noqa: E731
    head = f"{m.get('model', '')} on {m.get('dataset', '')}".strip()
    if head != "on":
        print(head)
    print(f"  pairs            {m['n_pairs']} ({m['n_genuine']} genuine, {m['n_impostor']} impostor), "
          f"{len(m['fold_accuracies'])} folds")
    print(f"  accuracy         {pct(m['accuracy_mean'])} ± {pct(m['accuracy_std'])} (k-fold, threshold per fold)")
    if "hard_accuracy" in m:
        print(f"  own answers      {pct(m['hard_accuracy_all'])} of all pairs (unreadable = wrong), "
              f"{pct(m['hard_accuracy'])} of valid ones")
    print(f"  AUC              {m['auc']:.4f}")
    print(f"  EER              {pct(m['eer'])}")
    for key in (k for k in m if k.startswith("tar_at_far_")):
        print(f"  TAR@FAR={key[11:]:<7}  {'not resolved' if key in m.get('tar_unresolved', ()) else pct(m[key])}")
    print(f"  acquire rate     {pct(m['acquire_rate'])}")
    for flag in m["flags"]:
        print(f"  note: {flag}")


def cmd_datasets(args) -> int:
    from facebench.datasets import LOADERS, DatasetError, load_dataset

    for name in LOADERS.names():
        try:
            ds = load_dataset(name, args.root, verify=False)
            status = f"available: {len(ds.pairs)} pairs, {ds.n_folds} folds ({ds.info.get('location')})"
        except (DatasetError, OSError) as exc:
            # One line per dataset; `facebench data check NAME` shows the layouts looked for.
            first = str(exc).splitlines()[0].split("; the accepted layouts")[0]
            status = f"not available: {first} (`facebench data check {name}` lists the files it looks for)"
        print(f"{name:12s} {status}")
    return 0


def cmd_models(args) -> int:
    from facebench.backends.onnx_fr import file_problem
    from facebench.models import PREFIXES, registry_document, resolve

    if getattr(args, "models_command", None) == "fetch":
        return cmd_models_fetch(args)
    doc = registry_document()
    for name, entry in doc["models"].items():
        ok, why = resolve(name).availability()
        print(f"{name:24s} {entry.get('family', ''):18s} {'available' if ok else 'not available: ' + why}")
    for name, entry in (doc.get("detectors") or {}).items():
        why = file_problem(entry["file"], entry["sha256"], entry=entry)
        print(f"{name:24s} {'face detector':18s} {'available' if not why else 'not available: ' + why}")
    if PREFIXES:
        print("also: " + ", ".join(f"{p}:<argument>" for p in PREFIXES))
    return 0


def cmd_models_fetch(args) -> int:
    from facebench.fetch import FetchError, fetch, fetchable

    if bool(args.names) == args.all:
        raise ValueError("name the models to fetch, or give --all (not both)")
    names = args.names or [n for n, e in fetchable().items() if args.accept_license or not e.get("accept_license")]
    if args.all and not args.accept_license:
        skipped = [n for n, e in fetchable().items() if e.get("accept_license")]
        print(f"skipped (their licences need --accept-license): {', '.join(skipped)}")
    failed = []
    for name in names:
        try:
            fetch(name, accept_license=args.accept_license)
        except FetchError as exc:  # the others are still fetched; every failure is reported at the end
            failed.append(str(exc))
    if failed:
        raise FetchError("\n".join(failed))
    return 0


def cmd_data_check(args) -> int:
    from facebench.integrity import check_dataset

    report = check_dataset(args.dataset, args.root, pin=args.pin)
    for key, value in report["facts"].items():
        if isinstance(value, dict):  # per fold, per group: one line each
            print(key)
            for k, v in value.items():
                print(f"  {k!s:10s} {v}")
        else:
            print(f"{key:10s} {value}")
    for w in report["warnings"]:
        print(f"warning: {w}")
    for e in report["errors"]:
        print(f"error: {e}")
    failed = bool(report["errors"]) or (args.strict and bool(report["warnings"]))
    verdict = "FAILED" if failed else "ok"
    print(f"{args.dataset}: {verdict} ({len(report['errors'])} errors, {len(report['warnings'])} warnings)")
    if args.json:
        print(_json_line(report))
    return 1 if failed else 0


def cmd_evaluate(args) -> int:
    from facebench.scoring import evaluate

    settings = _settings(args)
    # `facebench merge` is this command with nothing scored: it folds the run's shard files in.
    merging = args.command == "merge"
    run = evaluate(args.model, args.dataset, root=args.root, limit=args.limit, batch_size=args.batch_size,
                   out=args.out, settings=settings or None, shard=args.shard, score=not merging)
    m = run.metrics()
    print_metrics(m)
    print(f"  results          {run.store.db_path if args.shard else run.store.dir}")
    if args.shard:
        print(f"  shard            {args.shard[0]}/{args.shard[1]}, {len(run.dataset.pairs)} pairs; when every shard "
              "is done, `facebench merge` with the same options folds them into the run")
    if merging:
        print(f"  merged shards    {', '.join(run.manifest.get('sharded', {})) or 'none'} ({run.manifest['status']})")
    if args.json:
        print(_json_line(m))
    return 0


def cmd_import(args) -> int:
    from facebench.importing import import_results

    run = import_results(args.file, model=args.model, dataset=args.dataset, root=args.root, out=args.out,
                         settings=dict(args.set or []) or None)
    m = run.metrics()
    imported = run.manifest["imported"]
    print_metrics(m)
    print(f"  results          {run.store.dir}")
    print(f"  imported         {imported['rows']} rows from {imported['file']} (sha256 {imported['sha256']})")
    if args.json:
        print(_json_line(m))
    return 0


def cmd_reparse(args) -> int:
    from facebench.extraction import load_rule, reparse, reparse_summary
    from facebench.scoring import open_run

    run = open_run(args.model, args.dataset, root=args.root, limit=args.limit, out=args.out,
                   settings=_settings(args) or None)
    if not run.table["stored"].any():
        raise ValueError(f"{run.store.dir}: no stored pairs of {run.model} on {run.dataset.name}; "
                         "`facebench evaluate` with the same options scores them")
    s = reparse_summary(reparse(run, args.rule))
    pct = lambda v: "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:.2f}%"  # noqa: E731
    print(f"{run.model} on {run.dataset.name}: stored answers read under {s['rule']} "
          f"(the run's own: {s['own_rule']}); nothing scored or stored")
    print(f"  rule             {load_rule(s['rule']).summary}")
    print(f"  pairs            {s['n_pairs']}")
    print(f"  own-answer acc.  {pct(s['hard_accuracy'])} of valid answers, {pct(s['hard_accuracy_all'])} of all "
          "pairs (invalid counted wrong)")
    print(f"  acquire rate     {pct(s['acquire_rate'])}")
    print(f"  refusals         {s['n_refusals']} ({pct(s['refusal_rate'])}), apart from other invalid answers")
    print(f"  changed          {s['n_changed']} decisions differ from the stored ones")
    if args.json:
        print(_json_line({"dataset": run.dataset.name, "model": run.model, **s}))
    return 0


def _settings(args) -> dict:
    """The model settings of ``--set`` and ``--both-orders``."""
    return {**dict(args.set or []), **({"both_orders": True} if args.both_orders else {})}


def _stored_run_options(s, root: dict) -> None:
    """The options that name a run as ``facebench evaluate`` made it (``merge``, ``reparse``)."""
    s.add_argument("--model", required=True, help="as given to `facebench evaluate`")
    s.add_argument("--dataset", required=True)
    s.add_argument("--root", **root)
    s.add_argument("--limit", type=int, default=None, help="as given to `facebench evaluate`")
    s.add_argument("--out", default=None, metavar="DIR", help="results folder (default: results/ in the checkout)")
    s.add_argument("--set", action="append", type=_setting, metavar="KEY=VALUE",
                   help="as given to `facebench evaluate`")
    s.add_argument("--both-orders", action="store_true", help="as given to `facebench evaluate`")
    s.add_argument("--json", action="store_true", help="end with the numbers as one JSON line")


def _shard(text: str) -> tuple[int, int]:
    from facebench.scoring import parse_shard

    try:
        return parse_shard(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _setting(text: str) -> tuple[str, object]:
    """``KEY=VALUE`` with VALUE read as YAML, so ``seed=1`` is a number and ``both_orders=true`` a bool."""
    import yaml

    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        parsed = yaml.safe_load(value)
    except yaml.YAMLError as exc:
        raise argparse.ArgumentTypeError(f"{text!r}: the value is not valid YAML ({' '.join(str(exc).split())})")
    if isinstance(parsed, float) and not math.isfinite(parsed):
        raise argparse.ArgumentTypeError(f"{text!r}: a setting must be a finite number, not {value}")
    return key, parsed


def cmd_prompts(args) -> int:
    from facebench.prompts import load_prompt, prompt_names

    for name in prompt_names():
        p = load_prompt(name)
        answers = f"{'/'.join(p.yes)} vs {'/'.join(p.no)}" if p.kind == "yesno" else f"{p.low:g}-{p.high:g}"
        print(f"{p.identity:18s} {p.language:3s} {p.kind:7s} {answers:14s} {p.question}")
    return 0


def cmd_tiny_build(args) -> int:
    from facebench.tiny_models import build

    print(f"wrote {build(args.family, args.folder, seed=args.seed)}")
    return 0


def cmd_metrics(args) -> int:
    import pandas as pd

    from facebench.metrics import verification_report

    path = Path(args.scores)
    table = pd.read_csv(path)
    missing = {"score", "label", "fold"} - set(table.columns)
    if missing:
        raise ValueError(f"{path}: missing column(s) {sorted(missing)}; need score,label,fold (optional group)")
    groups = [(None, table)] + (list(table.groupby("group")) if "group" in table else [])
    results = []
    for group, part in groups:
        m = verification_report(part["score"].to_numpy(float), part["label"].to_numpy(), part["fold"].to_numpy())
        m = {"dataset": path.name, "model": "", **({"group": str(group)} if group is not None else {}), **m}
        print(f"{'all pairs' if group is None else f'group {group}'}:")
        print_metrics(m)
        results.append(m)
    if args.json:
        print(_json_line({**results[0], "groups": results[1:]} if len(results) > 1 else results[0]))
    return 0


def cmd_grid(args) -> int:
    from facebench.grid import run_grid

    for option, value in (("--address", args.address), ("--shards", args.shards)):
        if value is not None and args.executor != "ray":
            raise ValueError(f"{option} {value} needs --executor ray")
    status = run_grid(Path(args.grid).absolute(), force=args.force, executor=args.executor, address=args.address,
                      shards=args.shards, only=args.only, score=args.command == "grid")
    counts: dict[str, int] = {}
    for c in status["cells"]:
        counts[c["status"]] = counts.get(c["status"], 0) + 1
    print(f"{len(status['cells'])} cells: " + ", ".join(f"{n} {s}" for s, n in counts.items()))
    for page, error in status.get("failed_summaries", {}).items():
        print(f"summary {page} failed: {error}", file=sys.stderr)
    # A failed summary leaves the book without its numbers: never a success.
    return 1 if status.get("failed_summaries") or (counts.get("failed") and not args.allow_failures) else 0


def cmd_book(args) -> int:
    from facebench.grid import build_book

    print(f"open {build_book(Path(args.grid).absolute())}")
    return 0


def cmd_demo_build(args) -> int:
    from facebench import demo

    if not args.force and demo.is_built():
        print("demo set is up to date (crops match data_manifests/demo.yaml); --force rebuilds it")
        return 0
    print(f"wrote {demo.build(args.source)}")
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="facebench", description="Face verification benchmark for MLLMs and FR models.",
                                epilog=EPILOG)
    sub = p.add_subparsers(dest="command", required=True)
    root = dict(default=None, metavar="DIR", help="data root (see below)")

    s = sub.add_parser("datasets", help="known datasets and whether they are available", epilog=EPILOG)
    s.add_argument("--root", **root)
    s.set_defaults(func=cmd_datasets)

    s = sub.add_parser("models", help="known models and whether they run here; `models fetch` gets weights")
    s.set_defaults(func=cmd_models)
    f = s.add_subparsers(dest="models_command").add_parser(
        "fetch", help="download models' weights files from the sources in facebench/models.yaml, verify their "
                      "sha256 and put them in the models folder ($FACEBENCH_MODELS, else data/models/)")
    f.add_argument("names", nargs="*", metavar="NAME", help="models (or detectors, e.g. yunet) to fetch")
    f.add_argument("--all", action="store_true",
                   help="every model with sources (those whose licences need --accept-license only with it)")
    f.add_argument("--accept-license", action="store_true",
                   help="accept the licence terms of models that need it (insightface: non-commercial research only)")

    data = sub.add_parser("data", help="dataset tools").add_subparsers(dest="data_command", required=True)
    s = data.add_parser("check", help="check a dataset's layout, pairs, checksums and images", epilog=EPILOG)
    s.add_argument("dataset")
    s.add_argument("--root", **root)
    s.add_argument("--strict", action="store_true", help="fail on warnings too")
    s.add_argument("--json", action="store_true", help="end with the report as one JSON line")
    s.add_argument("--pin", action="store_true",
                   help="if the check passes, record the sha256 of every file the dataset reads in "
                        "<data root>/facebench.lock.json; later checks and evaluate report any file that changed")
    s.set_defaults(func=cmd_data_check)

    s = sub.add_parser("evaluate", help="score a dataset with a model (resumes) and print the metrics", epilog=EPILOG)
    s.add_argument("--model", required=True, help="registry name (see `facebench models`) or backend:argument")
    s.add_argument("--dataset", required=True)
    s.add_argument("--root", **root)
    s.add_argument("--limit", type=int, default=None, help="score N pairs, balanced over folds and labels")
    s.add_argument("--batch-size", type=int, default=16)
    s.add_argument("--out", default=None, metavar="DIR", help="results folder (default: results/ in the checkout)")
    s.add_argument("--set", action="append", type=_setting, metavar="KEY=VALUE",
                   help="override a model setting, e.g. --set prompt=fr-ouinon (a new run, in its own folder)")
    s.add_argument("--both-orders", action="store_true",
                   help="MLLMs: also score each pair as (B, A), for order consistency")
    s.add_argument("--shard", type=_shard, default=None, metavar="K/N",
                   help="score only shard K of N (the pairs with pair_id %% N == K, K from 0) into the run's "
                        "shards/ folder; `facebench merge` folds the shards in")
    s.add_argument("--json", action="store_true", help="end with the metrics as one JSON line")
    s.set_defaults(func=cmd_evaluate)

    s = sub.add_parser("merge", help="fold a run's shard files into its results and print the metrics "
                                     "(scores nothing)", epilog=EPILOG)
    _stored_run_options(s, root)
    s.set_defaults(func=cmd_evaluate, batch_size=16, shard=None)

    s = sub.add_parser("reparse", help="read a run's stored answers again under an extraction rule and print "
                                       "decisions' accuracy, acquire and refusal rates (loads no model, "
                                       "changes nothing stored)", epilog=EPILOG)
    _stored_run_options(s, root)
    s.add_argument("--rule", default=None, help="extraction rule (facebench/extraction.yaml), e.g. "
                                                "vlmevalkit-yorn; default: the run's own")
    s.set_defaults(func=cmd_reparse)

    s = sub.add_parser("import", help="store per-pair results made elsewhere (CSV or JSON Lines, e.g. vLLM outputs) "
                                      "as a run and print the metrics", epilog=EPILOG)
    s.add_argument("file", metavar="FILE", help=".csv or .jsonl: pair_id (or image_a, image_b), score[, decision]"
                                                "[, raw_output], one row per pair of the dataset")
    s.add_argument("--model", required=True, help="the model that made them: registry name or backend:argument "
                                                  "(its weights need not be here)")
    s.add_argument("--dataset", required=True)
    s.add_argument("--root", **root)
    s.add_argument("--out", default=None, metavar="DIR", help="results folder (default: results/ in the checkout)")
    s.add_argument("--set", action="append", type=_setting, metavar="KEY=VALUE",
                   help="a model setting the results were made with, e.g. --set prompt=fr-ouinon")
    s.add_argument("--json", action="store_true", help="end with the metrics as one JSON line")
    s.set_defaults(func=cmd_import)

    s = sub.add_parser("prompts", help="the prompt templates MLLMs are asked with (facebench/prompts.yaml)")
    s.set_defaults(func=cmd_prompts)

    tiny = sub.add_parser("tiny", help="tiny random-weight MLLMs").add_subparsers(dest="tiny_command", required=True)
    s = tiny.add_parser("build", help="build a tiny random-weight model of a real architecture into a folder")
    s.add_argument("family")
    s.add_argument("folder")
    s.add_argument("--seed", type=int, default=0)
    s.set_defaults(func=cmd_tiny_build)

    s = sub.add_parser("metrics", help="metrics for an external CSV with columns score,label,fold[,group]")
    s.add_argument("scores")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_metrics)

    s = sub.add_parser("grid", help="score a grid of (model, dataset) cells, render their pages, summaries and "
                                    "table of contents")
    s.add_argument("grid")
    s.add_argument("--force", action="store_true",
                   help="render every page (of the --only cells) again, fresh or not; stored pairs are never "
                        "scored twice")
    s.add_argument("--only", nargs="+", metavar="CELL",
                   help="just these cells (names or globs such as 'dlib__*'); the others keep their pages")
    s.add_argument("--allow-failures", action="store_true",
                   help="exit 0 even when a cell failed (its page shows the failure); by default the exit is 1")
    s.add_argument("--executor", choices=["local", "ray"], default="local",
                   help="local: cells one after another here; ray: cells (and shards) as tasks on a Ray cluster")
    s.add_argument("--address", default=None, metavar="ADDR",
                   help="with --executor ray: the cluster's address (HEAD:6379, or auto); default: a local Ray")
    s.add_argument("--shards", type=int, default=None, metavar="N",
                   help="with --executor ray: split every cell into N tasks (overrides the grid file's shards)")
    s.set_defaults(func=cmd_grid)

    s = sub.add_parser("render", help="render cells' pages again from their stored runs, scoring nothing "
                                      "(the same pages as `facebench grid`)")
    s.add_argument("grid")
    s.add_argument("only", nargs="+", metavar="CELL", help="cell names or globs, e.g. dlib__lfw or 'dlib__*'")
    s.set_defaults(func=cmd_grid, force=True, allow_failures=False, executor="local", address=None, shards=None)

    s = sub.add_parser("book", help="build a grid's HTML book (jupyter-book build -n -W --keep-going) after "
                                    "`facebench grid`")
    s.add_argument("grid")
    s.set_defaults(func=cmd_book)

    demo = sub.add_parser("demo", help="the bundled demo set").add_subparsers(dest="demo_command", required=True)
    s = demo.add_parser("build", help="cut the demo crops from ../shared/faces and write data_manifests/demo.yaml")
    s.add_argument("--source", default=None, metavar="DIR", help="folder of the source photos")
    s.add_argument("--force", action="store_true", help="rebuild even when the crops match the manifest")
    s.set_defaults(func=cmd_demo_build)
    return p


class Terminated(KeyboardInterrupt):
    """SIGTERM (``timeout``, SLURM's ``scancel``), handled as Ctrl-C is: work stops, the status is recorded."""


def _terminate(signum, frame):
    raise Terminated()


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    previous = signal.signal(signal.SIGTERM, _terminate) if threading.current_thread() is threading.main_thread() \
        else None
    try:
        return args.func(args)
    except Terminated:
        print("facebench: terminated (SIGTERM); finished pairs are saved and a rerun resumes", file=sys.stderr)
        return 143
    except (UnknownNameError, ValueError, OSError, RuntimeError) as exc:  # OSError names its file: a full disk
        print(f"facebench: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("facebench: interrupted; finished pairs are saved and a rerun resumes", file=sys.stderr)
        return 130
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
