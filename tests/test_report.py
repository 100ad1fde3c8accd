"""`make reproduce` end to end on synthetic stages, and REPORT.md on synthetic result sets.

The stages are real modules written into a temporary package: one that trains two tiny runs
through suite.launch, prints per-epoch lines, draws and captions a figure and writes claims (one
reproduced, one that fails); one that crashes; one that is never run. The report must show every
claim with its verdict, say which stage crashed and why, name the command for the missing
results, embed the figure with its caption and record the environment.
"""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest

from analysis import reproduce
from analysis import stages as stage_list
from analysis.report import claims_table, key_figures, missing_results, render_report
from suite.captions import caption_figure, read_captions
from suite.claims import write_claims
from suite.rundir import read_json

GOOD = """
import math
from pathlib import Path

from suite.captions import caption_figure
from suite.claims import verdict, write_claims
from suite.launch import Run, run_all
from suite.rundir import create_run_dir


def train(cfg, out, resume):
    run = create_run_dir(out, cfg, resume=resume)
    for epoch in range(30):
        print(f"epoch {epoch} train_loss 0.5 PER-EPOCH-LINE", flush=True)
        run.log({"epoch": epoch})
    run.write_summary({"status": "finished"})


def reproduce(profile, results_dir, figures_dir):
    import functools

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    root = Path(results_dir) / "good"
    runs = []
    for s in (0, 1):
        cfg, out = {"seed": s, "profile": profile}, root / f"seed{s}"
        runs.append(Run(f"seed {s}", out, cfg, functools.partial(train, cfg, out)))
    run_all(runs, stage="good")
    Path(figures_dir).mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(2, 2))
    ax.plot([0, 1], [1, 0])
    fig.savefig(Path(figures_dir) / "good_curve.png")
    plt.close(fig)
    caption_figure(results_dir, "good", "good_curve.png", shows="Loss per epoch, two seeds.",
                   reading="SAM ends lower than SGD.", key=True)
    rows = [
        dict(family="good", paper="Paper A, Fig. 1", claim="SAM lowers test error",
             paper_value="3.5 vs 2.7", ours="1.0 +- 0.1 (2 seeds)", gap=1.0, se=0.1,
             df="inf", kind="effect", sesoi=0.0, profile=profile,
             verdict=verdict(1.0, 0.1, math.inf), figure="figures/good_curve.png",
             note=""),
        dict(family="good", paper="Paper A, Fig. 2", claim="m-SAM beats SAM",
             paper_value="0.5", ours="-0.2 +- 0.05 (2 seeds)", gap=-1.0, se=0.1,
             df="inf", kind="effect", sesoi=0.0, profile=profile,
             verdict=verdict(-1.0, 0.1, math.inf), figure="", note="MNIST-1D"),
    ]
    write_claims(root / "claims.csv", rows)
"""

CRASH = """
def reproduce(profile, results_dir, figures_dir):
    print("about to fail")
    raise RuntimeError("boom: the data set is corrupt")
"""


@pytest.fixture()
def stages(tmp_path, monkeypatch):
    pkg = tmp_path / "pkgs" / "fake_stages"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "good.py").write_text(textwrap.dedent(GOOD))
    (pkg / "crash.py").write_text(textwrap.dedent(CRASH))
    monkeypatch.syspath_prepend(str(tmp_path / "pkgs"))
    monkeypatch.setattr(
        stage_list,
        "STAGES",
        [
            ("good", "fake_stages.good"),
            ("crash", "fake_stages.crash"),
            ("never", "fake_stages.never"),
        ],
    )
    yield
    for m in [m for m in sys.modules if m.startswith("fake_stages")]:
        del sys.modules[m]


