"""``dist-contrast``: the command line.

User mistakes exit with status 2 and one line on stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from dist_contrast.errors import UserError

DESCRIPTION = """\
Distributed large-negative-pool contrastive training (Ray + DeepSpeed + FAISS + MLflow).

Examples:
  dist-contrast train configs/synthetic.yaml
  dist-contrast train configs/synthetic.yaml loss.temperature=0.2 trainer.num_workers=4
  dist-contrast config configs/moco.yaml optimizer.lr=3e-4   # validate + print the resolved config
  dist-contrast embed results/RUN/checkpoint_00002000 rows.parquet -o embeddings.parquet
  dist-contrast sweep configs/synthetic.yaml --grid loss.temperature=0.1,0.2,0.5 --seeds 3
  dist-contrast compare my-sweep --out comparison/
  dist-contrast evaluate RUN_ID data.name=file data.path=new.parquet data.label_column=label
  dist-contrast submit configs/moco.yaml --address http://head:8265
"""

OVERRIDES_HELP = (
    "key=value overrides of the config, dotted by section "
    "(e.g. loss.temperature=0.2 trainer.num_workers=4); values are read as YAML"
)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dist-contrast",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    from dist_contrast import __version__

    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    train = commands.add_parser(
        "train",
        help="train an embedding model with the experiment in CONFIG",
        description=(
            "Train with Ray workers, each driving a DeepSpeed engine; log to MLflow "
            "(MLFLOW_TRACKING_URI, default sqlite:///mlflow.db here). Starts a local Ray "
            "runtime unless RAY_ADDRESS names a cluster. Ends with the learned kNN accuracy "
            "beside the raw-input baseline."
        ),
    )
    train.add_argument("config", metavar="CONFIG", help="experiment YAML file (see configs/)")
    train.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help=OVERRIDES_HELP)
    train.set_defaults(handler=_train)

    show = commands.add_parser(
        "config",
        help="validate CONFIG with overrides and print the resolved YAML",
        description="Validate an experiment file and print the config the workers would receive.",
    )
    show.add_argument("config", metavar="CONFIG", help="experiment YAML file (see configs/)")
    show.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help=OVERRIDES_HELP)
    show.set_defaults(handler=_show_config)

    losses = commands.add_parser(
        "losses",
        help="list the loss names that loss.name accepts",
        description="List every selectable loss.",
    )
    losses.set_defaults(handler=_losses)
    _add_embed(commands)
    _add_search(commands)
    _add_mine(commands)
    _add_evaluate(commands)
    _add_sweep(commands)
    _add_compare(commands)
    _add_submit(commands)
    _add_jobs(commands)
    _add_data(commands)
    return parser


def _add_sweep(commands: argparse._SubParsersAction) -> None:
    sweep = commands.add_parser(
        "sweep",
        help="train a grid of configs × seeds as MLflow child runs of one parent run",
        description=(
            "Train every point of the grid (the product of the --grid values, and of the "
            "'sweep: {grid: ...}' block of each CONFIG) for each of --seeds seeds, as child "
            "runs of one MLflow parent run. Every point is validated before anything starts. "
            "Trials run as Ray tasks, as many at a time as the cluster has CPUs for "
            "(trainer.num_workers × trainer.cpus_per_worker each), capped by --max-concurrent. "
            "A failed child does not stop the others. Ctrl-C stops every running child "
            "(KILLED). Running the same command again resumes: FINISHED children are kept."
        ),
    )
    sweep.add_argument("items", nargs="+", metavar="CONFIG|KEY=VALUE",
                       help="one or more experiment YAML files, then key=value overrides that "
                            "apply to every trial")
    sweep.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2,...",
                       help="a config key and its values (read as YAML, like overrides); "
                            "repeat for more keys. τ is dropped for losses without one")
    sweep.add_argument("--seeds", type=int, default=1, metavar="N",
                       help="seeds per grid point: experiment.seed, +1, ... (default 1)")
    sweep.add_argument("--max-concurrent", type=int, metavar="K",
                       help="at most K trials at once (default: as many as fit)")
    sweep.add_argument("--name", metavar="NAME",
                       help="the sweep's name, also the parent run's (default EXPERIMENT-sweep); "
                            "the same name resumes it")
    sweep.set_defaults(handler=_sweep)


def _sweep(args: argparse.Namespace) -> int:
    import logging

    from dist_contrast.sweep import expand, parse_grid, run_sweep, summary_lines, sweep_failed
    from dist_contrast.sweep.grid import describe_grid

    if args.seeds < 1 or (args.max_concurrent is not None and args.max_concurrent < 1):
        raise UserError("--seeds and --max-concurrent must be at least 1")
    sources = [item for item in args.items if "=" not in item]
    overrides = [item for item in args.items if "=" in item]
    if not sources:
        raise UserError("sweep needs at least one CONFIG file before the key=value overrides")
    grid = parse_grid(args.grid)
    from dist_contrast.config import load_config

    # Default: one sweep per experiment (the same command finds it again to resume).
    name = args.name or f"{load_config(sources[0], overrides).tracking.experiment}-sweep"
    trials = expand(sources, grid, seeds=args.seeds, overrides=overrides, name=name)
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    summary = run_sweep(trials, name=name, grid_text=describe_grid(sources, grid),
                        seeds=args.seeds, max_concurrent=args.max_concurrent)
    print()
    print("\n".join(summary_lines(summary)))
    if summary.failed:
        raise sweep_failed(summary)
    return 0


def _add_submit(commands: argparse._SubParsersAction) -> None:
    submit = commands.add_parser(
        "submit",
        help="submit a training run to a Ray cluster as a Ray job and follow it",
        description=(
            "Validate CONFIG with its overrides here, then submit `dist-contrast train` with the "
            "resolved config as a Ray job (Ray's job API, like `ray job submit`). Prints the job "
            "id and the dashboard, follows the logs and exits with the job's outcome: 0 "
            "SUCCEEDED, 1 FAILED, 130 stopped (Ctrl-C also stops the job). The job server is "
            "--address, else RAY_ADDRESS (http://<head>:8265), else http://127.0.0.1:8265; the "
            "cluster's token comes from RAY_AUTH_TOKEN or ~/.ray/auth_token. MLFLOW_TRACKING_URI, "
            "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD are passed on to the job "
            "unless the runtime environment sets them."
        ),
    )
    submit.add_argument("config", metavar="CONFIG", help="experiment YAML file (see configs/)")
    submit.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help=OVERRIDES_HELP)
    submit.add_argument("--address", metavar="URL", help="the Ray job server, http://<head>:8265")
    submit.add_argument("--runtime-env", metavar="FILE",
                        help="Ray runtime environment YAML (default launch/runtime_env.yaml when "
                             "it exists here, else the package installed on the cluster)")
    submit.add_argument("--no-wait", action="store_true",
                        help="return once the job is submitted")
    submit.set_defaults(handler=_submit)


def _add_jobs(commands: argparse._SubParsersAction) -> None:
    jobs = commands.add_parser(
        "jobs",
        help="list, inspect, follow or stop the Ray jobs of a cluster",
        description="The submitted jobs of the Ray cluster at --address (see submit).",
    )
    actions = jobs.add_subparsers(dest="jobs_command", metavar="ACTION", required=True)
    for name, text in (("list", "every submitted job"), ("status", "one job's status"),
                       ("logs", "one job's logs"), ("stop", "stop a job (SIGTERM: the run stops "
                                                            "after its step, MLflow run KILLED)")):
        action = actions.add_parser(name, help=text, description=text)
        if name != "list":
            action.add_argument("job_id", metavar="ID", help="the job's submission id")
        if name == "logs":
            action.add_argument("--follow", action="store_true", help="until the job ends")
        action.add_argument("--address", metavar="URL",
                            help="the Ray job server, http://<head>:8265")
    jobs.set_defaults(handler=_jobs)


def _submit(args: argparse.Namespace) -> int:
    from dist_contrast import jobs

    return jobs.submit(args.config, list(args.overrides), address=args.address,
                       runtime_env_path=args.runtime_env, wait=not args.no_wait)


def _jobs(args: argparse.Namespace) -> int:
    from dist_contrast import jobs

    if args.jobs_command == "list":
        return jobs.list_jobs(args.address)
    if args.jobs_command == "status":
        return jobs.show_status(args.job_id, args.address)
    if args.jobs_command == "logs":
        return jobs.show_logs(args.job_id, follow=args.follow, address=args.address)
    return jobs.stop_job(args.job_id, args.address)


def _add_compare(commands: argparse._SubParsersAction) -> None:
    compare = commands.add_parser(
        "compare",
        help="compare the finished runs of an experiment or a sweep (table, figures, report)",
        description=(
            "Group the FINISHED runs of EXPERIMENT_NAME (or the children of PARENT_RUN_ID) into "
            "grid points whose params differ only in experiment.seed; write a table (mean ± "
            "std over seeds), figures against τ, the uniformity-tolerance plane, the train/loss "
            "curves (and, for eval metrics logged at several steps, their trajectories), "
            "runs.csv (one row per run) and one self-contained report.html to --out. With "
            "--claims, each claim of the file is tested over seeds (Welch's t) and claims.md "
            "gets a verdict per claim. A parent run also gets the files as artifacts under "
            "compare/."
        ),
    )
    compare.add_argument("target", metavar="EXPERIMENT_NAME|PARENT_RUN_ID",
                         help="an MLflow experiment name or a sweep's parent run id")
    compare.add_argument("--out", default="comparison", metavar="DIR",
                         help="where to write (default comparison/)")
    compare.add_argument("--metric", metavar="NAME",
                         help="the accuracy plotted against τ (default eval/knn_acc, or "
                              "eval/mrr_at_10 for text runs)")
    compare.add_argument("--claims", metavar="FILE",
                         help="a YAML file of claims, each a metric and two grid points "
                              "(higher, lower) selected by their params; each gets Welch's t "
                              "test over seeds and a verdict (see docs/tau_study/README.md)")
    compare.add_argument("--partial", action="store_true",
                         help="a study still running: a claim whose grid point has no finished "
                              "runs yet is listed as not tested (with what it waits for) "
                              "instead of refusing the file")
    compare.add_argument("--tracking-uri", metavar="URI",
                         help="the MLflow store (default MLFLOW_TRACKING_URI, else "
                              "sqlite:///mlflow.db here)")
    compare.set_defaults(handler=_compare)


def _compare(args: argparse.Namespace) -> int:
    import logging

    from dist_contrast.compare import compare
    from dist_contrast.tracking import default_tracking_uri

    logging.getLogger("mlflow").setLevel(logging.WARNING)  # keep the table readable
    done = compare(args.target, args.tracking_uri or default_tracking_uri(), out=args.out,
                   metric=args.metric, claims=args.claims, partial=args.partial)
    print(done.table, end="")
    if done.claims is not None:
        print(f"\n{done.claims}", end="")
    print(f"{len(done.groups)} grid points; wrote {', '.join(p.name for p in done.files)} "
          f"to {args.out}")
    if done.parent_id:
        print(f"  logged to run {done.parent_id} under compare/")
    return 0


def _add_evaluate(commands: argparse._SubParsersAction) -> None:
    evaluate = commands.add_parser(
        "evaluate",
        help="measure a trained encoder on a dataset and log it as a new MLflow run",
        description=(
            "Evaluate a trained encoder (kNN beside the raw-input baseline, linear probe, "
            "alignment, uniformity, tolerance) on its training data or any dataset the config "
            "can name, e.g. data.name=file data.path=new.parquet data.label_column=label. "
            "Logged as a new MLflow run tagged dist_contrast.evaluates_run."
        ),
    )
    evaluate.add_argument("source", metavar="SOURCE", help="checkpoint folder, run id or model URI")
    evaluate.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                          help="overrides of the run's config (the data to evaluate on)")
    evaluate.add_argument("--output", dest="output_kind", choices=("embedding", "representation"),
                          help="evaluate the head's embedding or the backbone's representation "
                               "(default: what the model was logged with)")
    evaluate.add_argument("--run-name", metavar="NAME", help="the new MLflow run's name")
    evaluate.add_argument("--tracking-uri", metavar="URI",
                          help="the MLflow store of SOURCE and of the new run")
    evaluate.set_defaults(handler=_evaluate)


def _evaluate(args: argparse.Namespace) -> int:
    from dist_contrast.serving.evaluate import run_evaluation

    done = run_evaluation(args.source, list(args.overrides), output=args.output_kind,
                          tracking_uri=args.tracking_uri, run_name=args.run_name)
    print(f"evaluated {args.source}")
    for key in sorted(done.metrics):
        print(f"  {key:<32}: {done.metrics[key]:.4f}")
    print(f"  MLflow run {done.run_id} in {done.tracking_uri}")
    return 0


def _add_embed(commands: argparse._SubParsersAction) -> None:
    embed = commands.add_parser(
        "embed",
        help="embed the rows of a .npy or .parquet file with a trained encoder",
        description=(
            "Apply a trained encoder, with the preprocessing its training data got, to every "
            "row of INPUT and write the outputs to OUTPUT, batch by batch (inputs larger than "
            "memory are fine). SOURCE is a checkpoint folder (results/RUN/checkpoint_STEP), an "
            "MLflow run id, runs:/RUN_ID/encoder or models:/NAME/VERSION (looked up in "
            "--tracking-uri, default MLFLOW_TRACKING_URI, else sqlite:///mlflow.db here)."
        ),
    )
    embed.add_argument("source", metavar="SOURCE", help="checkpoint folder, run id or model URI")
    embed.add_argument("input", metavar="INPUT", help="raw rows: .npy [N, D] or .parquet")
    embed.add_argument("-o", dest="output_path", metavar="OUTPUT", required=True,
                       help="where to write: .npy [N, width] float32, or .parquet (ids + "
                            "embedding_0 ... columns)")
    embed.add_argument("--output", dest="output_kind", choices=("embedding", "representation"),
                       help="the projection head's unit-norm embedding, or the backbone's "
                            "representation before the head (default: the run's "
                            "tracking.model_output)")
    embed.add_argument("--batch-size", type=int, default=1024, metavar="N",
                       help="rows per batch (default 1024)")
    embed.add_argument("--ids-column", metavar="NAME",
                       help="parquet INPUT only: a column that is not a feature, copied to a "
                            "parquet OUTPUT beside each row's output")
    embed.add_argument("--overwrite", action="store_true", help="replace an existing OUTPUT")
    embed.add_argument("--tracking-uri", metavar="URI", help="the MLflow store of SOURCE")
    embed.add_argument("--side", choices=("query", "document"),
                       help="a text encoder's checkpoint: the tower to embed with (INPUT: .txt, "
                            "one text per line, or .jsonl; OUTPUT: .npy)")
    embed.add_argument("--column", default="text", metavar="NAME",
                       help="a .jsonl INPUT of texts: the field holding the text (default text)")
    embed.set_defaults(handler=_embed)


def _embed(args: argparse.Namespace) -> int:
    """``dist-contrast embed``: cheap checks first, then the model, then the rows."""
    import logging

    from dist_contrast.serving.embed import check_paths, embed_file
    from dist_contrast.serving.load import is_mlflow_source, load_encoder
    from dist_contrast.serving.text import text_checkpoint_config

    # A text checkpoint says so itself; an MLflow model is read as text when --side is given.
    if text_checkpoint_config(args.source) is not None or (
            args.side is not None and is_mlflow_source(args.source)):
        return _embed_texts(args)
    if args.side is not None:
        raise UserError(f"--side applies to a text encoder's checkpoint; '{args.source}' is "
                        "not one")
    check_paths(args.input, args.output_path, ids_column=args.ids_column,
                overwrite=args.overwrite)
    # MLflow's progress bars and INFO lines (e.g. "Creating initial MLflow database tables")
    # would bury our one line; ours is the only progress bar.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    loaded = load_encoder(args.source, tracking_uri=args.tracking_uri)
    if args.output_kind is not None:
        loaded = loaded.with_output(args.output_kind)
    import torch

    if torch.cuda.is_available():
        loaded.module.cuda()
    rows = embed_file(loaded, args.input, args.output_path, batch_size=args.batch_size,
                      ids_column=args.ids_column, overwrite=args.overwrite)
    print(f"embedded {rows:,} rows into {args.output_path}: the {loaded.output} "
          f"({loaded.output_dim} values per row) of {loaded.source}")
    return 0


def _embed_texts(args: argparse.Namespace) -> int:
    """``dist-contrast embed`` with a text encoder's checkpoint: one tower over a file of texts."""
    from dist_contrast.serving.text import (
        check_text_paths,
        embed_texts,
        load_text_encoder,
        read_texts,
    )

    if args.side is None:
        raise UserError(f"'{args.source}' is a text encoder: say which tower embeds INPUT with "
                        "--side query or --side document")
    if args.ids_column is not None:
        raise UserError("--ids-column applies to parquet rows; a text OUTPUT's row i is "
                        "INPUT's text i")
    check_text_paths(args.input, args.output_path, overwrite=args.overwrite)
    texts = read_texts(args.input, args.column)
    encoder, _ = load_text_encoder(args.source, args.tracking_uri)
    representation = args.output_kind == "representation"
    count = embed_texts(encoder, texts, args.side, args.output_path,
                        representation=representation, batch_size=args.batch_size,
                        overwrite=args.overwrite)
    width = encoder.feature_dim if representation else encoder.embedding_dim
    what = "representation" if representation else "embedding"
    print(f"embedded {count:,} texts into {args.output_path}: the {args.side} tower's {what} "
          f"({width} values per text) of {args.source}")
    return 0


