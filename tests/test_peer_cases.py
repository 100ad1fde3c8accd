"""pytorch-optimizer's own SAM test cases, adapted to run against ``sharpness.SAM`` / ``LookSAM``
(written here from what its tests check: tests/test_wrapper_optimizers.py ``test_sam_optimizer``
and ``..._with_closure``, tests/test_gradients.py ``test_sam_no_gradient``,
tests/test_optimizer_parameters.py ``test_sam_family_methods``). Their data, model, loss, base
optimizers, learning rate, iteration counts and loss-decrease thresholds are kept; where our API
differs on purpose, the test says so.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pytorch_optimizer import load_optimizer
from torch import nn

from sharpness import SAM, LookSAM


def environment(num_samples: int = 100, dims: int = 2, seed: int = 42):
    """Their ``environment`` fixture: two Gaussian blobs at -2 and +2, labels 0 / 1."""
    torch.manual_seed(42)
    rng = np.random.RandomState(seed)
    x = rng.randn(num_samples, dims) * 2
    mid = num_samples // 2
    x[:mid, :] = x[:mid, :] - 2 * np.ones((mid, dims))
    x[mid:, :] = x[mid:, :] + 2 * np.ones((mid, dims))
    y = np.array([0] * mid + [1] * mid).reshape(100, 1)
    return torch.Tensor(x), torch.Tensor(y)


class LogisticRegression(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(2, 2)
        self.fc2 = nn.Linear(2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(x)))


def build_model():
    torch.manual_seed(42)
    return LogisticRegression(), nn.BCEWithLogitsLoss()


def compute_loss(model, loss_fn, x, y):
    # Their Trainer's compute_loss(swap_args=True): loss_fn(y_data, y_pred), as they do it.
    return loss_fn(y, model(x))


def their_asam(adaptive):
    """Their ``adaptive=True`` is T = |w| on every tensor; ours needs that spelled out (a bare
    ``adaptive=True`` is refused, naming this spelling and the official ASAM's)."""
    return dict(adaptive=True, eta=0.0, adaptive_weights_only=False) if adaptive else {}


def assert_loss_decreased(init_loss, loss, threshold):
    assert init_loss.item() > threshold * loss.item(), (init_loss.item(), loss.item())


@pytest.mark.parametrize("adaptive", [True, False])
@pytest.mark.parametrize("wrapper", [SAM, LookSAM])
def test_sam_optimizer(adaptive, wrapper):
    """Their ``run_sam_style``: the two-call loop with an unconditional second backward (for
    LookSAM too: it must be correct under that loop), base ASGD (pytorch-optimizer's), lr 0.5,
    3 iterations, the loss divided by more than 2. ``use_gc`` (their wrappers' gradient
    centralization) is not ours: it goes to the base optimizer unchanged, whose **kwargs take it."""
    x, y = environment()
    model, loss_fn = build_model()
    opt = wrapper(
        model.parameters(), load_optimizer("asgd"), lr=5e-1, **their_asam(adaptive), use_gc=True
    )
    init_loss = loss = None
    for _ in range(3):
        loss = compute_loss(model, loss_fn, x, y)
        loss.backward()
        opt.first_step(zero_grad=True)
        compute_loss(model, loss_fn, x, y).backward()
        opt.second_step(zero_grad=True)
        init_loss = init_loss if init_loss is not None else loss
    assert_loss_decreased(init_loss, loss, 2.0)


@pytest.mark.parametrize("adaptive", [True, False])
@pytest.mark.parametrize("wrapper", [SAM, LookSAM])
def test_sam_optimizer_with_closure(adaptive, wrapper):
    """Their ``run_with_closure``: backward, ``step(closure)``, ``zero_grad``; base AdamW."""
    x, y = environment()
    model, loss_fn = build_model()
    opt = wrapper(model.parameters(), load_optimizer("adamw"), lr=5e-1, **their_asam(adaptive))
    calls = []

    def closure():
        calls.append(1)
        first_loss = compute_loss(model, loss_fn, x, y)
        first_loss.backward()
        return first_loss

    init_loss = loss = None
    for _ in range(3):
        loss = compute_loss(model, loss_fn, x, y)
        loss.backward()
        opt.step(closure)
        opt.zero_grad()
        init_loss = init_loss if init_loss is not None else loss
    assert_loss_decreased(init_loss, loss, 2.0)
    # Ours on purpose: LookSAM skips the second pass on k-1 of every k steps (theirs runs the
    # closure every step); k = 5, steps 0..2 -> one ascent.
    assert len(calls) == (3 if wrapper is SAM else 1)


@pytest.mark.parametrize("wrapper", [SAM, LookSAM])
def test_sam_no_gradient(wrapper):
    """A frozen parameter (no gradient) with base AdamP: no error (their check), and (ours) the
    frozen tensor stays exactly as it was while the others move."""
    x, y = environment()
    model, loss_fn = build_model()
    model.fc1.weight.requires_grad = False
    model.fc1.weight.grad = None
    frozen = model.fc1.weight.detach().clone()
    others = [p.detach().clone() for p in model.parameters() if p.requires_grad]
    opt = wrapper(model.parameters(), load_optimizer("adamp"))
    opt.zero_grad()
    for _ in range(2):
        compute_loss(model, loss_fn, x, y).backward()
        opt.first_step(zero_grad=True)
        compute_loss(model, loss_fn, x, y).backward()
        opt.second_step(zero_grad=True)
    assert torch.equal(model.fc1.weight.detach(), frozen)
    moved = [p for p in model.parameters() if p.requires_grad]
    assert all(not torch.equal(a.detach(), b) for a, b in zip(moved, others))


@pytest.mark.parametrize("wrapper", [SAM, LookSAM])
def test_sam_family_methods(wrapper):
    """Their method smoke test with base Lion: zero_grad, adding an empty group (theirs is
    ``init_group``; ours the torch name ``add_param_group``), a state_dict round trip, step()
    without a closure and a negative rho are errors. Ours on purpose: no ``model`` / ``num_data``
    arguments (SAM and LookSAM need neither), and the missing closure is a ValueError (theirs is
    their own NoClosureError)."""
    param = torch.zeros(1, 1).requires_grad_(True)
    param.grad = torch.zeros(1, 1)
    opt = wrapper([param], load_optimizer("lion"))
    opt.zero_grad()
    opt.add_param_group({"params": []})
    assert len(opt.param_groups) == 2 and opt.param_groups[1]["rho"] == 0.05
    opt.load_state_dict(opt.state_dict())
    with pytest.raises(ValueError, match="closure"):
        opt.step()
    with pytest.raises(ValueError, match="rho"):
        wrapper([param], load_optimizer("lion"), rho=-0.1)
