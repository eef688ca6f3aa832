"""Local training of a SmolVLA policy: AdamW, warmup + cosine LR, gradient clipping, optional FedProx term.

Knows nothing of Flower: it takes a policy, its pre-processor, a dataset and settings, and returns metrics.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from app.common.config import lr_factor

if TYPE_CHECKING:
    import torch
    from torch.utils.data import Dataset


@dataclass(frozen=True)
class TrainSettings:
    steps: int
    batch_size: int = 8
    lr: float = 1e-4
    lr_min_ratio: float = 0.1  # the cosine decays to lr * lr_min_ratio at the last step
    warmup_steps: int = 0
    weight_decay: float = 1e-10
    grad_clip_norm: float = 10.0
    proximal_mu: float = 0.0
    seed: int = 0
    num_workers: int = 0


@dataclass
class TrainResult:
    loss: float  # mean policy loss over all steps (without the proximal term)
    losses: list[float] = field(default_factory=list)  # per step
    samples: int = 0
    steps: int = 0
    seconds: float = 0.0
    optimizer_state: dict | None = None  # AdamW's per-parameter state after the last step (its moments)


def make_loader(dataset: Dataset, batch_size: int, seed: int, shuffle: bool, num_workers: int = 0):
    import torch

    generator = torch.Generator().manual_seed(seed)
    return torch.utils.data.DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        generator=generator,
        num_workers=num_workers,
        drop_last=False,
        persistent_workers=num_workers > 0,
    )


def proximal_term(params: dict[str, torch.Tensor], reference: dict[str, torch.Tensor]) -> torch.Tensor:
    """FedProx's ||w - w_global||^2 over the trainable parameters (Li et al., 2018)."""
    return sum(((params[name] - ref) ** 2).sum() for name, ref in reference.items())


def _batches(loader):
    """Loop over the loader forever, one epoch after another."""
    while True:
        yield from loader


def train(
    policy: torch.nn.Module,
    preprocessor: Callable[[dict], dict],
    dataset: Dataset,
    settings: TrainSettings,
    reference: dict[str, torch.Tensor] | None = None,
    on_step: Callable[[int, float], None] | None = None,
    optimizer_state: dict | None = None,
) -> TrainResult:
    """Run `settings.steps` optimizer steps; with `settings.proximal_mu > 0`, pull towards `reference`. AdamW starts
    from `optimizer_state` (an earlier result's) when given, else afresh; this call's settings (lr, weight decay)
    apply either way."""
    import torch

    torch.manual_seed(settings.seed)
    trainable = {name: p for name, p in policy.named_parameters() if p.requires_grad}
    optimizer = torch.optim.AdamW(trainable.values(), lr=settings.lr, weight_decay=settings.weight_decay)
    if optimizer_state is not None:  # the moments only: the param groups (lr and the rest) are this call's
        optimizer.load_state_dict({"state": optimizer_state, "param_groups": optimizer.state_dict()["param_groups"]})
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, settings.steps, settings.warmup_steps, settings.lr_min_ratio)
    )
    use_prox = settings.proximal_mu > 0 and reference is not None
    if use_prox:
        # A copy: the caller may pass views of the live parameters, which would move along with training.
        reference = {name: ref.detach().to(trainable[name].device, copy=True) for name, ref in reference.items()}
    loader = make_loader(dataset, settings.batch_size, settings.seed, shuffle=True, num_workers=settings.num_workers)
    result = TrainResult(loss=float("nan"))
    policy.train()
    start = time.perf_counter()
    for step, batch in zip(range(settings.steps), _batches(loader)):
        batch = preprocessor(batch)
        loss, _ = policy.forward(batch)
        total = loss + settings.proximal_mu / 2 * proximal_term(trainable, reference) if use_prox else loss
        if not torch.isfinite(total):
            raise FloatingPointError(f"training diverged: the loss became {total.item()} at step {step} with "
                                     f"lr={settings.lr:g}; lower lr (or grad-clip-norm) in the run-config")
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        torch.nn.utils.clip_grad_norm_(trainable.values(), settings.grad_clip_norm)
        optimizer.step()
        scheduler.step()
        result.losses.append(loss.item())
        result.samples += len(batch["action"])
        result.steps += 1
        if on_step is not None:
            on_step(step, result.losses[-1])
    result.seconds = time.perf_counter() - start
    result.loss = sum(result.losses) / max(1, len(result.losses))
    result.optimizer_state = optimizer.state_dict()["state"]
    return result