def test_reproduce_isolates_a_crash_logs_epochs_and_writes_the_report(tmp_path, stages, capfd):
    res, fig, rep = tmp_path / "results", tmp_path / "figures", tmp_path / "REPORT.md"
    argv = ["--results_dir", str(res), "--figures_dir", str(fig), "--report", str(rep)]
    rc = reproduce.main([*argv, "--only", "good", "crash"])
    out, err = capfd.readouterr()
    assert rc == 1  # a crashed stage makes the job fail, after the others ran
    screen = out + err
    # per-epoch lines and the stage's prints go to the log, not the screen
    assert "PER-EPOCH-LINE" not in screen and "about to fail" not in screen
    assert len(screen.strip().splitlines()) <= 10, screen
    assert "crash: crashed" in screen and "boom: the data set is corrupt" in screen
    log = (res / "reproduce.log").read_text()
    assert log.count("PER-EPOCH-LINE") == 60 and "Traceback" in log and "about to fail" in log

    job = read_json(res / "reproduce.json")
    st = {s["name"]: s for s in job["stages"]}
    assert st["good"]["status"] == "ok" and st["good"]["runs"] == {"trained": 2}
    assert st["crash"]["status"] == "crashed"
    assert st["crash"]["error"] == "RuntimeError: boom: the data set is corrupt"
    assert "never" not in st

    text = rep.read_text()
    # every claim with its verdict; the failing one called out in the summary
    assert "| good | Paper A, Fig. 1 | SAM lowers test error |" in text
    assert "| reproduced |" in text and "| contradicted |" in text
    assert "Contradicted: good: m-SAM beats SAM (Paper A, Fig. 2)." in text
    assert "1.0 ± 0.1" in text or "1 ± 0.1" in text
    # the crashed stage: which and why, as a not-run row and in the stage table
    assert "**crash** crashed: RuntimeError: boom: the data set is corrupt" in text
    crash_row = next(line for line in text.splitlines() if line.startswith("| crash |"))
    assert "not run" in crash_row and "stage crashed" in crash_row
    assert "--only crash" in crash_row
    # the family that never ran: not run, with the command that makes its results
    never_row = next(line for line in text.splitlines() if line.startswith("| never |"))
    assert "not run" in never_row and "make reproduce" in never_row
    # the figure, embedded relative to the report, with its two-line caption
    assert "![good_curve.png](figures/good_curve.png)" in text
    assert "| [good_curve.png](#fig-good-curve) |" in text and '<a id="fig-good-curve"></a>' in text
    assert "**good_curve.png.** Loss per epoch, two seeds.  \nSAM ends lower than SGD." in text
    # environment and wall-clock per stage
    import torch

    assert f"torch {torch.__version__}" in text and "Git commit:" in text
    assert "| good | ok |" in text and "| crash | crashed |" in text
    assert "Traceback of crash" in text

    # a second run skips the finished runs; the crash's record is kept when it is not rerun
    rc = reproduce.main([*argv, "--only", "good"])
    capfd.readouterr()
    assert rc == 0
    job = read_json(res / "reproduce.json")
    st = {s["name"]: s for s in job["stages"]}
    assert st["good"]["runs"] == {"skipped": 2}
    assert st["crash"]["from_earlier_job"] is True
    # --force retrains
    assert reproduce.main([*argv, "--only", "good", "--force"]) == 0
    capfd.readouterr()
    st = {s["name"]: s for s in read_json(res / "reproduce.json")["stages"]}
    assert st["good"]["runs"] == {"trained": 2}
    note = "applied to none of them"
    assert note not in (res / "reproduce.log").read_text()
    # a stage with its own reuse logic never sees --force: the job says so instead of ignoring it
    assert reproduce.main([*argv, "--only", "crash", "--force"]) == 1
    assert note in capfd.readouterr().err and note in (res / "reproduce.log").read_text()


def _claims(path: Path, rows: list[dict]) -> None:
    base = dict(paper="P", claim="c", paper_value="1", ours="1", profile="quick")
    base.update(df=3, kind="effect", sesoi=0.0)
    base.update(figure="", note="")
    write_claims(path, [{**base, **r} for r in rows])


def test_report_flags_hand_made_verdicts_and_stale_rows(tmp_path, monkeypatch):
    monkeypatch.setattr(stage_list, "STAGES", [("a", "x"), ("b", "y")])
    res = tmp_path / "results"
    # a verdict written by hand that the verdict function would not give
    _claims(res / "a" / "claims.csv", [dict(family="a", gap=0.1, se=0.1, verdict="reproduced")])
    # b's claims are from an earlier job; b crashed in this one
    _claims(res / "b" / "claims.csv", [dict(family="b", gap=1, se=0.1, verdict="reproduced")])
    from suite.rundir import atomic_write_json

    atomic_write_json(
        res / "reproduce.json",
        {
            "profile": "quick",
            "stages": [
                {"name": "a", "status": "ok", "seconds": 1},
                {
                    "name": "b",
                    "status": "crashed",
                    "error": "ValueError: x",
                    "seconds": 2,
                    "started": "2999-01-01T00:00:00+00:00",
                },
            ],
        },
    )
    df = claims_table(res)
    check = dict(zip(df["family"], df["check"]))
    assert "suite.stats.judge gives 'within noise'" in check["a"]
    assert "from an earlier job" in check["b"] and "ValueError: x" in check["b"]
    text = render_report(res, tmp_path / "figures", tmp_path / "REPORT.md")
    assert "2 row(s) flagged" in text and "No figures under" in text


