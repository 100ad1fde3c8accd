"""Keywords reach the optimizer they belong to (issue 8, item 1), and the wrappers validate every
way an option can arrive: constructor, param groups, add_param_group, checkpoints (item 9).

The rule: every keyword the base optimizer accepts goes to it unchanged; the wrappers' own options
have names no torch.optim optimizer uses; ``rho`` (SAM) and ``alpha`` (LookSAM) are the familiar
aliases, refused as ambiguous with a base optimizer that has an option of the same name.
"""

from __future__ import annotations

import inspect
import io
import math
import warnings

import pytest
import torch
from torch import nn

from sharpness import SAM, LookSAM
from sharpness._options import GROUP_OPTIONS, LOOKSAM_GLOBAL_OPTIONS, SAM_GLOBAL_OPTIONS
from tests.core_utils import loss_fn, params_of, sam_train, tiny_data, tiny_model

OPTIMIZERS = sorted(
    (
        c
        for c in vars(torch.optim).values()
        if isinstance(c, type)
        and issubclass(c, torch.optim.Optimizer)
        and c is not torch.optim.Optimizer
    ),
    key=lambda c: c.__name__,
)
WRAPPER_NAMES = set(GROUP_OPTIONS) | set(SAM_GLOBAL_OPTIONS) | set(LOOKSAM_GLOBAL_OPTIONS)
ALIASES = {"rho": "sam_rho", "alpha": "looksam_alpha"}  # familiar name -> unambiguous name


def _params():
    torch.manual_seed(0)
    return [nn.Parameter(torch.randn(3, 4)), nn.Parameter(torch.randn(2, 3))]  # 2-D (Muon)


def _keywords(cls) -> dict[str, inspect.Parameter]:
    return {n: p for n, p in inspect.signature(cls).parameters.items() if n != "params"}


# Options whose default (None) says "choose for me", and options valid only with a companion.
NONE_DEFAULTS = {
    "foreach": False,
    "fused": False,
    "max_eval": 7,
    "line_search_fn": "strong_wolfe",
    "adjust_lr_fn": "match_rms_adamw",
}
COMPANIONS = {"nesterov": {"momentum": 0.9}}


def _other_value(name: str, default):
    """A valid value different from an option's default."""
    if default is None or default is inspect.Parameter.empty:
        return NONE_DEFAULTS.get(name)
    if isinstance(default, bool):
        return not default
    if isinstance(default, int):
        return default + 1
    if isinstance(default, float):
        return default * 2 if default >= 1 else default * 0.5 if default else 0.01
    if isinstance(default, tuple):
        return tuple(None if v is None else v * 0.9 for v in default)
    return None


def test_torch_optim_has_the_optimizers_we_think():
    names = {c.__name__ for c in OPTIMIZERS}
    assert {"SGD", "Adam", "AdamW", "Adadelta", "RMSprop", "ASGD", "Rprop", "LBFGS"} <= names


@pytest.mark.parametrize("cls", OPTIMIZERS, ids=lambda c: c.__name__)
def test_wrapper_option_names_collide_with_no_torch_optimizer(cls):
    """Neither a constructor keyword nor a param-group key of any torch.optim optimizer."""
    base = cls(_params())
    used = set(_keywords(cls)) | set(base.defaults) | set(base.param_groups[0])
    assert not (WRAPPER_NAMES & used), WRAPPER_NAMES & used
    for alias in set(ALIASES) & used:  # the aliases collide only where the ambiguity rule acts
        assert (cls, alias) in {
            (torch.optim.Adadelta, "rho"),
            (torch.optim.RMSprop, "alpha"),
            (torch.optim.ASGD, "alpha"),
        }


def _walk(cls):
    """(keyword, keywords to pass) for every keyword of ``cls``, with a non-default value."""
    for name, prm in _keywords(cls).items():
        value = _other_value(name, prm.default)
        assert value is not None, f"no test value for {cls.__name__}({name}=...)"
        yield name, {name: value, **COMPANIONS.get(name, {})}


def _same_groups(a: torch.optim.Optimizer, b: torch.optim.Optimizer) -> None:
    for ga, gb in zip(a.param_groups, b.param_groups):
        for k, v in gb.items():
            if k != "params":
                assert ga[k] == v, (k, ga[k], v)


