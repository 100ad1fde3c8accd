"""The pre-registered rules of the Fig. 9, convergence and seminar rows (analysis/deep_nets):
the interpolation's "end points differ" precondition and distance, the profiles' declarations of
what the seminar rows can test, and the relation the convergence rows judge."""

from __future__ import annotations

import pytest
import torch

from analysis.deep_nets import convergence, fig9, seminar
from analysis.deep_nets.interpolation import relative_distance
from analysis.deep_nets.profiles import PROFILES
from suite.claims import ClaimRow, gap


def test_barrier_needs_end_points_that_differ_in_every_seed():
    assert fig9.same_point([0.08, 0.06]) == ""
    why = fig9.same_point([0.08, 0.012])
    assert "1.2%" in why and ">= 5%" in why
    row = ClaimRow("p", "c", "v", "o", stat=gap([0.0, 0.0], 0.0), test=fig9.BARRIER_TEST)
    assert row.verdict == "equivalent"  # no barrier, shown, when the end points differ


def test_relative_distance_of_state_dicts_leaves_out_running_statistics():
    a = {
        "w": torch.tensor([3.0, 4.0]),
        "bn.running_mean": torch.tensor([100.0]),
        "n": torch.tensor(3),
    }
    b = {
        "w": torch.tensor([3.0, 4.5]),
        "bn.running_mean": torch.tensor([-100.0]),
        "n": torch.tensor(7),
    }
    assert relative_distance(a, b) == pytest.approx(0.1)


def test_seminar_rows_are_declared_not_comparable_where_the_budget_cannot_test_them():
    for name in ("test", "quick"):
        P = PROFILES[name]
        assert "not comparable at this profile" in P["seminar_not_comparable"]
        assert P["seminar_level_not_comparable"]
    assert PROFILES["full"]["seminar_not_comparable"] == ""
    assert "a quarter" in PROFILES["full"]["seminar_level_not_comparable"]
    assert PROFILES["paper"]["seminar_not_comparable"] == ""
    assert PROFILES["paper"]["seminar_level_not_comparable"] == ""
    # the deck's accuracies as null claims with a 1% relative margin
    assert seminar.LEVEL_TESTS["SAM"].kind == "null"
    assert seminar.LEVEL_TESTS["SAM"].sesoi == pytest.approx(0.008751)


def test_convergence_is_judged_against_erm_not_a_level():
    # both fit (train error 0 in every seed): equivalent to ERM; 3 points worse: contradicted
    fits = gap([0.0, 0.0], [0.0, 0.0], paired=True)
    assert (
        ClaimRow("p", "c", "v", "o", stat=fits, test=convergence.FIT_TEST).verdict == "equivalent"
    )
    worse = gap([3.0, 3.1], [0.0, 0.0], paired=True)
    row = ClaimRow("p", "c", "v", "o", stat=worse, test=convergence.FIT_TEST)
    assert worse.gap == pytest.approx(-3.05) and row.verdict == "contradicted"


def test_fig9_switch_leaves_a_post_switch_phase_that_learns():
    # the quick profile switches at half of training (cosine lr 0.05 there), not at 75% (0.015)
    assert PROFILES["quick"]["switch"] == 0.5 and PROFILES["paper"]["switch"] == 0.9
