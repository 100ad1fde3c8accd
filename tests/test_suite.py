"""The suite's shared infrastructure: atomic writes, run directories, seeds, devices, Ctrl-C,
claims tables, the verdict function, and the SAM library's independence from all of it."""

import ctypes
import json
import math
import os
import signal
import stat
import statistics
import subprocess
import sys
import textwrap
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from analysis.report import claims_table, collect_claims, write_report
from suite import claims, cli, rundir
from suite.stats import Claim, Outcome, mde

ROOT = Path(__file__).resolve().parents[1]


def test_atomic_write_leaves_old_file_when_writing_fails(tmp_path, monkeypatch):
    f = tmp_path / "a.json"
    rundir.atomic_write_json(f, {"x": 1})

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError):
        rundir.atomic_write_json(f, {"x": 2})
    assert json.loads(f.read_text()) == {"x": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]  # no temp file left behind


def test_atomic_write_gives_usual_permissions_and_fsyncs_the_directory(tmp_path, monkeypatch):
    old = os.umask(0o022)
    try:
        synced = []
        real_fsync = os.fsync

        def fsync(fd):
            synced.append(stat.S_ISDIR(os.fstat(fd).st_mode))
            return real_fsync(fd)

        monkeypatch.setattr(os, "fsync", fsync)
        rundir.atomic_write_json(tmp_path / "a.json", {"x": 1})
        assert stat.S_IMODE((tmp_path / "a.json").stat().st_mode) == 0o644  # not mkstemp's 0600
        assert synced == [False, True]  # the file, then its directory after the rename
        os.umask(0o077)
        rundir.atomic_write_json(tmp_path / "b.json", {"x": 1})
        assert stat.S_IMODE((tmp_path / "b.json").stat().st_mode) == 0o600  # umask respected
    finally:
        os.umask(old)


def test_run_dir_records_provenance_and_refuses_overwrite(tmp_path):
    rd = rundir.create_run_dir(tmp_path / "r", {"rho": 0.05, "seed": 1}, device="cpu")
    cfg = rd.config
    assert cfg["config"] == {"rho": 0.05, "seed": 1}
    assert cfg["config_hash"] == rundir.config_hash({"seed": 1, "rho": 0.05})  # order-free
    assert cfg["config_hash"] != rundir.config_hash({"rho": 0.1, "seed": 1})
    assert set(cfg["git"]) == {"commit", "dirty"}
    assert cfg["versions"]["torch"] == torch.__version__
    assert cfg["device"].startswith("cpu")
    rd.log({"step": 1, "loss": 0.5})
    rd.log({"step": 2, "loss": float("nan")})
    rd.write_summary({"final": 0.1})
    with pytest.raises(FileExistsError, match="--resume"):
        rundir.create_run_dir(tmp_path / "r", {"rho": 0.1})
    again = rundir.create_run_dir(tmp_path / "r", {"rho": 0.1}, resume=True)
    assert again.config["config"]["rho"] == 0.05  # resume keeps the stored config
    run = rundir.load_run(tmp_path / "r")
    assert run["metrics"][0] == {"step": 1, "loss": 0.5}
    assert math.isnan(run["metrics"][1]["loss"])
    assert run["summary"] == {"final": 0.1}
    rd.truncate_metrics(1)
    assert len(rd.metrics()) == 1
    fresh = rundir.create_run_dir(tmp_path / "r", {"rho": 0.2}, overwrite=True)
    assert fresh.config["config"]["rho"] == 0.2 and fresh.metrics() == []
    assert not (tmp_path / "r" / "summary.json").exists()
    with pytest.raises(ValueError, match="--overwrite"):
        rundir.create_run_dir(tmp_path / "r", {}, resume=True, overwrite=True)


