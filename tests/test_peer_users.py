"""What a user of davda54/sam, pytorch-optimizer or the official ASAM code brings to ``sharpness``
(issue 21): the official ASAM with normalization layers, davda54's spellings, checkpoints of both
peers, GradScaler with a closure, call-order mistakes, ``maximize=True``, sparse gradients and
``torch.compile`` of a bound step. References are written here from the peers' published rules,
in float64."""

from __future__ import annotations

import io
import math

import pytest
import torch
from pytorch_optimizer import SAM as PeerSAM
from torch import nn

from sharpness import SAM, LookSAM
from tests.core_utils import loss_fn, params_of, sam_train, tiny_data, tiny_model

DAVDA54_ASAM = dict(adaptive=True, eta=0.0, adaptive_weights_only=False)  # T = |w|, every tensor
LR, MOM = 0.1, 0.9


def norm_model(seed: int = 0) -> nn.Module:
    """Linear - BatchNorm - Tanh - Linear - LayerNorm - Linear: weights, biases and the two kinds
    of normalization weights the official ASAM rescales (it selects by name)."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Linear(5, 7),
        nn.BatchNorm1d(7),
        nn.Tanh(),
        nn.Linear(7, 6),
        nn.LayerNorm(6),
        nn.Linear(6, 3),
    ).double()


def _max_diff(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    return max((x - y).abs().max().item() for x, y in zip(a, b))


# ------------------------------------------------------------------------------------ ASAM
def official_asam(model: nn.Module, steps: int, rho: float, eta: float) -> list[torch.Tensor]:
    """SamsungLabs/ASAM's rule, written out: T_w = |w| + eta for every parameter whose name
    contains "weight", T = 1 for the others; e = rho T^2 g / (||T g|| + 1e-16) (one global norm);
    the gradient at w + e; w <- (w + e) - e; momentum SGD (lr 0.1, momentum 0.9)."""
    named = list(model.named_parameters())
    ps = [p for _, p in named]
    sgd = torch.optim.SGD(ps, lr=LR, momentum=MOM)
    for t in range(steps):
        x, y = tiny_data(seed=100 + t)
        g = torch.autograd.grad(loss_fn(model, x, y), ps)
        T = [p.detach().abs() + eta if "weight" in n else torch.ones_like(p) for n, p in named]
        norm = torch.sqrt(sum(((ti * gi) ** 2).sum() for ti, gi in zip(T, g))) + 1e-16
        es = [rho * ti * ti * gi / norm for ti, gi in zip(T, g)]
        with torch.no_grad():
            for p, e in zip(ps, es):
                p.add_(e)
        gs = torch.autograd.grad(loss_fn(model, x, y), ps)
        with torch.no_grad():
            for p, e, gi in zip(ps, es, gs):
                p.sub_(e)
                p.grad = gi
        sgd.step()
    return params_of(model)


def test_default_asam_is_the_official_asam_with_batch_and_layer_norm():
    """Issue 21: BN and LN weights were left unscaled (6.2e-3 off after 20 steps)."""
    ref = official_asam(norm_model(), 20, rho=0.5, eta=0.01)
    model = norm_model()
    # sam_eps=1e-16: the official code's constant (ours defaults to 1e-12, davda54's)
    opt = SAM(
        model.named_parameters(),
        torch.optim.SGD,
        rho=0.5,
        adaptive=True,
        eta=0.01,
        sam_eps=1e-16,
        lr=LR,
        momentum=MOM,
    )
    sam_train(model, opt, 20)
    diff = _max_diff(params_of(model), ref)
    print(f"ASAM vs the official rule with BN + LN, float64, 20 steps: {diff:.2e}")
    assert diff <= 1e-12
    moved = _max_diff(params_of(model), params_of(norm_model()))
    assert moved > 0.1  # the comparison is not between two models that barely moved


def test_asam_scales_exactly_the_tensors_named_weight():
    """One ascent by hand: T on 0.weight, 1.weight (BN), 3.weight, 4.weight (LN), 5.weight;
    none on the biases."""
    model = norm_model()
    opt = SAM(
        model.named_parameters(),
        torch.optim.SGD,
        rho=0.5,
        adaptive=True,
        eta=0.01,
        sam_eps=0.0,
        lr=LR,
    )
    x, y = tiny_data()
    loss_fn(model, x, y).backward()
    named = list(model.named_parameters())
    w0 = [p.detach().clone() for _, p in named]
    g = [p.grad.clone() for _, p in named]
    T = [w.abs() + 0.01 if "weight" in n else torch.ones_like(w) for (n, _), w in zip(named, w0)]
    norm = torch.sqrt(sum(((t * gi) ** 2).sum() for t, gi in zip(T, g)))
    opt.first_step()
    for (_, p), w, t, gi in zip(named, w0, T, g):
        torch.testing.assert_close(p.detach() - w, 0.5 * t * t * gi / norm, rtol=1e-10, atol=1e-15)
    opt.second_step()


def davda54_asam(model: nn.Module, steps: int, rho: float) -> list[torch.Tensor]:
    """davda54/sam's ``adaptive=True``: e = rho |w|^2 g / (|| |w| g || + 1e-12) on every tensor."""
    ps = list(model.parameters())
    sgd = torch.optim.SGD(ps, lr=LR, momentum=MOM)
    for t in range(steps):
        x, y = tiny_data(seed=100 + t)
        g = torch.autograd.grad(loss_fn(model, x, y), ps)
        w0 = [p.detach().clone() for p in ps]
        norm = torch.sqrt(sum(((w.abs() * gi) ** 2).sum() for w, gi in zip(w0, g)))
        with torch.no_grad():
            for p, w, gi in zip(ps, w0, g):
                p.add_(w * w * gi * rho / (norm + 1e-12))
        gs = torch.autograd.grad(loss_fn(model, x, y), ps)
        with torch.no_grad():
            for p, w, gi in zip(ps, w0, gs):
                p.copy_(w)
                p.grad = gi
        sgd.step()
    return params_of(model)


