"""A run's description on its MLflow page: what was trained (from the flattened config and the
training data), then, once it has ended, the outcome in one line."""

from __future__ import annotations

from collections.abc import Mapping

from dist_contrast.tracking.datasets import TrainingData

NOTE = "mlflow.note.content"
#: Starts the outcome paragraph of a run's description (replaced, not repeated, on a re-run).
OUTCOME = "**Outcome**: "


def _temperature(params: Mapping[str, str]) -> str:
    tau, mode = params.get("loss.temperature", "?"), params.get("loss.temperature_mode", "fixed")
    if mode == "cosine":
        return f"τ = {tau} → {params.get('loss.temperature_final', '?')} (cosine)"
    if mode == "learnable":
        bounds = f"{params.get('loss.temperature_min', '?')}, {params.get('loss.temperature_max')}"
        return f"τ = {tau} (learnable in [{bounds}])"
    return f"τ = {tau} ({mode})"


def _number(text: str | None) -> str:
    """``65536`` -> ``65,536``; anything else as given."""
    try:
        return f"{int(str(text)):,}"
    except ValueError:
        return str(text)


def describe_run(params: Mapping[str, str], data: TrainingData | None = None,
                 negatives: str | None = None) -> str:
    """The run's description (markdown, the run page's "Description"), from the flattened
    config, the training data and the negative sources as they describe themselves
    (``negatives``; default: the names in ``negatives.sources``)."""
    workers, batch = params.get("trainer.num_workers", "?"), params.get("trainer.batch_size", "?")
    try:
        global_batch = f"{int(workers) * int(batch):,}"
    except ValueError:
        global_batch = "?"
    data_line = params.get("data.name", "?")
    if data is not None:
        shape = " × ".join(str(d) for d in data.feature_shape)
        data_line = f"{data.name}: {data.rows:,} training rows × {shape} ({data.dtype})"
    return "\n".join([
        f"Contrastive training: `{params.get('loss.name', '?')}`, {_temperature(params)}.",
        "",
        f"- **Negatives**: {negatives or params.get('negatives.sources', '?')}",
        f"- **Data**: {data_line}",
        f"- **Model**: {params.get('model.name', '?')}, "
        f"{params.get('model.embedding_dim', '?')}-d embedding",
        f"- **Workers × batch**: {workers} × {batch} = {global_batch} per step",
        f"- **Steps**: {_number(params.get('trainer.max_steps'))}",
    ])


def describe_outcome(
    status: str, metrics: Mapping[str, float], reason: str | None = None
) -> str:
    """How the run ended, in one line: the final accuracies against the raw-input baseline,
    or where it stopped, or why it failed."""
    step = metrics.get("step")
    at = f" at step {int(step):,}" if step is not None else ""
    if status == "KILLED":
        return f"stopped{at}" if at else "stopped before the first step"
    if status != "FINISHED":
        line = (str(reason or "").strip().splitlines() or [""])[0][:300] or "no reason given"
        logged = f" (last step logged: {int(step):,})" if step is not None else ""
        return f"failed: {line}{logged}"
    parts = [f"finished{at}"]
    if "eval/knn_acc" in metrics:
        raw = metrics.get("eval/raw_knn_acc")
        baseline = f" (raw input {raw:.3f})" if raw is not None else ""
        parts.append(f"kNN accuracy **{metrics['eval/knn_acc']:.3f}**{baseline}")
    if "eval/linear_probe_acc" in metrics:
        parts.append(f"linear probe **{metrics['eval/linear_probe_acc']:.3f}**")
    if "eval/mrr_at_10" in metrics:
        bm25 = metrics.get("eval/bm25_mrr_at_10")
        baseline = f" (BM25 {bm25:.3f})" if bm25 is not None else ""
        parts.append(f"MRR@10 **{metrics['eval/mrr_at_10']:.3f}**{baseline}")
    return ", ".join(parts[:1]) + (": " + ", ".join(parts[1:]) if parts[1:] else "")
