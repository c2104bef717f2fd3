"""What the end-of-run relative-penalty figure needs, kept small during training (rank 0)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from dist_contrast.analysis import sample_relative_penalty


@dataclass(frozen=True)
class PenaltySnapshot:
    """A sample of one diagnosed batch's negative similarities and relative penalties.

    Shape:
        sims, penalty: [R, M] (R whole query rows while they fit, see
        ``sample_relative_penalty``).
    """

    step: int
    temperature: float
    sims: torch.Tensor
    penalty: torch.Tensor


@dataclass
class PenaltySnapshots:
    """The snapshots at the first diagnosed step, the one nearest ``max_steps / 2`` and the
    latest: at most three of ``max_points`` (s, r) pairs each between evals."""

    max_steps: int
    max_points: int = 2000
    start: PenaltySnapshot | None = None
    middle: PenaltySnapshot | None = None
    end: PenaltySnapshot | None = None

    def offer(self, step: int, negative_sims: torch.Tensor, temperature: torch.Tensor) -> None:
        """Keep a sample of step ``step``'s batch where it is the start, nearer the middle, or
        the latest.

        Shape:
            negative_sims: [B, N]. temperature: 0-dim.
        """
        # Seeded by the step: the same rows on a re-run, and the run's own RNG is not drawn from.
        generator = torch.Generator().manual_seed(step)
        sims, penalty = sample_relative_penalty(negative_sims, temperature.detach(),
                                                self.max_points, generator)
        snapshot = PenaltySnapshot(step, float(temperature), sims, penalty)
        half = self.max_steps / 2
        if self.start is None:
            self.start = snapshot
        if self.middle is None or abs(step - half) < abs(self.middle.step - half):
            self.middle = snapshot
        self.end = snapshot

    def labelled(self) -> list[tuple[str, torch.Tensor, torch.Tensor]]:
        """(label, s, r) per distinct kept step, in step order, for ``plot_relative_penalty``."""
        kept = {s.step: s for s in (self.start, self.middle, self.end) if s is not None}
        return [(f"step {s.step}, τ={s.temperature:.3g}", s.sims, s.penalty)
                for _, s in sorted(kept.items())]