def test_torn_last_metrics_line_is_dropped_on_next_open(tmp_path):
    rd = rundir.create_run_dir(tmp_path / "r", {})
    rd.log({"step": 1})
    with open(rd.metrics_path, "a") as f:
        f.write('{"step": 2, "lo')  # crash mid-write
    assert rd.metrics() == [{"step": 1}]
    assert rundir.load_run(tmp_path / "r")["metrics"] == [{"step": 1}]
    resumed = rundir.create_run_dir(tmp_path / "r", {}, resume=True)
    resumed.log({"step": 2})  # must start on a fresh line, not glue onto the torn one
    assert resumed.metrics_path.read_text() == '{"step": 1}\n{"step": 2}\n'
    with open(rd.metrics_path, "a") as f:
        f.write('{"step": 3}')  # complete row, newline lost: kept, line ended
    rundir.RunDir(rd.path)
    assert rd.metrics_path.read_text().endswith('{"step": 3}\n')
    rd.metrics_path.write_text('{"step": 1}\nnot json\n{"step": 3}\n')  # corruption mid-file
    with pytest.raises(ValueError, match="line 2"):
        rd.metrics()


def test_git_dirty_counts_untracked_files(tmp_path):
    def git(*a):
        subprocess.run(["git", *a], cwd=tmp_path, check=True, capture_output=True)

    git("init", "-q")
    (tmp_path / "a.py").write_text("x = 1\n")
    git("add", "a.py")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "a")
    assert rundir.git_info(tmp_path)["dirty"] is False
    (tmp_path / "new_module.py").write_text("y = 2\n")
    assert rundir.git_info(tmp_path)["dirty"] is True


def test_seeds_give_independent_reproducible_streams_and_must_be_ints():
    a, b = cli.make_seeds(3), cli.make_seeds(3)
    assert torch.equal(torch.rand(5, generator=a.init), torch.rand(5, generator=b.init))
    c = cli.make_seeds(3)
    assert not torch.equal(torch.rand(5, generator=c.init), torch.rand(5, generator=c.data))
    with pytest.raises(ValueError, match="seed"):
        cli.make_seeds(-1)
    for bad in (True, 1.5, "3"):
        with pytest.raises(TypeError, match="seed must be an int"):
            cli.make_seeds(bad)


def test_select_device():
    assert cli.select_device("cpu") == torch.device("cpu")
    assert cli.select_device(None).type in ("cpu", "cuda")
    for bad in ("not-a-device", "mps", "meta", "cpu:3"):
        with pytest.raises(ValueError, match="--device") as e:
            cli.select_device(bad)
        assert "cpu" in str(e.value)  # names the choices
    n = torch.cuda.device_count()
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            cli.select_device("cuda")
    else:
        assert cli.select_device("cuda:0").type == "cuda"
        with pytest.raises(ValueError, match="GPU"):
            cli.select_device(f"cuda:{n}")


def test_graceful_interrupt_sets_flag_then_aborts_and_restores_handler():
    before = signal.getsignal(signal.SIGINT)
    with cli.GracefulInterrupt() as stop:
        os.kill(os.getpid(), signal.SIGINT)
        assert stop.requested
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
    assert signal.getsignal(signal.SIGINT) is before


def test_finite_float_rejects_nan_and_inf_by_name(capsys):
    import argparse

    p = argparse.ArgumentParser()
    p.add_argument("--rho", type=cli.finite_float)
    assert p.parse_args(["--rho", "0.05"]).rho == 0.05
    for bad in ("nan", "inf", "-inf", "abc"):
        with pytest.raises(SystemExit):
            p.parse_args(["--rho", bad])
        assert "argument --rho:" in capsys.readouterr().err


