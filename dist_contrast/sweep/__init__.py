"""``dist-contrast sweep``: a grid of trainings (× seeds) as MLflow parent and child runs.

``grid.py`` expands and validates the trials (pure); ``runner.py`` runs them as Ray tasks, each
one ``TorchTrainer``, as many at a time as the cluster has room for.
"""

from dist_contrast.sweep.grid import Trial, expand, parse_grid
from dist_contrast.sweep.runner import SweepSummary, run_sweep, summary_lines, sweep_failed

__all__ = ["SweepSummary", "Trial", "expand", "parse_grid", "run_sweep", "summary_lines",
           "sweep_failed"]
