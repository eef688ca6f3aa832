"""Held-out evaluation: the mean SmolVLA flow-matching loss over a dataset, reproducible from a seed.

SmolVLA's loss depends on noise and flow time drawn at every forward pass, so two evaluations of the same
weights would differ. Evaluation draws them from a private RNG seeded once, over batches in a fixed order, so
the same weights give the same number here, on the server, and after a checkpoint is reloaded.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from app.learning.train import make_loader

if TYPE_CHECKING:
    import torch
    from torch.utils.data import Dataset

EVAL_SEED = 1234


@dataclass(frozen=True)
class EvalResult:
    loss: float
    samples: int


def evaluate(
    policy: torch.nn.Module,
    preprocessor: Callable[[dict], dict],
    dataset: Dataset,
    batch_size: int = 16,
    seed: int = EVAL_SEED,
) -> EvalResult:
    import torch

    loader = make_loader(dataset, batch_size, seed, shuffle=False)
    policy.eval()
    weighted_loss, samples = 0.0, 0
    # fork_rng leaves the caller's random state untouched, so evaluating mid-training changes nothing.
    with torch.no_grad(), torch.random.fork_rng():
        torch.manual_seed(seed)
        for batch in loader:
            batch = preprocessor(batch)
            loss, _ = policy.forward(batch)
            n = len(batch["action"])
            weighted_loss += loss.item() * n
            samples += n
    policy.train()
    return EvalResult(loss=weighted_loss / max(1, samples), samples=samples)