# ------------------------------------------------------------------------------------- verdicts
def test_verdict_rules():
    inf = math.inf
    assert claims.verdict(0.5, 0.1, inf) == "reproduced"
    assert claims.verdict(0.15, 0.1, inf) == "within noise"  # 1.5 SE < 1.96
    assert claims.verdict(0.21, 0.1, inf) == "reproduced"  # 2.1 SE > 1.96 (normal: df inf)
    assert claims.verdict(0.21, 0.1, 4) == "within noise"  # t(0.975, 4) = 2.78
    assert claims.verdict(1.2, 0.1, 1) == "within noise"  # two seeds: t(0.975, 1) = 12.7
    assert claims.verdict(1.3, 0.1, 1) == "reproduced"
    assert claims.verdict(-0.5, 0.1, inf) == "contradicted"
    assert claims.verdict(-0.15, 0.1, inf) == "within noise"
    assert claims.verdict(None, 0.1, inf) == "not run"
    assert claims.verdict(float("nan"), 0.1, inf) == "not run"
    assert claims.verdict(5.0, float("nan"), inf) == "within noise"  # unknown noise decides nothing
    assert claims.verdict(5.0, 0.1, float("nan")) == "within noise"  # unknown df too
    assert claims.verdict(1e-9, 0.0, float("nan")) == "reproduced"  # deterministic: any gap
    # a smallest effect of interest: a deterministic gap below it is negligible, above reproduced
    small = Claim("effect", 0.5)
    assert claims.verdict(0.2, 0.0, inf, small) == "negligible"
    assert claims.verdict(0.7, 0.0, inf, small) == "reproduced"
    null = Claim("null", 0.5)
    assert claims.verdict(0.1, 0.1, inf, null) == "equivalent"
    assert claims.verdict(1.0, 0.1, inf, null) == "contradicted"
    assert claims.verdict(0.4, 0.3, inf, null) == "within noise"
    with pytest.raises(ValueError):
        claims.verdict(1.0, -1.0, inf)


def test_compare_seeds_on_synthetic_tables():
    erm = [0.30, 0.31, 0.29]
    sam = [0.20, 0.21, 0.19]
    g = claims.compare_seeds(erm, sam, n_test=10_000)
    seed_var = 0.01**2 / 3 + 0.01**2 / 3
    binom = 0.30 * 0.70 / 10_000 + 0.20 * 0.80 / 10_000
    assert g.gap == pytest.approx(0.10)
    assert g.se == pytest.approx(math.sqrt(seed_var + binom))
    assert g.df == pytest.approx(4.0) and g.design == "unpaired"  # Welch, equal spreads
    assert g.verdict == "reproduced"
    assert claims.compare_seeds(sam, erm, n_test=10_000).verdict == "contradicted"  # reversed
    tiny = claims.compare_seeds(erm, [0.299, 0.309, 0.291], n_test=10_000)
    assert tiny.verdict == "within noise"
    # a small test set alone makes the same seed gap noise
    assert claims.compare_seeds(erm, [0.25, 0.26, 0.24], n_test=500).verdict == "within noise"
    assert claims.compare_seeds(erm, [0.25, 0.26, 0.24], n_test=100_000).verdict == "reproduced"
    one = claims.compare_seeds([0.3], [0.1], n_test=10_000)  # one seed: spread unknown
    assert math.isnan(one.se) and one.verdict == "within noise"
    assert claims.compare_seeds([], [0.1]).verdict == "not run"
    higher = claims.compare_seeds([0.70, 0.71], [0.80, 0.81], lower_is_better=False)
    assert higher.gap == pytest.approx(0.10) and higher.verdict == "reproduced"
    with pytest.raises(ValueError, match="error rates"):
        claims.compare_seeds([12.0, 13.0], [11.0, 12.0], n_test=100)  # percent, not rates


def _outcomes(errors, seeds, digest="T"):
    return [Outcome(s, digest, e) for s, e in zip(seeds, errors)]


def test_gap_of_outcomes_is_paired_and_signed():
    """gap(method, baseline) of Outcomes: the paired design when seeds and digests match, with
    the sign of the paper (baseline - method for error rates) and df = k - 1; other seeds give
    the unpaired form, and mixing Outcomes with numbers is refused."""
    rng = np.random.default_rng(0)
    base = (rng.random((3, 2000)) < 0.30).astype(float)
    flip = rng.random((3, 2000)) < 0.15  # the method corrects 15% of the baseline's errors
    meth = np.where(flip & (base == 1), 0.0, base)
    g = claims.gap(_outcomes(meth, [0, 1, 2]), _outcomes(base, [0, 1, 2]))
    assert g.design == "paired" and g.df == 2 and g.k == 3
    assert g.gap == pytest.approx(base.mean() - meth.mean()) and g.gap > 0
    assert g.mean_a == pytest.approx(base.mean()) and g.mean_b == pytest.approx(meth.mean())
    up = claims.gap(meth.mean(axis=1).tolist(), base.mean(axis=1).tolist(), n_test=2000)
    assert g.se < up.se / 2  # pairing by example removes most of the test-set noise
    assert g.scaled(100).gap == pytest.approx(100 * g.gap)
    assert g.scaled(100).seed_var == pytest.approx(1e4 * g.seed_var)
    higher = claims.gap(
        _outcomes(meth, [0, 1, 2]), _outcomes(base, [0, 1, 2]), lower_is_better=False
    )
    assert higher.gap == pytest.approx(-g.gap)
    other = claims.gap(_outcomes(meth, [3, 4, 5]), _outcomes(base, [0, 1, 2]))
    assert other.design == "unpaired"
    with pytest.raises(ValueError, match="Outcomes on both sides"):
        claims.gap(_outcomes(meth, [0, 1, 2]), [0.3, 0.3, 0.3])
    with pytest.raises(ValueError, match="degrees of freedom"):
        claims.gap(0.5, se=0.1)
    assert claims.gap(0.5, se=0.0).df == math.inf


