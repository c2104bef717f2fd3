"""dist_contrast against sentence-transformers on the same pairs, the same small transformer
and the same batch: in-batch negatives (its ``MultipleNegativesRankingLoss``), then a second
round on hard negatives that each mined with its first-round model (its
``mine_hard_negatives``, our ``dist-contrast mine``), scored by MRR@10 on the held-out code
search queries, with training pairs/s and mining rows/s.

    python benchmarks/st_compare.py [--pairs DIR] [--rows N] [--steps S] [--batch B]
                                    [--st-python PYTHON] [--out DIR]

Both sides start from the same untrained model: configs/codesearch_transformer.yaml's
transformer with its WordPiece tokenizer trained on the training texts, exported as a
sentence-transformers folder (the ST side trains that folder). dist_contrast trains through
``dist-contrast train`` (Ray, one worker, DeepSpeed); sentence-transformers in a plain PyTorch
loop around its loss (its ``SentenceTransformerTrainer`` needs ``accelerate``, which adds
nothing to the step). The same optimiser (AdamW, warm-up then cosine, gradient clipping 1.0),
τ 0.05 (ST's scale 20), steps and batch; the ST side cuts every text at 128 tokens (one length
for both sides), ours cuts queries at 48. Mining: both keep 3 of each row's top 50 scored at
most 0.95 × the positive, sampled at random, and the second round draws one of them per row
and step. Both embed the held-out queries and corpus; our metric code scores both.

sentence-transformers' mining needs ``datasets``: it runs in ``--st-python`` (default
``.venv-st``, which ``make bench`` creates; it reads the rest from ``.venv``). Writes
``st_compare.json`` and ``st_compare.md`` into ``--out`` (default
benchmarks/results/st_compare). About 20 minutes on 2 cores at the defaults.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "codesearch_transformer.yaml"
TAU = 0.05
NEGATIVES, RANGE_MAX, RELATIVE_MARGIN = 3, 50, 0.05  # the mining rule, both sides
ST_LENGTH = 128


# ----------------------------------------------------------------------------- the ST side
# (run with --st-python: sentence-transformers and datasets, nothing of dist_contrast needed)


def _schedule(step: int, steps: int, warmup: int, floor: float = 0.01) -> float:
    """Our WarmupCosineLR's factor: linear warm-up, then cosine down to ``floor``."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))


def st_train(args: argparse.Namespace) -> None:
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.losses import MultipleNegativesRankingLoss

    torch.manual_seed(0)
    rows = [json.loads(line) for line in Path(args.pairs).read_text().splitlines()]
    model = SentenceTransformer(args.model, device="cpu")
    model.max_seq_length = ST_LENGTH
    loss = MultipleNegativesRankingLoss(model, scale=1 / TAU)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: _schedule(s, args.steps, args.warmup))
    rng = random.Random(0)
    order: list[int] = []
    timed, started = 0.0, 0.0
    model.train()
    for step in range(args.steps):
        if len(order) < args.batch:
            order += rng.sample(range(len(rows)), len(rows))
        batch, order = [rows[i] for i in order[: args.batch]], order[args.batch :]
        if step == args.skip:
            started = time.perf_counter()
        columns = [[row["query"] for row in batch], [row["positive"] for row in batch]]
        if args.negatives:  # one of the row's mined negatives, as our hard_negatives: 1
            columns.append([rng.choice(row["negatives"]) for row in batch])
        features = [model.tokenize(texts) for texts in columns]
        value = loss(features, labels=None)
        optimizer.zero_grad()
        value.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
    timed = time.perf_counter() - started
    model.save(args.trained)
    print(json.dumps({"pairs_per_s": (args.steps - args.skip) * args.batch / timed,
                      "last_loss": float(value)}))


def st_embed(args: argparse.Namespace) -> None:
    import numpy as np
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(args.model, device="cpu")
    model.max_seq_length = ST_LENGTH
    texts = json.loads(Path(args.texts).read_text())
    for side in ("queries", "corpus"):
        np.save(Path(args.out) / f"{side}.npy", model.encode(
            texts[side], batch_size=128, normalize_embeddings=True, convert_to_numpy=True))