def test_davda54_adaptive_is_reachable_and_a_bare_adaptive_true_is_refused():
    """``adaptive=True`` alone meant a third ASAM (0.13 from davda54's over 20 steps); now it is
    refused with both spellings, and davda54's spelling gives davda54's ASAM."""
    model = norm_model()
    with pytest.raises(ValueError, match=r"eta=0, adaptive_weights_only=False.*") as err:
        SAM(model.parameters(), torch.optim.SGD, rho=2.0, adaptive=True, lr=LR)
    assert "named_parameters" in str(err.value) and "eta=0.01" in str(err.value)
    with pytest.raises(ValueError, match="named_parameters"):  # the official rule needs names
        SAM(model.parameters(), torch.optim.SGD, rho=0.5, adaptive=True, eta=0.01, lr=LR)
    with pytest.raises(ValueError, match="needs eta"):  # the same in a param group
        SAM([{"params": list(model.parameters()), "adaptive": True}], torch.optim.SGD, lr=LR)
    ref = davda54_asam(norm_model(), 20, rho=2.0)
    opt = SAM(model.parameters(), torch.optim.SGD, rho=2.0, lr=LR, momentum=MOM, **DAVDA54_ASAM)
    sam_train(model, opt, 20)
    assert _max_diff(params_of(model), ref) <= 1e-12


def test_davda54_positional_form_is_refused_with_the_spelling_to_use():
    with pytest.raises(ValueError, match=r"rho=0.05, adaptive=True, eta=0, adaptive_weights_only"):
        SAM(tiny_model().parameters(), torch.optim.SGD, 0.05, True)


def test_rho_is_read_and_scheduled_through_the_param_groups():
    """davda54 code reads ``param_groups[0]["rho"]`` (KeyError before) and schedules it."""
    model = tiny_model()
    opt = SAM(model.parameters(), torch.optim.SGD, rho=0.05, lr=LR)
    assert opt.param_groups[0]["rho"] == 0.05
    for g in opt.param_groups:
        g["rho"] *= 0.5
    x, y = tiny_data()
    loss_fn(model, x, y).backward()
    w0 = params_of(model)
    opt.first_step()
    e = torch.cat([(p.detach() - w).reshape(-1) for p, w in zip(model.parameters(), w0)])
    assert e.norm().item() == pytest.approx(0.025, rel=1e-9)
    opt.second_step()
    opt.param_groups[0]["sam_rho"] = 0.01  # our previous key, written by older code: still used
    assert opt._group_rho(opt.param_groups[0]) == 0.01 and opt.param_groups[0]["rho"] == 0.01