def _add_search(commands: argparse._SubParsersAction) -> None:
    search = commands.add_parser(
        "search",
        help="search a corpus of texts with a trained text encoder",
        description=(
            "Embed the corpus with the document tower (once: kept beside the checkpoint in "
            "search/, reused while the corpus file is unchanged), each QUERY with the query "
            "tower, and print each query's top K documents with their cosine scores. SOURCE "
            "is a text run's checkpoint folder, or its run folder (the newest checkpoint)."
        ),
    )
    search.add_argument("source", metavar="SOURCE", help="checkpoint folder or run folder")
    search.add_argument("queries", metavar="QUERY", nargs="+", help="the text to search for")
    search.add_argument("--corpus", required=True, metavar="FILE",
                        help="the documents: .txt (one per line) or .jsonl")
    search.add_argument("--column", metavar="NAME",
                        help="a .jsonl corpus: the text's field (default: the first of text, "
                             "positive, document that the file has)")
    search.add_argument("-k", type=int, default=10, help="results per query (default 10)")
    search.add_argument("--width", type=int, default=100, metavar="N",
                        help="characters of each document's first line to print (default 100)")
    search.set_defaults(handler=_search)


def _search(args: argparse.Namespace) -> int:
    """``dist-contrast search``: the corpus (cached), then each query's top k."""
    from pathlib import Path

    from dist_contrast.serving import search as searching
    from dist_contrast.serving.text import load_text_encoder

    if args.k < 1:
        raise UserError(f"-k must be at least 1, got {args.k}")
    checkpoint = searching.checkpoint_of(args.source)
    texts, ids, column = searching.corpus_texts(args.corpus, args.column)
    encoder, _ = load_text_encoder(checkpoint)
    vectors, cached = searching.corpus_embeddings(encoder, checkpoint, Path(args.corpus),
                                                  column, texts)
    how = "reused" if cached else "embedded"
    print(f"{len(texts):,} documents of {args.corpus} ({column}) {how}, with {checkpoint}")
    for query, hits in zip(args.queries, searching.search(encoder, vectors, texts, ids,
                                                          args.queries, args.k), strict=True):
        print(f"\n{query}")
        for rank, hit in enumerate(hits, start=1):
            first = (hit.text.strip().splitlines() or [""])[0][: args.width]
            name = f"{hit.id}  " if hit.id else f"row {hit.row}  "
            print(f"  {rank:>3}. {hit.score:.4f}  {name}{first}")
    return 0


