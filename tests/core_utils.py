"""Small models and data shared by the core's tests (float64, deterministic)."""

from __future__ import annotations

import torch
from torch import nn


def tiny_model(seed: int = 0, bn: bool = False) -> nn.Module:
    torch.manual_seed(seed)
    layers: list[nn.Module] = [nn.Linear(5, 7)]
    if bn:
        layers.append(nn.BatchNorm1d(7))
    layers += [nn.Tanh(), nn.Linear(7, 3)]
    return nn.Sequential(*layers).double()


def tiny_data(n: int = 16, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 5, generator=g, dtype=torch.float64), torch.randint(
        0, 3, (n,), generator=g
    )


def loss_fn(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return nn.functional.cross_entropy(model(x), y)


def params_of(model: nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters()]


def sam_train(model, opt, steps: int, n: int = 16, start: int = 0, closure_api: bool = False):
    """``steps`` SAM-style steps on fresh batches (seeded by step index); returns losses."""
    losses = []
    for t in range(start, start + steps):
        x, y = tiny_data(n, seed=100 + t)
        opt.zero_grad()
        loss = loss_fn(model, x, y)
        loss.backward()
        if closure_api:

            def closure(x=x, y=y):
                lo = loss_fn(model, x, y)
                lo.backward()
                return lo

            opt.step(closure)
        else:
            if opt.first_step(zero_grad=True):
                loss_fn(model, x, y).backward()
            opt.second_step(zero_grad=True)
        losses.append(loss.item())
    return losses


class LaunchRecorder:
    """A suite.launch reporter (the protocol of make reproduce's display) that records, per run
    name, the action run_all took and its note."""

    def __init__(self) -> None:
        self.planned: list[list[str]] = []
        self.actions: dict[str, str] = {}
        self.notes: dict[str, str | None] = {}

    def runs_planned(self, stage, runs) -> None:
        self.planned.append([r.name for r in runs])

    def run_started(self, run) -> None:
        pass

    def run_ended(self, outcome) -> None:
        self.actions[outcome.name] = outcome.action
        self.notes[outcome.name] = outcome.note
