"""Rank-0 evaluation during training: kNN accuracy, linear probe, geometry of the embedding.

The raw-input kNN baseline is computed once, on the same split and with the same vote, so the
learned embedding is always shown beside what the inputs alone give.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dist_contrast.analysis import (
    alignment,
    is_collapsed,
    knn_accuracy,
    linear_probe_accuracy,
    local_separation,
    mean_pairwise_similarity,
    negative_similarities,
    tolerance,
    uniformity,
)
from dist_contrast.config import Config
from dist_contrast.data import DataBundle
from dist_contrast.train.retrieval_eval import RetrievalEvaluator


def _take(
    split: tuple[torch.Tensor, torch.Tensor | None], limit: int
) -> tuple[torch.Tensor, torch.Tensor | None]:
    features, labels = split
    features = features[:limit]
    return features, (labels[:limit] if labels is not None else None)


class Evaluator:
    """Embeds the held-out splits with the current encoder and measures it."""

    def __init__(self, cfg: Config, data: DataBundle, device: torch.device) -> None:
        self.cfg = cfg
        self.device = device
        self.memory = _take(data.eval_train, cfg.eval.max_samples)
        self.queries = _take(data.eval_test, cfg.eval.max_samples)
        self.train_set = data.train
        # Text pairs are evaluated as retrieval (held-out queries against their corpus).
        self.retrieval = (RetrievalEvaluator(data.retrieval, device)
                          if data.retrieval is not None else None)
        self._last_test_embedding: torch.Tensor | None = None
        # Positive and (sampled) negative similarities of the last eval's view pairs: ~5k
        # floats for the end-of-run histogram.
        self._last_pair_similarities: tuple[torch.Tensor, torch.Tensor] | None = None

    @property
    def has_labels(self) -> bool:
        return self.memory[1] is not None and self.queries[1] is not None

    @torch.no_grad()
    def embed(self, model: nn.Module, features: torch.Tensor, batch: int = 1024) -> torch.Tensor:
        was_training = model.training
        model.eval()
        dtype = next(model.parameters()).dtype
        parts = [
            model(features[i : i + batch].to(self.device, dtype)).float().cpu()
            for i in range(0, len(features), batch)
        ]
        model.train(was_training)
        return torch.cat(parts)

    def _knn(self, memory: torch.Tensor, queries: torch.Tensor) -> float:
        assert self.memory[1] is not None and self.queries[1] is not None
        return knn_accuracy(
            memory,
            self.memory[1],
            queries,
            self.queries[1],
            k=self.cfg.eval.knn_k,
            temperature=self.cfg.eval.knn_temperature,
        )

    @property
    def baseline_key(self) -> str:
        """A metric the baseline logs (a resumed run that has it does not log it again)."""
        return "eval/bm25_mrr_at_10" if self.retrieval is not None else "eval/raw_knn_acc"

    def raw_baseline(self) -> dict[str, float]:
        """kNN accuracy of the raw inputs (flattened, L2-normalised): what learning must beat;
        for text pairs, BM25's retrieval metrics on the same split."""
        if self.retrieval is not None:
            return self.retrieval.baseline()
        if not self.has_labels:
            return {}
        memory = nn.functional.normalize(self.memory[0].flatten(1).float(), dim=1)
        queries = nn.functional.normalize(self.queries[0].flatten(1).float(), dim=1)
        return {"eval/raw_knn_acc": self._knn(memory, queries)}

    def _pair_embeddings(
        self, model: nn.Module, count: int = 1024
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Two augmented views of the first ``count`` training samples, embedded."""
        view1, view2 = self.train_set.views(range(min(count, len(self.train_set))), epoch=0)
        return self.embed(model, view1), self.embed(model, view2)

    def evaluate(self, model: nn.Module, step: int) -> dict[str, float]:
        """The eval metrics of the current encoder; only ``eval/nonfinite_embeddings`` (the
        share of non-finite rows) when the encoder puts out NaN or inf, which no metric or
        probe could use."""
        encoder: nn.Module = getattr(model, "encoder", model)
        if self.retrieval is not None:
            return self.retrieval.evaluate(encoder)
        test_embedding = self.embed(encoder, self.queries[0])
        nonfinite = float((~torch.isfinite(test_embedding).all(dim=1)).float().mean())
        if nonfinite > 0:
            return {"eval/nonfinite_embeddings": nonfinite}
        first, second = self._pair_embeddings(encoder)
        results = {
            "eval/alignment": float(alignment(first, second)),
            **self._separation_and_collapse(first, second, test_embedding),
            **self._class_metrics(encoder, test_embedding,
                                  probe=step == self.cfg.trainer.max_steps),
        }
        if _has_batch_norm(encoder):
            # The same metrics with BatchNorm statistics of the clean training inputs in place
            # of the running statistics of the augmented views the encoder trained on.
            clean = _with_clean_statistics(encoder, self.memory[0], self.device)
            clean_test = self.embed(clean, self.queries[0])
            results |= {key.replace("eval/", "eval/clean_bn/"): value for key, value in
                        self._class_metrics(clean, clean_test, probe=False).items()}
        self._last_test_embedding = test_embedding
        return results

    def _class_metrics(
        self, encoder: nn.Module, test_embedding: torch.Tensor, *, probe: bool
    ) -> dict[str, float]:
        """Uniformity (ours: lower = more uniform; and Wang & Liu's sign: higher = more
        uniform) and, with labels, kNN accuracy, tolerance, tolerance less the mean cosine
        similarity (classes together rather than everything together) and at ``probe`` the
        linear probe."""
        spread = float(uniformity(test_embedding))
        results = {"eval/uniformity": spread, "eval/uniformity_paper": -spread}
        if not self.has_labels:
            return results
        assert self.queries[1] is not None and self.memory[1] is not None
        memory_embedding = self.embed(encoder, self.memory[0])
        together = float(tolerance(test_embedding, self.queries[1]))
        results |= {
            "eval/knn_acc": self._knn(memory_embedding, test_embedding),
            "eval/tolerance": together,
            "eval/tolerance_minus_mean": together
            - float(mean_pairwise_similarity(test_embedding)),
        }
        if self.cfg.eval.linear_probe and probe:
            results["eval/linear_probe_acc"] = float(
                linear_probe_accuracy(
                    memory_embedding, self.memory[1], test_embedding, self.queries[1]
                )
            )
        return results

    def _separation_and_collapse(
        self, first: torch.Tensor, second: torch.Tensor, test_embedding: torch.Tensor,
        negatives_kept: int = 4096,
    ) -> dict[str, float]:
        """Local separation of the view pairs (positive: the other view of the same sample;
        negatives: the other samples' second views, as in ``eval/alignment``), the mean pairwise
        similarity of the test embedding and the collapse alarm.

        Shape:
            first, second: [n, D] (row i: two views of sample i). test_embedding: [m, D].
        """
        if first.shape[0] < 2:  # no negatives
            return {}
        positive, negative_sims = negative_similarities(first, second)
        separation = local_separation(positive, negative_sims)
        mean_similarity = float(mean_pairwise_similarity(test_embedding))
        positive_similarity = float(positive.mean())
        # A fixed generator: the kept sample is the same on a re-run and the run's RNG is untouched.
        generator = torch.Generator().manual_seed(0)
        flat = negative_sims.flatten().float()
        kept = flat[torch.randint(flat.numel(), (negatives_kept,), generator=generator)]
        self._last_pair_similarities = (positive.float().cpu(), kept.cpu())
        return {
            "eval/local_separation": float(separation.mean()),
            "eval/local_separation_p10": float(torch.quantile(separation.float(), 0.1)),
            "eval/positive_similarity": positive_similarity,
            "eval/mean_similarity": mean_similarity,
            "eval/collapsed": float(is_collapsed(mean_similarity, positive_similarity)),
        }

    def log_plots(self, tracker: Any) -> None:
        """Final figures as MLflow artifacts: the embedding next to the raw input, by class;
        histograms of the last eval's positive and negative similarities."""
        from dist_contrast.plots import plot_embeddings, plot_similarities

        if self._last_pair_similarities is not None:
            log_figure(tracker, plot_similarities(*self._last_pair_similarities),
                       "similarities.png")
        if self._last_test_embedding is None or not self.has_labels:
            return
        assert self.queries[1] is not None
        figure = plot_embeddings(
            raw=self.queries[0].flatten(1).float(),
            learned=self._last_test_embedding,
            labels=self.queries[1],
        )
        log_figure(tracker, figure, "embeddings.png")


def _has_batch_norm(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


@torch.no_grad()
def _with_clean_statistics(
    encoder: nn.Module, inputs: torch.Tensor, device: torch.device
) -> nn.Module:
    """A copy of ``encoder`` whose BatchNorm layers hold the mean and variance of ``inputs``
    (clean, un-augmented rows; ``eval.max_samples`` of them, in one pass) instead of running
    averages over the training views. The encoder itself is untouched."""
    import copy

    clean = copy.deepcopy(encoder)
    norms = [m for m in clean.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # a cumulative average: the statistics of all the rows
    clean.train()
    clean(inputs.to(device, next(clean.parameters()).dtype))
    return clean.eval()


def log_figure(tracker: Any, figure: Any, filename: str) -> None:
    """Save a matplotlib figure as the run artifact ``plots/<filename>`` and close it."""
    import matplotlib.pyplot as plt

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / filename
        figure.savefig(path, dpi=110, bbox_inches="tight")
        tracker.log_artifact(path, "plots")
    plt.close(figure)