def _add_mine(commands: argparse._SubParsersAction) -> None:
    mine = commands.add_parser(
        "mine",
        help="add hard negatives, mined from a corpus by BM25 or a trained model, to pairs",
        description=(
            "For each row of --queries (a pairs file), rank the corpus by SOURCE, drop the "
            "query's positives (by id and by text) and repeated texts, keep the ranks "
            "--range-min..--range-max-1, drop what scores within the margins of the positive "
            "(likely false negatives), and take --num-negatives of the rest. OUTPUT is the "
            "pairs file with a 'negatives' list column. With a model, the corpus is encoded "
            "by Ray tasks (RAY_ADDRESS's cluster, or a local runtime); an interrupted mine "
            "run again resumes where it stopped. Docs: docs/mining.md."
        ),
    )
    mine.add_argument("source", metavar="SOURCE",
                      help="bm25, or a text run's checkpoint folder, run folder or MLflow model")
    mine.add_argument("--queries", required=True, metavar="FILE",
                      help="pairs (.jsonl, .csv, .parquet) with query and positive")
    mine.add_argument("--corpus", metavar="FILE",
                      help="documents: .jsonl or .parquet with id and text, or a pairs file "
                           "(its positives); default: the --queries file's positives")
    mine.add_argument("-o", dest="output_path", metavar="OUTPUT", required=True,
                      help="the mined pairs: .jsonl or .parquet")
    mine.add_argument("--num-negatives", type=int, default=3, metavar="N",
                      help="negatives per row (default 3)")
    mine.add_argument("--range-min", type=int, default=0, metavar="R",
                      help="skip the R best candidates (default 0)")
    mine.add_argument("--range-max", type=int, default=50, metavar="R",
                      help="look no further than the R best candidates (default 50)")
    mine.add_argument("--margin", type=float, metavar="M",
                      help="keep a negative only if it scores at most the positive's score - M")
    mine.add_argument("--relative-margin", type=float, metavar="M",
                      help="keep a negative only if it scores at most (1 - M) x the positive's")
    mine.add_argument("--sampling", choices=("top", "random"), default="top",
                      help="the best N of the window, or N drawn at random (default top)")
    mine.add_argument("--seed", type=int, default=0, help="the random sampling's seed")
    mine.add_argument("--workers", type=int, metavar="N",
                      help="Ray tasks at once (default: the cluster's CPUs; 0: this process)")
    mine.add_argument("--shard-size", type=int, default=4096, metavar="N",
                      help="texts per Ray task and rows per saved block (default 4096)")
    mine.add_argument("--batch-size", type=int, default=256, metavar="N",
                      help="texts per forward pass (default 256)")
    mine.add_argument("--overwrite", action="store_true", help="replace an existing OUTPUT")
    mine.add_argument("--tracking-uri", metavar="URI", help="the MLflow store of SOURCE")
    mine.set_defaults(handler=_mine)