def test_pool_uses_the_family_seed_variance():
    """pool: paired gaps share one seed variance on sum(k - 1) df (two seeds each: df 1 alone,
    df 4 pooled over four comparisons); unpaired gaps are left alone; Bartlett rejecting leaves
    every gap unchanged."""
    rng = np.random.default_rng(1)
    gaps = []
    for _ in range(4):
        base = (rng.random((2, 500)) < 0.3).astype(float)
        meth = np.where((rng.random((2, 500)) < 0.2) & (base == 1), 0.0, base)
        gaps.append(claims.gap(_outcomes(meth, [0, 1]), _outcomes(base, [0, 1])))
    unpaired = claims.compare_seeds([0.3, 0.31], [0.2, 0.21])
    out = claims.pool([*gaps, unpaired])
    assert all(g.df == 1 for g in gaps)
    assert [o.df for o in out[:4]] == [4.0] * 4
    assert out[4] == unpaired
    assert [o.gap for o in out[:4]] == [g.gap for g in gaps]
    wild = [replace(gaps[0], seed_var=1e-12), replace(gaps[1], seed_var=1.0)]
    wild += [replace(gaps[2], seed_var=1e-12), replace(gaps[3], seed_var=1.0)]
    assert claims.pool(wild) == wild  # variances that disagree are not pooled


def test_claim_row_judges_its_pre_registered_test(tmp_path):
    """A ClaimRow's verdict is judge(test, gap, se, df); its cells carry df, kind, sesoi and mde,
    say "underpowered" when the paper's effect is below the MDE, and a not_comparable reason
    overrides the gap; the report's check recomputes the verdict from the written cells."""
    stat = claims.gap(0.8, se=0.3, df=4)
    row = claims.ClaimRow(
        "P", "c", "1", "o", stat=stat, test=Claim("effect", 0.5), paper_effect=0.6
    )
    cells = row.cells("fam", "quick")
    assert cells["verdict"] == "within noise"  # 0.8 < t(0.975, 4) 0.3 = 0.83
    assert cells["df"] == 4 and cells["kind"] == "effect" and cells["sesoi"] == 0.5
    assert cells["mde"] == pytest.approx(mde(0.3, 4))
    assert "underpowered" in cells["note"]
    ok = claims.ClaimRow(
        "P",
        "c",
        "1",
        "o",
        stat=claims.gap(2.0, se=0.3, df=4),
        test=Claim("effect", 0.5),
        paper_effect=2.0,
    )
    assert ok.verdict == "reproduced" and "underpowered" not in ok.cells()["note"]
    nc = replace(ok, not_comparable="LookSAM does not fit its training set (15% train error)")
    assert nc.verdict == "not comparable"
    assert nc.cells()["note"].startswith("not comparable: LookSAM")
    assert replace(nc, stat=None).verdict == "not comparable"
    assert claims.ClaimRow("P", "c", "1", "o").verdict == "not run"
    claims.write_claims(tmp_path / "fam" / "claims.csv", [row.cells("fam"), ok, nc])
    df = collect_claims(tmp_path)
    assert list(df["verdict"]) == ["within noise", "reproduced", "not comparable"]
    assert (claims_table(tmp_path, ["fam"])["check"] == "").all()
    bad = dict(ok.cells("fam"), verdict="within noise")  # a hand-edited verdict is flagged
    claims.write_claims(tmp_path / "fam" / "claims.csv", [bad])
    assert "judge gives 'reproduced'" in claims_table(tmp_path, ["fam"])["check"].iloc[0]