def test_captions_replace_and_key_figures(tmp_path):
    res, fig = tmp_path / "results", tmp_path / "figures"
    fig.mkdir()
    for name in ("fam_a.png", "fam_b.png", "fam_uncaptioned.png"):
        (fig / name).write_bytes(b"\x89PNG\r\n\x1a\n")
    caption_figure(res, "fam", "fam_a.png", shows="A.", reading="a.", key=True)
    caption_figure(res, "fam", "fam_b.png", shows="B.", reading="b.")
    caption_figure(res, "fam", "fam_b.png", shows="B2.", reading="b2.", key=True)
    entries = read_captions(res, "fam")
    assert [(e["file"], e["shows"], e["key"]) for e in entries] == [
        ("fam_a.png", "A.", False),
        ("fam_b.png", "B2.", True),
    ]
    assert [e["file"] for e in key_figures(res, fig, ["fam"])] == ["fam_b.png"]
    text = render_report(res, fig, tmp_path / "REPORT.md")
    assert "fam_uncaptioned.png (its stage recorded no caption)" in text
    with pytest.raises(ValueError, match="one non-empty line"):
        caption_figure(res, "fam", "x.png", shows="two\nlines", reading="r")
    with pytest.raises(ValueError, match="file name"):
        caption_figure(res, "fam", "sub/x.png", shows="s", reading="r")
    assert missing_results(res) is not None and "make reproduce" in missing_results(res)
    assert "--only fam" in missing_results(res, "fam")