def _mine(args: argparse.Namespace) -> int:
    """``dist-contrast mine``: the negatives, then one summary."""
    from dist_contrast.driver.tasks import RayPool
    from dist_contrast.serving.mine import InProcess, MiningRule, PoolFactory, mine

    if args.workers is not None and args.workers < 0:
        raise UserError(f"--workers must be 0 (this process) or more, got {args.workers}")
    rule = MiningRule(args.num_negatives, args.range_min, args.range_max, args.margin,
                      args.relative_margin, args.sampling, args.seed)
    pool: PoolFactory = InProcess if args.workers == 0 else lambda: RayPool(args.workers)
    summary = mine(args.source, args.queries, args.corpus, args.output_path, rule, pool=pool,
                   shard_size=args.shard_size, batch_size=args.batch_size,
                   overwrite=args.overwrite, tracking_uri=args.tracking_uri,
                   say=lambda line: print(f"dist-contrast: mine: {line}", flush=True))
    c = summary.counts
    full = c.queries - c.short
    print(f"mined {c.kept:,} negatives for {summary.rows:,} rows into {args.output_path} "
          f"({full:,} rows got {rule.num_negatives}, {c.short:,} fewer) in "
          f"{summary.seconds:.0f} s")
    print(f"  removed as the query's positives: {c.positive_id:,} by id, {c.positive_text:,} "
          f"by text; repeated texts: {c.duplicate:,}; within the margin: {c.margin:,}")
    return 0