# ------------------------------------------------------------------------------ checkpoints
class Davda54SAM(torch.optim.Optimizer):
    """davda54/sam's SAM as published (sam.py): its own ``state`` holds ``old_p`` (a copy of
    every weight that had a gradient, kept after second_step), the groups hold ``rho`` and
    ``adaptive`` next to the base's options, and the base optimizer's state is not saved."""

    def __init__(self, params, base_optimizer, rho=0.05, adaptive=False, **kwargs):
        super().__init__(params, dict(rho=rho, adaptive=adaptive, **kwargs))
        self.base_optimizer = base_optimizer(self.param_groups, **kwargs)
        self.param_groups = self.base_optimizer.param_groups
        self.defaults.update(self.base_optimizer.defaults)

    @torch.no_grad()
    def first_step(self, zero_grad=False):
        norm = torch.norm(
            torch.stack(
                [
                    ((torch.abs(p) if g["adaptive"] else 1.0) * p.grad).norm(p=2)
                    for g in self.param_groups
                    for p in g["params"]
                    if p.grad is not None
                ]
            ),
            p=2,
        )
        for g in self.param_groups:
            scale = g["rho"] / (norm + 1e-12)
            for p in g["params"]:
                if p.grad is None:
                    continue
                self.state[p]["old_p"] = p.data.clone()
                p.add_((torch.pow(p, 2) if g["adaptive"] else 1.0) * p.grad * scale.to(p))
        if zero_grad:
            self.zero_grad()

    @torch.no_grad()
    def second_step(self, zero_grad=False):
        for g in self.param_groups:
            for p in g["params"]:
                if p.grad is not None:
                    p.data = self.state[p]["old_p"]
        self.base_optimizer.step()
        if zero_grad:
            self.zero_grad()


def peer_train(model, opt, steps: int, start: int = 0) -> None:
    """The peers' loop: their first_step returns None, so the second backward is unconditional
    (``sam_train`` runs it only when first_step returns True, LookSAM's contract)."""
    for t in range(start, start + steps):
        x, y = tiny_data(seed=100 + t)
        opt.zero_grad()
        loss_fn(model, x, y).backward()
        opt.first_step(zero_grad=True)
        loss_fn(model, x, y).backward()
        opt.second_step(zero_grad=True)