def test_compare_to_paper_tolerance():
    inf = math.inf
    assert claims.verdict(*claims.compare_to_paper(0.0162, 0.0164, rel_tol=0.05), inf) == (
        "reproduced"
    )
    assert claims.verdict(*claims.compare_to_paper(0.02, 0.0164, rel_tol=0.05), inf) == (
        "contradicted"
    )
    assert claims.verdict(*claims.compare_to_paper(None, 0.0164, rel_tol=0.05), inf) == "not run"


def test_claims_tables_and_report(tmp_path):
    claims.write_claims(
        tmp_path / "fam" / "claims.csv",
        [
            {
                "family": "fam",
                "claim": "a | b",
                "paper_value": "1",
                "ours": "2",
                "gap": 0.5,
                "se": 0.1,
                "verdict": "reproduced",
            },
            {"family": "fam", "claim": "c", "paper_value": "NA", "ours": "", "verdict": "not run"},
        ],
    )
    with pytest.raises(ValueError, match="verdict"):
        claims.write_claims(tmp_path / "x.csv", [{"verdict": "maybe"}])
    with pytest.raises(ValueError, match="unknown columns"):
        claims.write_claims(tmp_path / "x.csv", [{"verdict": "not run", "papr": 1}])
    df = collect_claims(tmp_path)
    assert list(df["verdict"]) == ["reproduced", "not run"]
    assert list(df["paper_value"]) == ["1", "NA"]  # "NA" is text, not missing
    assert list(df["gap"]) == ["0.5", ""]
    md = write_report(tmp_path).read_text()
    assert "a \\| b" in md and "reproduced: 1, not run: 1" in md


def test_progress_bar_turns_off_without_a_terminal():
    # pytest captures stderr, so it is not a terminal here: the bar must be disabled
    bar = cli.progress(range(3))
    assert bar.disable and list(bar) == [0, 1, 2]
    assert not cli.progress(range(3), disable=False).disable  # the caller may force it on