def _add_data(commands: argparse._SubParsersAction) -> None:
    data = commands.add_parser(
        "data",
        help="build or check paired data files (the code-search pairs of Python sources)",
        description="Build the code-search pairs from Python source trees, or check a file "
                    "of pairs (see docs/pairs.md).",
    )
    actions = data.add_subparsers(dest="data_command", metavar="ACTION", required=True)
    pysource = actions.add_parser(
        "pysource",
        help="write train/test pairs (docstring summary, code) from Python source trees",
        description=(
            "Parse every .py file under the roots (never importing it) and write one pair per "
            "documented function: the docstring's first paragraph as the query, the code "
            "without its docstring as the positive. De-duplicated, deterministic, and split by "
            "top-level package: DIR/train.jsonl, DIR/test.jsonl (the held-out packages) and "
            "DIR/stats.json. Default roots: this interpreter's standard library and its "
            "installed packages."
        ),
    )
    pysource.add_argument("--root", action="extend", nargs="+", metavar="DIR",
                          help="a folder of packages or modules (repeatable; replaces the "
                               "default roots)")
    pysource.add_argument("-o", dest="out", metavar="DIR", required=True,
                          help="the folder to write (new or empty)")
    pysource.add_argument("--test-fraction", type=float, default=0.075, metavar="F",
                          help="the share of pairs to hold out, by whole packages (default "
                               "0.075; at most 4/3 of it is held out)")
    pysource.add_argument("--overwrite", action="store_true",
                          help="replace the files of an existing folder")
    check = actions.add_parser(
        "check", help="check every row of a pairs file (.jsonl, .csv or .parquet)",
        description="Read a pairs file through and report its layout and rows, or its first "
                    "mistake in one line.")
    check.add_argument("path", metavar="FILE", help="a .jsonl, .csv or .parquet file of pairs")
    data.set_defaults(handler=_data)