def _save_load(sd):
    buf = io.BytesIO()
    torch.save(sd, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


@pytest.mark.parametrize("peer", ["davda54", "pytorch-optimizer"])
@pytest.mark.parametrize("adaptive", [False, True])
def test_a_peer_checkpoint_loads_and_training_continues_as_the_resumed_peer(peer, adaptive):
    """Issue 21: with adaptive=True the next step raised KeyError 'eta'; davda54's ``old_p``
    weight copies stayed in the state (and every later checkpoint) for good."""
    rho = 0.5 if adaptive else 0.05
    cls = Davda54SAM if peer == "davda54" else PeerSAM
    m_peer = tiny_model()
    theirs = cls(
        m_peer.parameters(), torch.optim.SGD, rho=rho, adaptive=adaptive, lr=LR, momentum=MOM
    )
    peer_train(m_peer, theirs, 3)
    sd = _save_load(theirs.state_dict())
    if peer == "davda54":
        assert all(set(s) == {"old_p"} for s in sd["state"].values())  # the published layout
        # the reference: davda54 resumed from its checkpoint, which does not hold the base
        # optimizer's momentum (so ours cannot have it either); pytorch-optimizer's does, and
        # the reference is its uninterrupted run
        theirs = cls(m_peer.parameters(), torch.optim.SGD, rho=0.05, lr=LR, momentum=MOM)
        theirs.load_state_dict(sd)
    else:
        assert any("momentum_buffer" in s for s in sd["state"].values())
    m_ours = tiny_model()
    m_ours.load_state_dict(m_peer.state_dict())
    ours = SAM(
        m_ours.parameters(),
        torch.optim.SGD,
        rho=0.05,
        lr=LR,
        momentum=MOM,
        **(DAVDA54_ASAM if adaptive else {}),
    )
    fresh_keys = set(ours.state_dict()["param_groups"][0])
    ours.load_state_dict(sd)
    assert ours.param_groups[0]["rho"] == rho and ours.param_groups[0]["adaptive"] is adaptive
    # every option of ours is in the loaded groups (a later write of adaptive, a checkpoint of
    # ours saved from here) and nothing of the peers' scratch is
    assert fresh_keys <= set(ours.state_dict()["param_groups"][0])
    peer_train(m_peer, theirs, 3, start=3)
    peer_train(m_ours, ours, 3, start=3)
    # pytorch-optimizer sums the squared norm in float32 (tests/test_oracle.py): ~1e-10 here
    tol = 1e-12 if peer == "davda54" else 1e-8
    assert _max_diff(params_of(m_ours), params_of(m_peer)) <= tol
    assert not any("old_p" in s for s in ours.state_dict()["state"].values())


def test_a_peer_asam_checkpoint_into_an_official_asam_warns_and_loads_their_asam():
    m = tiny_model()
    peer = PeerSAM(m.parameters(), torch.optim.SGD, rho=0.5, adaptive=True, lr=LR)
    peer_train(m, peer, 1)
    ours = SAM(m.named_parameters(), torch.optim.SGD, rho=0.5, adaptive=True, eta=0.01, lr=LR)
    with pytest.warns(UserWarning, match="eta=0, adaptive_weights_only=False"):
        ours.load_state_dict(_save_load(peer.state_dict()))
    assert ours.param_groups[0]["eta"] == 0.0 and not ours.param_groups[0]["adaptive_weights_only"]


# ------------------------------------------------------------------------- GradScaler, order
def _closure(model, x, y, scaler=None):
    def closure():
        loss = loss_fn(model, x, y)
        (scaler.scale(loss) if scaler is not None else loss).backward()
        return loss

    return closure


@pytest.mark.parametrize("wrapper", [SAM, LookSAM])
def test_scaler_step_with_a_closure_is_refused_and_step_with_scaler_is_exact(wrapper):
    """``scaler.step(opt, closure)`` stepped with the still-scaled second gradient (358 off on a
    toy); now it names the spelling that works, which equals the run without a scaler."""
    # sam_eps=0: a power-of-two loss scale is then exact in every norm and ratio (bit for bit)
    kw = dict(rho=0.05, lr=LR, momentum=MOM, sam_eps=0.0)
    kw.update({"k": 2} if wrapper is LookSAM else {})
    m1, m2 = tiny_model(), tiny_model()
    o1, o2 = (
        wrapper(m1.parameters(), torch.optim.SGD, **kw),
        wrapper(m2.parameters(), torch.optim.SGD, **kw),
    )
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12)
    x, y = tiny_data()
    scaler.scale(loss_fn(m1, x, y)).backward()
    w0 = params_of(m1)
    with pytest.raises(RuntimeError, match=r"opt.step\(closure, scaler=scaler\)"):
        scaler.step(o1, _closure(m1, x, y, scaler))
    assert _max_diff(params_of(m1), w0) == 0.0  # refused before touching the weights
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12)
    for t in range(5):
        x, y = tiny_data(seed=100 + t)
        for m, o, s in ((m1, o1, scaler), (m2, o2, None)):
            o.zero_grad()
            loss = loss_fn(m, x, y)
            (s.scale(loss) if s is not None else loss).backward()
            o.step(_closure(m, x, y, s), scaler=s)
        scaler.update()
    assert _max_diff(params_of(m1), params_of(m2)) == 0.0


@pytest.mark.parametrize("wrapper", [SAM, LookSAM])
def test_second_step_without_first_step_is_refused(wrapper):
    """It silently took a plain base step (LookSAM: dropped that step's ascent)."""
    model = tiny_model()
    opt = wrapper(model.parameters(), torch.optim.SGD, rho=0.05, lr=LR)
    x, y = tiny_data()
    w0 = params_of(model)
    loss_fn(model, x, y).backward()
    with pytest.raises(RuntimeError, match="second_step called without first_step"):
        opt.second_step()
    assert _max_diff(params_of(model), w0) == 0.0
    sam_train(model, opt, 3)  # the right order still works, on ascent and reuse steps
    loss_fn(model, x, y).backward()
    opt.first_step(zero_grad=True)
    loss_fn(model, x, y).backward()
    opt.second_step()
    with pytest.raises(RuntimeError, match="without first_step"):
        opt.second_step()