@pytest.mark.parametrize("cls", OPTIMIZERS, ids=lambda c: c.__name__)
@pytest.mark.parametrize("wrapper", [SAM, LookSAM])
def test_every_base_keyword_reaches_the_base_optimizer_unchanged(wrapper, cls):
    """Each keyword alone, with a non-default value: the wrapped base optimizer's groups and
    defaults equal those of the same optimizer built directly (or both constructions fail)."""
    walked = 0
    for name, kw in _walk(cls):
        value = kw[name]
        try:
            direct = cls(_params(), **kw)
        except Exception as err:  # an invalid combination alone (e.g. nesterov without momentum)
            with pytest.raises(type(err)):
                wrapper(_params(), cls, **kw)
            continue
        extra = {}
        if name in ALIASES:  # Adadelta's rho, RMSprop's / ASGD's alpha: the alias is ambiguous
            if name == "alpha" and wrapper is SAM:
                pass  # SAM has no alpha: RMSprop's alpha simply goes to RMSprop
            else:
                with pytest.raises(ValueError, match=f"ambiguous.*{ALIASES[name]}="):
                    wrapper(_params(), cls, **kw)
                extra = {ALIASES[name]: 0.123}
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # no legacy-alias warning for a base keyword
            opt = wrapper(_params(), cls, **kw, **extra)
        assert opt.base_optimizer.defaults[name] == value
        _same_groups(opt.base_optimizer, direct)
        assert {k: v for k, v in opt.base_optimizer.defaults.items()} == direct.defaults
        if extra:
            if "sam_rho" in extra:
                assert opt.param_groups[0]["sam_rho"] == 0.123
            else:
                assert opt.alpha == 0.123
        walked += 1
    assert walked == len(_keywords(cls))


def test_adam_eps_and_foreach_go_to_adam():
    """The issue's example: SAM(params, Adam, lr=1e-3, eps=1e-6) used to leave Adam at 1e-8."""
    opt = SAM(_params(), torch.optim.Adam, lr=1e-3, eps=1e-6, foreach=False)
    assert opt.base_optimizer.param_groups[0]["eps"] == 1e-6
    assert opt.base_optimizer.param_groups[0]["foreach"] is False
    assert opt.eps == 1e-12 and opt.foreach is None  # SAM's own stay at their defaults
    opt = SAM(_params(), torch.optim.Adam, lr=1e-3, eps=1e-6, sam_eps=0.0, sam_foreach=False)
    assert opt.eps == 0.0 and opt.foreach is False
    assert opt.base_optimizer.param_groups[0]["eps"] == 1e-6


def test_adam_eps_changes_the_trajectory_like_plain_adam():
    """Behaviour, not only the stored value: SAM with rho=0 around Adam(eps=0.1) follows
    Adam(eps=0.1) bit for bit, and not Adam's default eps."""
    m1, m2, m3 = tiny_model(), tiny_model(), tiny_model()
    sam = SAM(m1.parameters(), torch.optim.Adam, rho=0.0, lr=0.01, eps=0.1)
    sam_train(m1, sam, 5)
    for m, eps in ((m2, 0.1), (m3, 1e-8)):
        opt = torch.optim.Adam(m.parameters(), lr=0.01, eps=eps)
        for t in range(5):
            x, y = tiny_data(seed=100 + t)
            opt.zero_grad()
            loss_fn(m, x, y).backward()
            opt.step()
    assert all(torch.equal(a, b) for a, b in zip(params_of(m1), params_of(m2)))
    assert not all(torch.equal(a, b) for a, b in zip(params_of(m1), params_of(m3)))