def st_mine(args: argparse.Namespace) -> None:
    from datasets import Dataset
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.util import mine_hard_negatives

    rows = [json.loads(line) for line in Path(args.pairs).read_text().splitlines()]
    model = SentenceTransformer(args.model, device="cpu")
    model.max_seq_length = ST_LENGTH
    dataset = Dataset.from_dict({"query": [r["query"] for r in rows],
                                 "positive": [r["positive"] for r in rows]})
    start = time.perf_counter()
    mined = mine_hard_negatives(
        dataset, model, range_max=RANGE_MAX, relative_margin=RELATIVE_MARGIN,
        num_negatives=NEGATIVES,
        sampling_strategy="random", output_format="n-tuple", batch_size=128, use_faiss=True,
        verbose=False)
    seconds = time.perf_counter() - start
    names = [f"negative_{i}" for i in range(1, NEGATIVES + 1)]
    with Path(args.output).open("w") as out:
        for row in mined:
            out.write(json.dumps({"query": row["query"], "positive": row["positive"],
                                  "negatives": [row[n] for n in names]}) + "\n")
    print(json.dumps({"rows_per_s": len(rows) / seconds, "rows": len(rows),
                      "kept": len(mined)}))


# ----------------------------------------------------------------------------- our side


def _last_json(done: subprocess.CompletedProcess[str], what: str) -> dict[str, Any]:
    if done.returncode != 0:
        raise SystemExit(f"{what} failed: {done.stderr.strip().splitlines()[-1:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _cli(work: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "MLFLOW_TRACKING_URI":
           f"sqlite:///{work / 'mlflow.db'}"}
    env.pop("RAY_ADDRESS", None)
    done = subprocess.run([sys.executable, "-m", "dist_contrast.cli", *args], cwd=work,
                          capture_output=True, text=True, env=env, check=False)
    if done.returncode != 0:
        raise SystemExit(f"dist-contrast {args[0]} failed: {done.stderr.strip()[-600:]}")
    return done