def _data(args: argparse.Namespace) -> int:
    if args.data_command == "check":
        from dist_contrast.data.pairs import open_pairs

        pairs = open_pairs(args.path)
        rows = pairs.validate()
        layout = pairs.layout
        negatives = ", ".join(c.name for c in layout.negatives) or "none"
        widths = pairs.feature_widths()
        kinds = "".join(f"; the {side} side holds feature rows of {width} numbers (set "
                        f"model.{side}_features={width})" for side, width in widths.items())
        print(f"{args.path}: {rows:,} rows of {pairs.format}; query {layout.query.name!r}, "
              f"positive {layout.positive.name!r}, negatives: {negatives}{kinds}")
        return 0
    from dist_contrast.data.pysource import build_pysource, describe_result

    def progress(line: str) -> None:
        print(f"pysource: {line}", file=sys.stderr, flush=True)

    result = build_pysource(args.out, args.root, overwrite=args.overwrite,
                            test_fraction=args.test_fraction, progress=progress)
    describe_result(result, sys.stdout)
    return 0


def _print_summary(summary: object) -> None:
    from dist_contrast.driver.run import TrainingSummary

    assert isinstance(summary, TrainingSummary)
    m = summary.metrics
    print()
    print(f"run {summary.run_name} finished at step {int(m.get('step', 0))}")
    if "eval/knn_acc" in m:
        raw = m.get("eval/raw_knn_acc", float("nan"))
        print(f"  kNN accuracy, learned embedding : {m['eval/knn_acc']:.4f}")
        print(f"  kNN accuracy, raw input         : {raw:.4f}")
    if "eval/linear_probe_acc" in m:
        print(f"  linear probe accuracy           : {m['eval/linear_probe_acc']:.4f}")
    text = "eval/mrr_at_10" in m  # a text run: retrieval (beside BM25 when both sides are text)
    if text:
        _print_retrieval(m)
    for key in ("eval/alignment", "eval/uniformity", "train/loss"):
        if key in m:
            print(f"  {key:<32}: {m[key]:.4f}")
    for warning in _warnings(m):
        print(f"  warning: {warning}")
    if summary.checkpoint_path:
        print(f"  checkpoint: {summary.checkpoint_path}")
    uri = summary.tracking_uri
    print(f"  MLflow run {summary.run_id} in {uri}")
    if text:
        print("  artifacts: config.yaml, summary.json, plots/ (training_curves, "
              "relative_penalty, similarities), the MLflow model encoder (texts -> embeddings)")
    else:
        print("  artifacts: config.yaml, summary.json, plots/ (embeddings, training_curves, "
              "relative_penalty, similarities), the MLflow model encoder")
    if summary.checkpoint_path and text:
        from pathlib import Path

        for folder in sorted(Path(summary.checkpoint_path).parent.glob("sentence_transformer*")):
            print(f"  sentence-transformers: SentenceTransformer({str(folder)!r})")
        print(f"  search with it: dist-contrast search {summary.checkpoint_path} \"QUERY\" "
              "--corpus DOCUMENTS.jsonl; embed: dist-contrast embed "
              f"{summary.checkpoint_path} TEXTS.txt --side query -o EMBEDDINGS.npy")
    if summary.checkpoint_path and not text:
        print(f"  embed rows with it: dist-contrast embed {summary.checkpoint_path} ROWS.npy "
              "-o EMBEDDINGS.npy (or the MLflow model runs:/RUN_ID/encoder)")
    from dist_contrast.tracking import is_local_store

    if is_local_store(uri):
        print(f"  open it with: mlflow ui --backend-store-uri {uri}")
    else:
        print(f"  open it at: {uri}")