def test_adadelta_rho_is_ambiguous_and_each_rho_can_be_set():
    ps = _params()
    with pytest.raises(ValueError, match="Adadelta has its own 'rho'.*sam_rho="):
        SAM(ps, torch.optim.Adadelta, rho=0.05)
    with pytest.raises(ValueError, match="ambiguous"):
        LookSAM(ps, torch.optim.Adadelta, rho=0.05)
    opt = SAM(ps, torch.optim.Adadelta, sam_rho=0.05, rho=0.95, lr=1.0)
    assert opt.param_groups[0]["sam_rho"] == 0.05 and opt.param_groups[0]["rho"] == 0.95
    opt = SAM(ps, torch.optim.Adadelta, sam_rho=0.05)  # Adadelta's rho keeps its default
    assert opt.param_groups[0]["rho"] == torch.optim.Adadelta(_params()).defaults["rho"]
    # a param group's rho is Adadelta's too; SAM's per-group radius is sam_rho
    opt = SAM(
        [{"params": ps[:1], "rho": 0.5, "sam_rho": 0.0}, {"params": ps[1:]}],
        torch.optim.Adadelta,
        sam_rho=0.1,
    )
    assert [g["rho"] for g in opt.param_groups] == [0.5, 0.9]
    assert [g["sam_rho"] for g in opt.param_groups] == [0.0, 0.1]


def test_group_sam_rho_with_a_base_without_rho_is_the_groups_radius():
    """SGD has no rho: a param group's sam_rho is that group's radius (stored as rho)."""
    ps = _params()
    opt = SAM([{"params": ps[:1], "sam_rho": 0.3}, {"params": ps[1:]}], torch.optim.SGD, lr=0.1)
    assert [g["rho"] for g in opt.param_groups] == [0.3, 0.05]
    assert all("sam_rho" not in g for g in opt.param_groups)


def test_looksam_alpha_is_ambiguous_with_rmsprop_and_asgd():
    for cls in (torch.optim.RMSprop, torch.optim.ASGD):
        with pytest.raises(ValueError, match="ambiguous.*looksam_alpha="):
            LookSAM(_params(), cls, alpha=0.7)
        opt = LookSAM(_params(), cls, looksam_alpha=0.3, alpha=0.5)
        assert opt.alpha == 0.3 and opt.param_groups[0]["alpha"] == 0.5
    opt = LookSAM(_params(), torch.optim.RMSprop, looksam_alpha=0.3)
    assert opt.param_groups[0]["alpha"] == torch.optim.RMSprop(_params()).defaults["alpha"]