def test_sharpness_imports_with_only_torch_and_numpy():
    """The SAM library's dependencies are torch and numpy: importing every module of it must not
    touch the suite, tqdm, pandas, scipy, matplotlib (blocked in a fresh interpreter)."""
    code = textwrap.dedent(
        """
        import importlib, pkgutil, sys
        ALLOWED = {"torch", "numpy"}
        class Block:
            def find_spec(self, name, path=None, target=None):
                top = name.split(".")[0]
                if top in {"suite", "tqdm", "pandas", "scipy", "matplotlib", "analysis",
                           "deep_nets", "yaml", "lightning", "pytorch_optimizer"}:
                    raise ImportError(f"sharpness imported {name}")
                return None
        sys.meta_path.insert(0, Block())
        import sharpness
        for m in pkgutil.walk_packages(sharpness.__path__, "sharpness."):
            importlib.import_module(m.name)
        from sharpness import SAM, LookSAM
        print("ok")
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def test_cbuild_compiles_caches_and_explains_a_missing_compiler(tmp_path, monkeypatch):
    from suite import cbuild

    monkeypatch.setenv("SHARPNESS_CACHE", str(tmp_path / "cache"))
    src = tmp_path / "k.c"
    src.write_text("double twice(double x) { return 2.0 * x; }\n")
    if cbuild.compiler() is None:
        pytest.fail("no C compiler here: the suite's images install gcc")
    lib = cbuild.load_library(src, ["-O2"], prefix="t")
    lib.twice.restype = ctypes.c_double
    lib.twice.argtypes = [ctypes.c_double]
    assert lib.twice(21.0) == 42.0
    first = cbuild.build(src, ["-O2"], prefix="t")
    monkeypatch.setenv("CC", str(tmp_path / "no-such-cc"))
    with pytest.raises(RuntimeError, match="no C compiler"):
        cbuild.build(src, ["-O2"], prefix="t")
    monkeypatch.delenv("CC")
    assert cbuild.build(src, ["-O2"], prefix="t") == first
    src.write_text("double twice(double x) { return 2.0 * x + 0.0; }\n")
    assert cbuild.build(src, ["-O2"], prefix="t") != first  # new source, new object
    src.write_text("this is not C\n")
    with pytest.raises(RuntimeError, match="failed on k.c"):
        cbuild.load_library(src, ["-O2"], prefix="t")
    assert [p.suffix for p in (tmp_path / "cache").iterdir()] == [".so", ".so"]  # no temp left


def test_gap_is_the_one_statistic_of_every_row_form():
    """suite.claims.gap, against each family's formula written out here: two samples
    (= compare_seeds), seed-paired differences, a mean against a level fixed before the runs
    (with the binomial error of its rate), and a given gap with its se."""
    erm, sam = [0.30, 0.31, 0.29], [0.20, 0.215, 0.19]
    assert claims.gap(sam, erm, n_test=1000) == claims.compare_seeds(erm, sam, n_test=1000)
    # paired by seed: d = baseline - method; a NaN pair is dropped
    g = claims.gap([1.0, 2.5, float("nan"), 2.0], [2.0, 3.0, 9.0, 4.0], paired=True)
    d = [1.0, 0.5, 2.0]
    assert g.gap == pytest.approx(sum(d) / 3) and g.n_a == 3
    assert g.se == pytest.approx(statistics.stdev(d) / math.sqrt(3))
    assert claims.gap([2.0], [1.0], paired=True).verdict == "within noise"  # one pair: no SE
    assert claims.gap([1.0], [2.0], paired=True, lower_is_better=False).gap == -1.0
    # a mean against a fixed level: gap = level - mean (lower is better), se = s / sqrt(n)
    v = [0.02, 0.04, 0.03]
    g = claims.gap(v, 0.05)
    assert g.gap == pytest.approx(0.02) and g.se == pytest.approx(0.01 / math.sqrt(3))
    assert claims.gap(v, 0.05, lower_is_better=False).gap == pytest.approx(-0.02)
    b = claims.gap(v, 0.10, n_test=200)  # and the binomial error of the mean rate
    assert b.se == pytest.approx(math.hypot(0.01 / math.sqrt(3), math.sqrt(0.03 * 0.97 / 200)))
    assert math.isnan(claims.gap([0.03], 0.05).se)  # one value: the spread is unknown
    # computed elsewhere (a tolerance, a bootstrap): taken as given; a missing se is an error
    assert claims.gap(0.3, se=0.0).verdict == "reproduced"
    assert claims.gap(float("nan"), se=float("nan")).verdict == "not run"
    with pytest.raises(ValueError, match="se"):
        claims.gap(0.3)
    # in percentage points: the same comparison, the same verdict
    p = claims.gap(sam, erm, n_test=1000).scaled(100)
    assert p.gap == pytest.approx(100 * (0.30 - 0.605 / 3)) and p.verdict == "reproduced"
    assert p.se == pytest.approx(100 * claims.gap(sam, erm, n_test=1000).se)


def test_claim_row_verdict_comes_from_its_statistic(tmp_path):
    """A ClaimRow has no verdict cell to write by hand: it is the verdict of its Gap (not run
    without one), and run_stage fills in family and profile unless the row names its own."""
    row = claims.ClaimRow(
        "P", "c", "1", "2", stat=claims.gap(-1.0, se=0.1, df=math.inf), figure="f.png"
    )
    cells = row.cells("fam", "quick")
    assert cells["verdict"] == "contradicted" and cells["gap"] == -1.0 and cells["se"] == 0.1
    assert (cells["family"], cells["profile"]) == ("fam", "quick")
    assert tuple(cells) == claims.CLAIM_COLUMNS
    other = claims.ClaimRow("P", "c", "1", "not run here", profile="paper").cells("fam", "test")
    assert (other["verdict"], other["gap"], other["profile"]) == ("not run", "", "paper")
    claims.write_claims(tmp_path / "c.csv", [row.cells("fam", "quick")])
    assert "contradicted" in (tmp_path / "c.csv").read_text()
