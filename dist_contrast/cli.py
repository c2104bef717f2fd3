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
  dist-contrast config configs/moco.yaml negatives.queue.size=131072
  RAY_ADDRESS=http://head:8265 ray job submit -- dist-contrast train configs/moco.yaml
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

    show = commands.add_parser(
        "config",
        help="validate CONFIG with overrides and print the resolved YAML",
        description="Validate an experiment file and print the config the workers would receive.",
    )
    show.add_argument("config", metavar="CONFIG", help="experiment YAML file (see configs/)")
    show.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help=OVERRIDES_HELP)

    commands.add_parser(
        "losses",
        help="list the loss names that loss.name accepts",
        description="List every selectable loss.",
    )
    return parser


def _print_summary(summary: object) -> None:
    from dist_contrast.orchestrate import TrainingSummary

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
    for key in ("eval/alignment", "eval/uniformity", "train/loss"):
        if key in m:
            print(f"  {key:<32}: {m[key]:.4f}")
    for warning in _warnings(m):
        print(f"  warning: {warning}")
    if summary.checkpoint_path:
        print(f"  checkpoint: {summary.checkpoint_path}")
    uri = summary.tracking_uri
    print(f"  MLflow run {summary.run_id} in {uri}")
    print("  artifacts: config.yaml, summary.json, plots/embeddings.png, plots/training_curves.png")
    if uri.startswith("sqlite:") or uri.startswith("file:"):
        print(f"  open it with: mlflow ui --backend-store-uri {uri}")
    else:
        print(f"  open it at: {uri}")


def _warnings(m: dict[str, float]) -> list[str]:
    """What a failed embedding looks like, said in words (see README, When things go wrong)."""
    found = []
    if m.get("eval/nonfinite_embeddings", 0.0) > 0:
        found.append("the encoder puts out NaN/inf embeddings; lower optimizer.lr, keep "
                     "deepspeed.gradient_clipping > 0, check the inputs (data.standardize)")
    if m.get("eval/uniformity", -1.0) > -0.05:
        found.append("the embedding collapsed (uniformity ≈ 0: nearly one point); lower "
                     "optimizer.lr or raise loss.temperature")
    if m.get("train/skipped_steps", 0.0) > 0:
        found.append(f"{int(m['train/skipped_steps'])} step(s) had a non-finite loss or "
                     "gradient and were skipped (train/skipped_steps)")
    return found


def _run(args: argparse.Namespace) -> int:
    from dist_contrast.config import load_config, to_yaml

    if args.command == "losses":
        from dist_contrast.objectives import loss_names

        print("\n".join(loss_names()))
        return 0
    cfg = load_config(args.config, args.overrides)
    if args.command == "config":
        print(to_yaml(cfg), end="")
        return 0
    from dist_contrast.orchestrate import run_training

    _print_summary(run_training(cfg))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
    from dist_contrast.orchestrate import Interrupted

    try:
        return _run(args)
    except Interrupted as exc:
        print(f"dist-contrast: {exc}", file=sys.stderr)
        return exc.exit_code
    except UserError as exc:
        print(f"dist-contrast: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("dist-contrast: interrupted before training started; nothing to resume",
              file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