def test_paper_profile_names_what_is_missing(tmp_path, monkeypatch, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this check is about a machine without a GPU")  # CPU-only test machines
    monkeypatch.setenv("SHARPNESS_DATA_DIR", str(tmp_path / "data"))
    rc = reproduce.main(["--profile", "paper", "--results_dir", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert rc == 2
    assert "no GPU" in err and "--index-url https://download.pytorch.org/whl/cu126" in err
    assert "CIFAR-10 missing" in err and "load_dataset('cifar10', None, seed=0)" in err
    assert "CIFAR-100 missing" in err
    assert not (tmp_path / "r").exists()  # nothing started
    # the CPU families' paper settings need neither a GPU nor CIFAR
    assert reproduce.preflight("paper", "local", ["diagonal_linear_nets", "core"]) == []
    assert any("no GPU" in p for p in reproduce.preflight("paper", "local", ["deep_nets"]))
    # data on disk and a cluster launcher: nothing left to complain about but Fashion-MNIST
    c10, c100 = tmp_path / "data" / "cifar-10-batches-py", tmp_path / "data" / "cifar-100-python"
    for f in [*(c10 / f"data_batch_{i}" for i in range(1, 6)), c10 / "test_batch"]:
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_bytes(b"x")
    c100.mkdir(parents=True)
    (c100 / "train").write_bytes(b"x")
    (c100 / "test").write_bytes(b"x")
    problems = reproduce.preflight("paper", "slurm")
    fm = Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz").is_file()
    assert problems == ([] if fm else [p for p in problems if p.startswith("Fashion-MNIST")])
    assert reproduce.preflight("quick", "local") == []


def test_cli_errors_name_the_flag(capsys):
    with pytest.raises(SystemExit):
        reproduce.main(["--only", "nosuch"])
    assert "--only nosuch: unknown family" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        reproduce.main(["--launcher", "slurm"])
    assert "--launcher slurm needs --partition" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        reproduce.main(["--launcher", "slurm", "--partition", "gpu", "--slurm_extra", "oops"])
    assert "--slurm_extra 'oops': write KEY=VALUE" in capsys.readouterr().err


SLOW = """
import functools
import time
from pathlib import Path

from suite.launch import Run, run_all
from suite.rundir import create_run_dir


def train(cfg, out, resume):
    run = create_run_dir(out, cfg, resume=resume)
    hold = Path(out).parent.parent / "hold"
    for epoch in range(len(run.metrics()), 10):
        time.sleep(0.1)
        # run s1 waits after 3 rows while the test holds it: its Ctrl-C always comes mid-run,
        # however slowly a loaded machine schedules the test
        while cfg["s"] == 1 and epoch >= 3 and hold.exists():
            time.sleep(0.05)
        run.log({"epoch": epoch})
    run.write_summary({"status": "finished"})


def reproduce(profile, results_dir, figures_dir):
    root = Path(results_dir) / "slow"
    runs = [Run(f"seed {s}", root / f"s{s}", {"s": s}, None) for s in range(3)]
    run_all([Run(r.name, r.out_dir, r.config, functools.partial(train, r.config, r.out_dir))
             for r in runs], stage="slow")
"""

DRIVER = """
import math
import sys
sys.path[:0] = [{pkgs!r}, {root!r}]
from analysis import reproduce
from analysis import stages
stages.STAGES = [("slow", "fake_stages.slow"), ("after", "fake_stages.slow")]
if __name__ == "__main__":  # the runs train in spawned worker processes (--jobs)
    sys.exit(reproduce.main(sys.argv[1:]))
"""


def test_ctrl_c_stops_the_job_and_a_rerun_resumes(tmp_path):
    import signal
    import subprocess
    import time

    pkg = tmp_path / "pkgs" / "fake_stages"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "slow.py").write_text(textwrap.dedent(SLOW))
    root = Path(__file__).resolve().parents[1]
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER.format(pkgs=str(tmp_path / "pkgs"), root=str(root)))
    res = tmp_path / "results"
    res.mkdir()
    (res / "hold").touch()  # released before the re-run
    # one run at a time: the first run ends before the second starts (tests/test_launch.py has
    # Ctrl-C with runs in parallel worker processes)
    cmd = [
        sys.executable,
        str(driver),
        "--results_dir",
        str(res),
        "--figures_dir",
        str(tmp_path / "f"),
        "--report",
        str(tmp_path / "REPORT.md"),
        "--jobs",
        "1",
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    second = res / "slow" / "s1" / "metrics.jsonl"
    t0 = time.time()
    while not (second.exists() and second.read_text().count("\n") >= 2):
        assert proc.poll() is None and time.time() - t0 < 120, proc.communicate()[0]
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    out = proc.communicate(timeout=60)[0]
    assert proc.returncode == 130, out
    assert "interrupted: run the same command again to resume" in out
    job = read_json(res / "reproduce.json")
    assert job["interrupted"] is True
    assert [(s["name"], s["status"]) for s in job["stages"]] == [("slow", "interrupted")]
    kept = len(second.read_text().splitlines())
    assert 2 <= kept <= 3  # the interrupted run kept what it had logged (held after 3 rows)
    (res / "hold").unlink()
    # the re-run: the finished run is skipped, the interrupted one resumed, the rest trained
    with pytest.MonkeyPatch.context() as mp:  # in this process: a second interpreter costs ~5 s
        mp.syspath_prepend(str(tmp_path / "pkgs"))
        mp.setattr(stage_list, "STAGES", [("slow", "fake_stages.slow")])
        assert reproduce.main(cmd[2:]) == 0
        sys.modules.pop("fake_stages.slow", None)
        sys.modules.pop("fake_stages", None)
    st = {s["name"]: s for s in read_json(res / "reproduce.json")["stages"]}
    assert st["slow"]["runs"] == {"skipped": 1, "resumed": 1, "trained": 1}
    assert [r["epoch"] for r in read_json_lines(second)] == list(range(10))


def read_json_lines(path: Path) -> list[dict]:
    from suite.rundir import read_jsonl

    return read_jsonl(path)


PROBE = """
from suite import launch
from suite.rundir import atomic_write_json


def reproduce(profile, results_dir, figures_dir):
    atomic_write_json(results_dir / "probe.json", {"jobs": launch._settings.jobs})
"""


@pytest.mark.parametrize(
    "argv, jobs",
    [([], None), (["--jobs", "3"], 3), (["--profile", "paper"], 1)],
)
def test_jobs_reach_the_stages(tmp_path, monkeypatch, argv, jobs):
    """--jobs is what the stages' run_all calls see: one per core by default, 1 for paper."""
    from suite import launch

    (tmp_path / "fake_probe.py").write_text(textwrap.dedent(PROBE))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(stage_list, "STAGES", [("probe", "fake_probe")])
    res = tmp_path / "r"
    rc = reproduce.main(
        [
            *argv,
            "--only",
            "probe",
            "--results_dir",
            str(res),
            "--figures_dir",
            str(tmp_path / "f"),
            "--report",
            str(tmp_path / "R.md"),
        ]
    )
    assert rc == 0
    want = launch.cpu_count() if jobs is None else jobs
    assert read_json(res / "probe.json") == {"jobs": want}
    assert read_json(res / "reproduce.json")["jobs"] == want
    with pytest.raises(SystemExit):
        reproduce.main(["--jobs", "0"])


def test_every_stage_knows_every_profile_and_only_those(tmp_path):
    """One vocabulary (suite.profiles): every stage of make reproduce has settings for test,
    quick, full and paper and builds its runs for each (the measures stage knew no 'paper':
    PROFILE=paper crashed there), and refuses any other name with the message naming the four."""
    import importlib

    from analysis.deep_nets.runs import SpecRuns
    from suite.profiles import PROFILES, settings
    from suite.stage import StageContext

    assert PROFILES == ("test", "quick", "full", "paper")
    assert reproduce.PROFILES == PROFILES
    for family, module in stage_list.STAGES:
        m = importlib.import_module(module)
        assert tuple(m.PROFILES) == PROFILES, family
        exps = m.EXPERIMENTS.values() if isinstance(m.EXPERIMENTS, dict) else m.EXPERIMENTS
        for profile in PROFILES:
            P = settings(m.PROFILES, profile)
            ctx = StageContext(family, profile, P, tmp_path, tmp_path, tmp_path / family / profile)
            # deep_nets' runs by their specs: parsing ~100 paper configs takes a minute, and
            # tests/test_deep_experiments.py checks every one of them
            runs = [
                r
                for e in exps
                if e.wave == 0
                for r in (e.runs.specs(P) if isinstance(e.runs, SpecRuns) else e.runs(ctx))
            ]
            assert runs, (family, profile)
        for wrong in ("tiny", "huge"):
            with pytest.raises(ValueError, match="choose from test, quick, full, paper"):
                m.reproduce(wrong, tmp_path / "r", tmp_path / "f")
        assert not (tmp_path / "r").exists()  # refused before anything ran


def test_paper_profile_without_a_gpu_stops_at_the_check_not_a_traceback(tmp_path):
    """`make reproduce PROFILE=paper` as a user types it (a real process) on a machine without a
    GPU: exit 2 before any stage starts, the reasons on stderr, no traceback."""
    import subprocess

    import torch

    if torch.cuda.is_available():
        pytest.skip("this check is about a machine without a GPU")
    root = Path(__file__).resolve().parents[1]
    env = {**__import__("os").environ, "PYTHONPATH": str(root)}
    env["SHARPNESS_DATA_DIR"] = str(tmp_path / "data")
    cmd = [
        sys.executable,
        "-m",
        "analysis.reproduce",
        "--profile",
        "paper",
        "--results_dir",
        str(tmp_path / "r"),
        "--report",
        str(tmp_path / "REPORT.md"),
    ]
    p = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 2, p.stdout + p.stderr
    assert "profile paper cannot start on this machine" in p.stderr and "no GPU" in p.stderr
    assert "Traceback" not in p.stdout + p.stderr
    assert not (tmp_path / "r").exists() and not (tmp_path / "REPORT.md").exists()


@pytest.mark.parametrize(
    "extra, said",
    [
        (["--timeout_min", "-5"], "--timeout_min -5: must be >= 1"),
        (["--cpus_per_task", "0"], "--cpus_per_task 0: must be >= 1"),
        (["--results_dir", "{file}/sub"], "--results_dir"),
        (["--figures_dir", "{file}"], "--figures_dir"),
        (["--report", "{dir}"], "--report"),
    ],
)
def test_reproduce_refuses_bad_flags_before_any_stage(tmp_path, capsys, monkeypatch, extra, said):
    """Bad slurm numbers and unwritable output paths stop the job at once (exit 2, the flag named)
    instead of after hours of training; no stage runs (none is importable here)."""
    monkeypatch.setattr(stage_list, "STAGES", [("never", "fake_stages.never")])
    (tmp_path / "afile").write_text("x")
    (tmp_path / "adir").mkdir()
    extra = [a.format(file=tmp_path / "afile", dir=tmp_path / "adir") for a in extra]
    argv = ["--profile", "test", "--results_dir", str(tmp_path / "res")]
    with pytest.raises(SystemExit) as e:
        reproduce.main([*argv, "--figures_dir", str(tmp_path / "figs"), *extra])
    assert e.value.code == 2
    assert said in capsys.readouterr().err
    assert not (tmp_path / "res" / "reproduce.json").exists()