def _our_train(work: Path, name: str, train: Path, test: Path, steps: int, batch: int,
               *extra: str) -> dict[str, float]:
    import mlflow

    _cli(work, "train", str(CONFIG), f"data.path={train}", f"data.eval_path={test}",
         "trainer.num_workers=1", f"trainer.batch_size={batch}", f"trainer.max_steps={steps}",
         f"eval.every_steps={steps}", f"checkpoint.every_steps={steps}",
         f"trainer.log_every={max(1, steps // 10)}", f"experiment.run_name={name}",
         f"experiment.output_dir={work / 'results'}", "tracking.experiment=st-compare",
         f"data.params={{{', '.join(extra) or 'hard_negatives: 0'}}}")
    client = mlflow.MlflowClient(f"sqlite:///{work / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("st-compare")
    assert experiment is not None
    (run,) = client.search_runs([experiment.experiment_id],
                                filter_string=f"attributes.run_name = '{name}'")
    rates = [m.value for m in client.get_metric_history(run.info.run_id, "train/samples_per_s")
             if m.step > max(1, steps // 10)]
    return {"mrr_at_10": run.data.metrics["eval/mrr_at_10"],
            "recall_at_10": run.data.metrics["eval/recall_at_10"],
            "pairs_per_s": sorted(rates)[len(rates) // 2]}


def _initial_model(train: Path, folder: Path) -> Path:
    """The untrained transformer of configs/codesearch_transformer.yaml with its tokenizer
    trained on ``train``'s texts, as a sentence-transformers folder."""
    import torch

    from dist_contrast.config import load_config
    from dist_contrast.models import build_model
    from dist_contrast.models.build import fit_featurizer
    from dist_contrast.models.text import TextEncoder
    from dist_contrast.train.text_model import (
        TrainedTextEncoder,
        export_sentence_transformer_folders,
    )

    cfg = load_config(CONFIG, [])
    torch.manual_seed(cfg.experiment.seed)
    encoder = build_model(cfg.model, (1,))
    assert isinstance(encoder, TextEncoder)
    rows = [json.loads(line) for line in train.read_text().splitlines()]
    fit_featurizer(encoder, cfg.model, [t for r in rows for t in (r["query"], r["positive"])])
    (written,) = export_sentence_transformer_folders(TrainedTextEncoder(encoder.eval(), cfg),
                                                     folder)
    return written


def _score(queries: Any, corpus: Any, split: Any) -> dict[str, float]:
    from dist_contrast.retrieval import dense_search, retrieval_metrics

    ranking = dense_search(queries.astype("float32"), corpus.astype("float32"), 10)
    metrics = retrieval_metrics(ranking.ids, split.relevant, {"mrr": (10,), "recall": (10,)})
    return {"mrr_at_10": metrics["mrr@10"], "recall_at_10": metrics["recall@10"]}


def _split(test: Path) -> Any:
    from dist_contrast.data.pairs import open_pairs
    from dist_contrast.data.textpairs import PairRows, retrieval_split

    pairs = open_pairs(test)
    rows = PairRows([], [], [], None)
    for batch in pairs.batches(8192):
        rows.query.extend(batch.query)
        rows.positive.extend(batch.positive)
        rows.negatives.extend([[] for _ in batch.query])
    return retrieval_split(rows, None, 0)


def _subset(source: Path, target: Path, rows: int) -> Path:
    lines = source.read_text().splitlines()
    chosen = sorted(random.Random(0).sample(range(len(lines)), min(rows, len(lines))))
    with target.open("w") as out:
        for i in chosen:
            row = json.loads(lines[i])
            out.write(json.dumps({"query": row.get("query", row.get("anchor")),
                                  "positive": row["positive"]}) + "\n")
    return target


def run(args: argparse.Namespace) -> dict[str, Any]:
    import numpy as np

    from results import describe_machine, run_python

    pairs = Path(args.pairs)
    if not (pairs / "train.jsonl").is_file():
        _cli(ROOT, "data", "pysource", "-o", str(pairs))
    st_python = args.st_python or str(ROOT / ".venv-st" / "bin" / "python")
    work = Path(tempfile.mkdtemp(prefix="st-compare-"))
    train = _subset(pairs / "train.jsonl", work / "train.jsonl", args.rows)
    test = pairs / "test.jsonl"
    split = _split(test)
    texts = work / "texts.json"
    texts.write_text(json.dumps({"queries": [str(q) for q in split.queries],
                                 "corpus": [str(d) for d in split.corpus]}))
    initial = _initial_model(train, work / "initial")
    skip = max(1, args.steps // 10)
    common = ["--steps", str(args.steps), "--batch", str(args.batch), "--lr", "0.0005",
              "--warmup", str(min(20, args.steps // 5)), "--skip", str(skip)]
    rows: dict[str, dict[str, float]] = {}

    def st_round(name: str, pairs_file: Path, negatives: bool) -> None:
        trained = work / f"st-{name}"
        done = run_python(st_python, [__file__, "st-train", "--model", str(initial),
                                      "--pairs", str(pairs_file), "--trained", str(trained),
                                      *common, *(["--negatives"] if negatives else [])])
        result = _last_json(done, f"sentence-transformers ({name})")
        embedded = work / f"st-{name}-emb"
        embedded.mkdir()
        _last_json_or_none(run_python(st_python, [__file__, "st-embed", "--model", str(trained),
                                                  "--texts", str(texts), "--out",
                                                  str(embedded)]), f"embed ({name})")
        rows[f"sentence-transformers, {name}"] = {
            **_score(np.load(embedded / "queries.npy"), np.load(embedded / "corpus.npy"),
                     split), "pairs_per_s": result["pairs_per_s"]}
        print(f"sentence-transformers, {name}: {rows[f'sentence-transformers, {name}']}",
              flush=True)

    def our_round(name: str, pairs_file: Path, negatives: bool) -> None:
        extra = ("hard_negatives: 1",) if negatives else ()
        rows[f"dist_contrast, {name}"] = _our_train(work, name.replace(" ", "-"), pairs_file,
                                                   test, args.steps, args.batch, *extra)
        print(f"dist_contrast, {name}: {rows[f'dist_contrast, {name}']}", flush=True)

    our_round("in-batch", train, False)
    st_round("in-batch", train, False)
    mining: dict[str, float] = {}
    ours_mined = work / "ours-mined.jsonl"
    done = _cli(work, "mine", str(work / "results" / "in-batch"), "--queries", str(train),
                "-o", str(ours_mined), "--num-negatives", str(NEGATIVES), "--range-max",
                str(RANGE_MAX), "--relative-margin", str(RELATIVE_MARGIN), "--sampling",
                "random", "--workers", "0")
    # mine's own seconds (reading, encoding, ranking, writing), as ST's exclude its start-up.
    seconds = float(re.findall(r" in (\d+(?:\.\d+)?) s\n", done.stdout)[-1])
    mining["dist_contrast"] = args.rows / seconds
    ours_full = sum(len(json.loads(line)["negatives"]) == NEGATIVES
                    for line in ours_mined.read_text().splitlines())
    st_mined = work / "st-mined.jsonl"
    done = run_python(st_python, [__file__, "st-mine", "--model", str(work / "st-in-batch"),
                                  "--pairs", str(train), "--output", str(st_mined)])
    st_mining = _last_json(done, "sentence-transformers' mine_hard_negatives")
    if not st_mining["kept"]:
        raise SystemExit("sentence-transformers' mine_hard_negatives kept no row (each needs "
                         f"{NEGATIVES} negatives under the margin): train longer (--steps)")
    mining["sentence-transformers"] = st_mining["rows_per_s"]
    our_round("mined by its round 1", ours_mined, True)
    st_round("mined by its round 1", st_mined, True)
    summary = {"rows": args.rows, "steps": args.steps, "batch": args.batch,
               "heldout_queries": len(split.queries), "heldout_corpus": len(split.corpus),
               "mining_rule": {"num_negatives": NEGATIVES, "range_max": RANGE_MAX,
                               "relative_margin": RELATIVE_MARGIN},
               "rows_with_all_negatives": {"dist_contrast": ours_full,
                                           "sentence-transformers": st_mining["kept"]},
               "results": rows, "mining_rows_per_s": mining,
               "machine": describe_machine(lightly=None)}
    return summary


def _last_json_or_none(done: subprocess.CompletedProcess[str], what: str) -> None:
    if done.returncode != 0:
        raise SystemExit(f"{what} failed: {done.stderr.strip()[-600:]}")


def markdown(summary: dict[str, Any]) -> str:
    rows = summary["results"]
    lines = [f"{summary['rows']:,} code-search training pairs, {summary['steps']} steps of "
             f"{summary['batch']} pairs, one process each; MRR@10 on {summary['heldout_queries']:,}"
             f" held-out queries against {summary['heldout_corpus']:,} functions.", "",
             "| trained by | negatives | MRR@10 | Recall@10 | training pairs/s |",
             "|---|---|---|---|---|"]
    for name, row in rows.items():
        who, negatives = name.split(", ", 1)
        lines.append(f"| {who} | {negatives} | {row['mrr_at_10']:.4f} | "
                     f"{row['recall_at_10']:.4f} | {row['pairs_per_s']:.0f} |")
    mining, full = summary["mining_rows_per_s"], summary["rows_with_all_negatives"]
    lines += ["", "| mining (3 of the top 50 within 0.95 × the positive, random) | rows/s | "
              "rows that got all 3 |", "|---|---|---|"]
    lines += [f"| {who} | {rate:.0f} | {full[who]:,} of {summary['rows']:,} |"
              for who, rate in mining.items()]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python benchmarks/st_compare.py",
                                     description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command")
    side = sub.add_parser("st-train")
    side.add_argument("--model")
    side.add_argument("--pairs")
    side.add_argument("--trained")
    side.add_argument("--steps", type=int)
    side.add_argument("--batch", type=int)
    side.add_argument("--lr", type=float)
    side.add_argument("--warmup", type=int)
    side.add_argument("--skip", type=int)
    side.add_argument("--negatives", action="store_true")
    embed = sub.add_parser("st-embed")
    embed.add_argument("--model")
    embed.add_argument("--texts")
    embed.add_argument("--out")
    mine = sub.add_parser("st-mine")
    mine.add_argument("--model")
    mine.add_argument("--pairs")
    mine.add_argument("--output")
    parser.add_argument("--pairs", default=str(ROOT / "data" / "pysource"),
                        help="the code-search pairs folder (built when missing)")
    parser.add_argument("--rows", type=int, default=16384, help="training pairs used")
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--st-python", default=None,
                        help="an interpreter with sentence-transformers and datasets")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "st_compare"))
    args = parser.parse_args(argv)
    if args.command == "st-train":
        st_train(args)
        return 0
    if args.command == "st-embed":
        st_embed(args)
        return 0
    if args.command == "st-mine":
        st_mine(args)
        return 0
    summary = run(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "st_compare.json").write_text(json.dumps(summary, indent=1) + "\n")
    (out / "st_compare.md").write_text(markdown(summary))
    print(markdown(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