def _print_retrieval(m: dict[str, float]) -> None:
    """The held-out retrieval metrics: the dense encoder, BM25 and their hybrids, side by side."""
    names = ("mrr_at_10", "recall_at_1", "recall_at_10", "recall_at_100", "ndcg_at_10")
    queries = int(m.get("eval/retrieval_queries", 0))
    corpus = int(m.get("eval/retrieval_corpus", 0))
    print(f"  retrieval, {queries:,} held-out queries against {corpus:,} documents:")
    print("    " + " " * 10 + "".join(f"{n.replace('_at_', '@'):>11}" for n in names))
    for label, prefix in (("dense", ""), ("BM25", "bm25_"), ("hybrid", "hybrid_"),
                          ("RRF", "rrf_")):
        values = [m.get(f"eval/{prefix}{n}") for n in names]
        if all(v is None for v in values):
            continue
        cells = "".join(f"{v:>11.4f}" if v is not None else f"{'-':>11}" for v in values)
        print(f"    {label:<10}{cells}")


def _warnings(m: dict[str, float]) -> list[str]:
    """What a failed embedding looks like, said in words (see README, When things go wrong)."""
    found = []
    if m.get("eval/nonfinite_embeddings", 0.0) > 0:
        found.append("the encoder puts out NaN/inf embeddings; lower optimizer.lr, keep "
                     "deepspeed.gradient_clipping > 0, check the inputs (data.standardize)")
    if m.get("eval/collapsed", 0.0) < 1.0 and m.get("eval/uniformity", -1.0) > -0.05:
        # Runs logged before the collapse alarm existed: uniformity alone.
        found.append("the embedding collapsed (uniformity ≈ 0: nearly one point); lower "
                     "optimizer.lr or raise loss.temperature")
    if m.get("eval/collapsed", 0.0) >= 1.0:
        mean, positive = (m.get(f"eval/{k}_similarity", float("nan")) for k in ("mean", "positive"))
        found.append(f"collapse alarm at the last eval (eval/mean_similarity {mean:.3f}, "
                     f"eval/positive_similarity {positive:.4f}); what usually fixes it: "
                     "model.batch_norm=true when the negatives are a memory bank or a queue "
                     "(an encoder without it can start collapsed and never leave); a lower "
                     "optimizer.lr; a larger loss.temperature")
    if m.get("train/skipped_steps", 0.0) > 0:
        found.append(f"{int(m['train/skipped_steps'])} step(s) had a non-finite loss or "
                     "gradient and were skipped (train/skipped_steps)")
    return found