def test_davda54_style_calls_keep_working():
    """``SAM(params, SGD, rho=0.05, lr=0.1, momentum=0.9)`` and the positional rho, with no
    warning; the radius is read and written as ``param_groups[i]["rho"]`` as in davda54's."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        opt = SAM(_params(), torch.optim.SGD, rho=0.07, lr=0.1, momentum=0.9)
        pos = SAM(_params(), torch.optim.SGD, 0.07, lr=0.1)
        look = LookSAM(_params(), torch.optim.SGD, 0.07, 3, 0.5, lr=0.1)
    assert opt.param_groups[0]["rho"] == 0.07 and opt.param_groups[0]["adaptive"] is False
    assert opt.param_groups[0]["momentum"] == 0.9 and pos.param_groups[0]["rho"] == 0.07
    assert (look.k, look.alpha, look.param_groups[0]["rho"]) == (3, 0.5, 0.07)
    with pytest.raises(ValueError, match="not both"):
        SAM(_params(), torch.optim.SGD, rho=0.1, sam_rho=0.1)


def test_legacy_eps_and_foreach_with_a_base_that_lacks_them_warn_and_set_the_wrapper():
    with pytest.warns(FutureWarning, match="sam_eps") as rec:
        opt = SAM(_params(), torch.optim.SGD, lr=0.1, eps=0.0)
    assert rec[0].filename == __file__  # the warning points at the caller's line
    assert opt.eps == 0.0
    with pytest.warns(FutureWarning, match="sam_foreach"):
        opt = SAM(_params(), torch.optim.LBFGS, foreach=False)  # LBFGS has no foreach
    assert opt.foreach is False
    with pytest.warns(FutureWarning, match="sam_eps"):
        look = LookSAM(_params(), torch.optim.SGD, lr=0.1, eps=0.5)
    assert look.eps == 0.5


def test_a_keyword_nobody_takes_is_the_base_optimizers_error():
    with pytest.raises(TypeError, match="momentm"):
        SAM(_params(), torch.optim.SGD, lr=0.1, momentm=0.9)


@pytest.mark.parametrize(
    "kwargs, name",
    [
        (dict(rho=math.inf), "rho"),
        (dict(rho=math.nan), "rho"),
        (dict(sam_rho=-1.0), "rho"),
        (dict(eta=math.inf), "eta"),
        (dict(sam_eps=math.inf), "sam_eps"),
        (dict(max_grad_norm=math.inf), "max_grad_norm"),
        (dict(adaptive=1), "adaptive"),
        (dict(normalize="no"), "normalize"),
        (dict(layerwise=True, normalize=False), "layerwise"),
    ],
)
def test_invalid_values_name_the_option(kwargs, name):
    with pytest.raises(ValueError, match=name):
        SAM(_params(), torch.optim.SGD, lr=0.1, **kwargs)


@pytest.mark.parametrize("alpha", [math.inf, math.nan, -0.1, True])
def test_looksam_alpha_must_be_finite_and_nonnegative(alpha):
    with pytest.raises(ValueError, match="alpha"):
        LookSAM(_params(), torch.optim.SGD, lr=0.1, alpha=alpha)
    with pytest.raises(ValueError, match="alpha"):
        LookSAM(_params(), torch.optim.SGD, lr=0.1, looksam_alpha=alpha)


@pytest.mark.parametrize("key", ["p", "normalize", "layerwise", "max_grad_norm", "sam_eps"])
def test_a_global_option_in_a_param_group_is_refused(key):
    """A per-group p (or any option that applies to all groups) used to be silently ignored."""
    ps = _params()
    with pytest.raises(ValueError, match=key):
        SAM([{"params": ps[:1], key: 3.0}, {"params": ps[1:]}], torch.optim.SGD, lr=0.1)
    opt = SAM(ps[:1], torch.optim.SGD, lr=0.1)
    with pytest.raises(ValueError, match=key):
        opt.add_param_group({"params": ps[1:], key: 3.0})
    with pytest.raises(ValueError, match="alpha"):
        LookSAM([{"params": ps, "alpha": 0.3}], torch.optim.SGD, lr=0.1)


def test_add_param_group_is_validated_and_its_rho_is_used():
    model = tiny_model()
    first, last = list(model.parameters())[:2], list(model.parameters())[2:]
    opt = SAM(first, torch.optim.SGD, rho=0.1, lr=0.0)
    for bad in (-1.0, math.inf, "0.1"):
        with pytest.raises(ValueError, match="rho"):
            opt.add_param_group({"params": last, "rho": bad})
    with pytest.raises(ValueError, match="eta"):
        opt.add_param_group({"params": last, "eta": -1.0})
    assert len(opt.param_groups) == 1 and len(opt.base_optimizer.param_groups) == 1
    opt.add_param_group({"params": last, "rho": 0.0})  # SGD has no rho: it is SAM's radius
    assert opt.param_groups is opt.base_optimizer.param_groups
    assert opt.param_groups[1]["rho"] == 0.0 and opt.param_groups[1]["momentum"] == 0
    x, y = tiny_data()
    w0 = params_of(model)
    loss_fn(model, x, y).backward()
    opt.first_step()
    moved = [not torch.equal(p.detach(), w) for p, w in zip(model.parameters(), w0)]
    assert moved == [True, True, False, False]  # the added group's rho 0 holds its tensors


def test_checkpoint_with_the_sam_rho_key_loads():
    """State dicts of the previous version keep SAM's radius under "sam_rho" (now "rho")."""
    model = tiny_model()
    opt = SAM(model.parameters(), torch.optim.SGD, rho=0.05, lr=0.1, momentum=0.9)
    sam_train(model, opt, 2)
    sd = opt.state_dict()
    sd["param_groups"] = [
        {("sam_rho" if k == "rho" else k): v for k, v in g.items()} for g in sd["param_groups"]
    ]
    sd["param_groups"][0]["sam_rho"] = 0.02
    buf = io.BytesIO()
    torch.save(sd, buf)
    buf.seek(0)
    fresh = SAM(model.parameters(), torch.optim.SGD, rho=0.05, lr=0.1, momentum=0.9)
    fresh.load_state_dict(torch.load(buf, weights_only=True))
    assert fresh.param_groups[0]["rho"] == 0.02 and "sam_rho" not in fresh.param_groups[0]
    sam_train(model, fresh, 1, start=2)  # and it runs