@pytest.mark.parametrize("wrapper", [SAM, LookSAM])
def test_maximize_true_perturbs_towards_lower_loss(wrapper):
    """SAM around SGD(maximize=True) on L is SAM around SGD on -L (the ascent used to go along
    +grad L, the wrong way)."""
    kw = dict(rho=0.1, lr=LR, momentum=MOM, **({"k": 2} if wrapper is LookSAM else {}))
    m1, m2 = tiny_model(), tiny_model()
    o1 = wrapper(m1.parameters(), torch.optim.SGD, maximize=True, **kw)
    o2 = wrapper(m2.parameters(), torch.optim.SGD, **kw)
    for t in range(6):
        x, y = tiny_data(seed=100 + t)
        for m, o, sign in ((m1, o1, 1.0), (m2, o2, -1.0)):
            o.zero_grad()
            (sign * loss_fn(m, x, y)).backward()
            o.step(lambda m=m, sign=sign, x=x, y=y: (sign * loss_fn(m, x, y)).backward())
    assert _max_diff(params_of(m1), params_of(m2)) <= 1e-12
    ps = list(tiny_model().parameters())
    opt = SAM([{"params": ps[:2], "maximize": True}, {"params": ps[2:]}], torch.optim.SGD, lr=LR)
    for p in ps:
        p.grad = torch.ones_like(p)
    with pytest.raises(ValueError, match="maximize"):
        opt.first_step()


# ------------------------------------------------------------------------------- sparse
class EmbedNet(nn.Module):
    def __init__(self, sparse: bool) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.emb = nn.Embedding(10, 4, sparse=sparse)
        self.out = nn.Linear(4, 3)

    def forward(self, idx):
        return self.out(torch.tanh(self.emb(idx)))


def _train_embed(model, opt, steps):
    for t in range(steps):
        g = torch.Generator().manual_seed(100 + t)
        idx, y = torch.randint(0, 6, (8,), generator=g), torch.randint(0, 3, (8,), generator=g)
        opt.zero_grad()
        nn.functional.cross_entropy(model(idx), y).backward()
        opt.first_step(zero_grad=True)
        nn.functional.cross_entropy(model(idx), y).backward()
        opt.second_step()


@pytest.mark.parametrize("foreach", [True, False])
@pytest.mark.parametrize("extra", [{}, DAVDA54_ASAM, dict(p=math.inf)])
def test_sparse_gradients_match_the_same_model_with_dense_ones(foreach, extra):
    """nn.Embedding(sparse=True) raised "copy_() between dense and sparse"; davda54 handles it."""
    models = [EmbedNet(sparse=s).double() for s in (True, False)]
    for m in models:
        opt = SAM(m.parameters(), torch.optim.SGD, rho=0.1, lr=LR, sam_foreach=foreach, **extra)
        _train_embed(m, opt, 5)
    assert _max_diff(params_of(models[0]), params_of(models[1])) <= 1e-12


def test_looksam_refuses_sparse_gradients_naming_the_parameter():
    model = EmbedNet(sparse=True).double()
    opt = LookSAM(model.named_parameters(), torch.optim.SGD, rho=0.1, lr=LR)
    with pytest.raises(ValueError, match=r"'emb.weight' \(shape \(10, 4\)\) has a sparse gradient"):
        _train_embed(model, opt, 1)


# ------------------------------------------------------------------------------ torch.compile
@pytest.mark.parametrize("wrapper", [SAM, LookSAM])
def test_compiled_bound_second_step_follows_eager(wrapper):
    """``torch.compile(opt.second_step)`` lost the optimizer's own bookkeeping (the next
    first_step raised "perturb called twice"); it now lives where compile keeps it."""
    kw = dict(rho=0.05, lr=LR, momentum=MOM, **({"k": 2} if wrapper is LookSAM else {}))
    m1, m2 = tiny_model(), tiny_model()
    o1, o2 = (wrapper(m.parameters(), torch.optim.SGD, **kw) for m in (m1, m2))
    second = torch.compile(o1.second_step, backend="eager")
    for t in range(4):
        x, y = tiny_data(seed=100 + t)
        for m, o, step in ((m1, o1, second), (m2, o2, o2.second_step)):
            loss_fn(m, x, y).backward()
            if o.first_step(zero_grad=True):
                loss_fn(m, x, y).backward()
            step(zero_grad=True)
    assert _max_diff(params_of(m1), params_of(m2)) <= 1e-12
    if wrapper is LookSAM:
        assert o1.looksam_step == 4