def _losses(args: argparse.Namespace) -> int:
    from dist_contrast.objectives import loss_names

    print("\n".join(loss_names()))
    return 0


def _show_config(args: argparse.Namespace) -> int:
    from dist_contrast.config import load_config, to_yaml

    print(to_yaml(load_config(args.config, args.overrides)), end="")
    return 0


def _train(args: argparse.Namespace) -> int:
    from dist_contrast.config import load_config

    cfg = load_config(args.config, args.overrides)
    from dist_contrast.driver.run import run_training

    _print_summary(run_training(cfg))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args, extra = parser.parse_known_args(argv)
    if extra and args.command == "sweep" and not any(e.startswith("-") for e in extra):
        args.items += extra  # key=value overrides after the options
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if args.command is None:
        parser.print_help()
        return 2
    os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
    from dist_contrast.driver.signals import Interrupted

    try:
        return int(args.handler(args))
    except Interrupted as exc:
        print(f"dist-contrast: {exc}", file=sys.stderr)
        return exc.exit_code
    except UserError as exc:
        print(f"dist-contrast: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"dist-contrast: {_INTERRUPTED.get(args.command, _INTERRUPTED['train'])}",
              file=sys.stderr)
        return 130


# What Ctrl-C left, by command (train's own interrupts, once it runs, are `Interrupted`).
_INTERRUPTED = {
    "train": "interrupted before training started; nothing to resume",
    "embed": "embed interrupted; nothing written (OUTPUT is as it was)",
    "search": "search interrupted; the corpus cache is kept only when complete",
    "evaluate": "evaluate interrupted; no finished evaluation was logged",
    "data": "data interrupted; nothing written (-o is as it was)",
    "mine": "mine interrupted; -o is as it was; run the same command again to resume",
}


if __name__ == "__main__":
    sys.exit(main())
