"""Command-line parents, progress bars, devices, seeds and Ctrl-C handling (all families)."""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import random
import signal
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch


# --------------------------------------------------------------------------- seeds and devices
@dataclass
class Seeds:
    """Separate random streams: model initialization and data order never share a generator, so
    changing the batch order does not change the initial weights (and vice versa)."""

    init: torch.Generator
    data: torch.Generator
    seed: int


def make_seeds(seed: int, device: torch.device | str = "cpu") -> Seeds:
    """Seed Python/numpy/torch globally and return independent generators for init and data.

    The two streams derive from ``seed`` through numpy's SeedSequence (statistically independent).
    """
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"seed must be an int, got {type(seed).__name__} {seed!r}")
    seed = int(seed)
    if seed < 0:
        raise ValueError(f"seed must be >= 0 (got {seed})")
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    init_seed, data_seed = (int(s) for s in np.random.SeedSequence(seed).generate_state(2))
    g_init = torch.Generator(device="cpu").manual_seed(init_seed)
    g_data = torch.Generator(device="cpu").manual_seed(data_seed)
    return Seeds(init=g_init, data=g_data, seed=seed)


DEVICE_CHOICES = "cpu, cuda, cuda:N (N an existing GPU index)"


def select_device(name: str | None = None) -> torch.device:
    """``name`` if given (cpu, cuda, cuda:N), else cuda when present, else cpu. Anything else
    (mps, a missing GPU index, a typo) is a ValueError naming ``--device`` and the choices."""
    if name in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except (RuntimeError, TypeError) as e:
        raise ValueError(f"--device {name!r} is not a device name; choose {DEVICE_CHOICES}") from e
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"--device {name!r}: this suite supports {DEVICE_CHOICES}")
    if dev.type == "cpu" and dev.index not in (None, 0):
        raise ValueError(f"--device {name!r}: use --device cpu")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(
                f"--device {name}: CUDA is not available on this machine; use --device cpu"
            )
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(
                f"--device {name}: this machine has {torch.cuda.device_count()} GPU(s) "
                f"(cuda:0 .. cuda:{torch.cuda.device_count() - 1})"
            )
    return dev


def available_memory() -> int | None:
    """Bytes of memory this process can still allocate: the kernel's MemAvailable, capped by a
    cgroup (container) limit; None where neither can be read (then nothing is checked)."""
    have = None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    have = int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:  # cgroup v2: the container's limit minus what it uses
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit.isdigit():
            used = int(Path("/sys/fs/cgroup/memory.current").read_text().strip())
            room = max(0, int(limit) - used)
            have = room if have is None else min(have, room)
    except (OSError, ValueError):
        pass
    return have


def progress(iterable=None, **kwargs):
    """tqdm that switches itself off when stderr is not a terminal (logs, CI, notebooks' stdout)."""
    from tqdm.auto import tqdm

    kwargs.setdefault("disable", not sys.stderr.isatty())
    kwargs.setdefault("dynamic_ncols", True)
    return tqdm(iterable, **kwargs)


# ------------------------------------------------------------------------------------ Ctrl-C
class GracefulInterrupt:
    """Ctrl-C handler for training loops: the first SIGINT sets ``requested`` so the loop can save
    a checkpoint and stop at its next safe point; a second one raises KeyboardInterrupt at once.
    Outside the main thread (where signals can't be handled) it does nothing."""

    def __init__(self) -> None:
        self.requested = False
        self._old: Any = None

    def __enter__(self) -> GracefulInterrupt:
        if threading.current_thread() is threading.main_thread():
            self._old = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested:  # a second Ctrl-C: give up immediately
            raise KeyboardInterrupt
        self.requested = True
        print("\ninterrupt: saving at the next safe point (Ctrl-C again to abort)", file=sys.stderr)

    def __exit__(self, *exc: Any) -> None:
        if self._old is not None:
            signal.signal(signal.SIGINT, self._old)
            self._old = None


# ------------------------------------------------------------------------------------ argparse
def run_dir_flags_error(out_dir: str | os.PathLike, resume: bool, overwrite: bool) -> str | None:
    """What is wrong with ``--out_dir`` / ``--resume`` / ``--overwrite`` together (None: nothing):
    the two options exclude each other, a directory holding a run (its config.json) needs one of
    them, and ``--resume`` needs such a run. The caller passes the message to ``parser.error``."""
    if resume and overwrite:
        return "--resume and --overwrite exclude each other: continue the run or replace it"
    if problem := out_dir_error(out_dir):
        return problem
    exists = (Path(out_dir) / "config.json").exists()
    if exists and not (resume or overwrite):
        return (
            f"--out_dir {out_dir} already holds a run: pass --resume to continue it, --overwrite "
            "to replace it, or choose another directory"
        )
    if resume and not exists:
        return f"--resume: {out_dir} holds no run to continue (no config.json)"
    return None


def out_dir_error(out_dir: str | os.PathLike) -> str | None:
    """Why ``--out_dir`` cannot hold a run (None: it can), checked before any data is loaded: it
    or a folder above it is a file, or the folder that would hold it is not writable."""
    path = Path(out_dir)
    for p in (path, *path.parents):
        if p.exists():
            if not p.is_dir():
                return f"--out_dir {out_dir}: {p} is a file, not a folder; choose another directory"
            if not os.access(p, os.W_OK | os.X_OK):
                where = "is" if p == path else f"would be created in {p}, which is"
                return (
                    f"--out_dir {out_dir} {where} not writable (permissions or a read-only "
                    "file system); choose another directory"
                )
            return None
    return None


def common_parser() -> argparse.ArgumentParser:
    """Parent parser with the flags every training script shares (``parents=[common_parser()]``)."""
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("common")
    g.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    g.add_argument(
        "--device", type=str, default=None, help=f"{DEVICE_CHOICES} (default: cuda if available)"
    )
    g.add_argument(
        "--out_dir", type=str, default=None, help="run directory to write (default: under runs/)"
    )
    return p


def finite_float(text: str) -> float:
    """argparse ``type=`` for a float flag that must be finite: ``--rho nan`` is an error (argparse
    prefixes the message with the flag's name)."""
    try:
        x = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(x):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
    return x


def finite_or_none(x: float | None) -> float | None:
    """A float for JSON where a diverged value should read as missing, not as a number."""
    return x if x is not None and math.isfinite(x) else None


# ------------------------------------------------------------- a parser from a config dataclass
def flag(
    default: Any = dataclasses.MISSING,
    *,
    help: str,
    group: str | None = None,
    choices: tuple | None = None,
    default_factory: Any = dataclasses.MISSING,
    **meta: Any,
) -> Any:
    """A dataclass field that is also a command-line flag ``--<field name>``.

    ``help`` (with the unit), ``group`` (an argparse group) and ``choices`` go to the parser that
    :func:`dataclass_parser` generates. Further keys of ``meta``, all optional:

    - ``ge``, ``gt``, ``le``, ``lt``: bounds that :func:`field_errors` checks (every element of a
      list field), with ``why`` said after the bound in the message;
    - ``parse``: the argparse ``type=`` of one token where it is not the field's own (e.g. ``str``
      for ``ALGO=VALUE`` tokens the caller turns into the field's value);
    - ``nargs``: where it is not the field's own (a list field takes ``+``);
    - ``cli_default``: the parser's default where it is not the field's (then ``default_text``
      says what it means in ``--help``); ``default_text``: ``--help``'s words for the default.

    A field without ``help`` metadata (a plain ``dataclasses.field``) is not a flag.
    """
    kw: dict[str, Any] = {"metadata": dict(group=group, help=help, choices=choices, **meta)}
    if default_factory is not dataclasses.MISSING:
        kw["default_factory"] = default_factory
    else:
        kw["default"] = default
    return dataclasses.field(**kw)


_SCALARS = (("bool", bool), ("int", int), ("float", float), ("str", str))


def field_kind(cls: type, f: dataclasses.Field) -> tuple[type, bool]:
    """(element type, is a list) of a field annotated ``bool``, ``int``, ``float``, ``str``,
    optionally ``| None`` or as ``list[...]`` (annotations may be strings: ``from __future__``)."""
    ann = str(f.type).replace("typing.", "")
    is_list = ann.startswith("list[")
    inner = ann[5:] if is_list else ann
    for name, t in _SCALARS:
        if inner.startswith(name):
            return t, is_list
    raise TypeError(f"{cls.__name__}.{f.name}: unsupported type {ann} for a flag")


def cli_fields(cls: type) -> list[dataclasses.Field]:
    """The fields of ``cls`` that are flags (those declared with :func:`flag`)."""
    return [f for f in dataclasses.fields(cls) if "help" in f.metadata]


def _default(f: dataclasses.Field) -> Any:
    if "cli_default" in f.metadata:
        return f.metadata["cli_default"]
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None if f.default is dataclasses.MISSING else f.default


def dataclass_parser(
    cls: type,
    *,
    prog: str,
    description: str,
    groups: tuple[str, ...] = (),
    resolve_choices: Any = None,
    parser: argparse.ArgumentParser | None = None,
    **parser_kw: Any,
) -> argparse.ArgumentParser:
    """The command line of ``cls``: one flag ``--name`` per :func:`flag` field, in field order.

    The flag's type comes from the annotation (``bool``: a switch, off by default; ``float``:
    :func:`finite_float`; ``list[X]``: one or more values), its help from the metadata with
    "(default: ...)" appended, so a flag is declared in exactly one place. ``groups`` fixes the
    order of the argument groups (a field's ``group``, when it has one, must then be one of them;
    without ``groups`` they come in order of first use; a field without a group goes to the
    parser's own list);
    ``resolve_choices(field)`` returns a field's choices where they are computed (the default:
    the metadata's). ``parser_kw`` goes to ``argparse.ArgumentParser`` (e.g. ``parents``).
    """
    p = parser or argparse.ArgumentParser(prog=prog, description=description, **parser_kw)
    made = {g: p.add_argument_group(g) for g in groups}
    for f in cli_fields(cls):
        name = f.metadata.get("group")
        if name and name not in made:
            if groups:
                raise ValueError(f"{cls.__name__}.{f.name}: group {name!r} not in {groups}")
            made[name] = p.add_argument_group(name)  # groups in order of first use
        g = made[name] if name else p
        t, is_list = field_kind(cls, f)
        text = f.metadata["help"]
        if t is bool:
            shown = f.metadata.get("default_text", "off")
            g.add_argument(f"--{f.name}", action="store_true", help=f"{text} (default: {shown})")
            continue
        default = _default(f)
        shown = f.metadata.get("default_text")
        if shown is None:
            if default is None:
                shown = "none"
            elif isinstance(default, list):
                shown = " ".join(map(str, default)) or "none"
            else:
                shown = "%(default)s"
        choices = resolve_choices(f) if resolve_choices else f.metadata.get("choices")
        parse = f.metadata.get("parse", finite_float if t is float else t)
        nargs = f.metadata.get("nargs", "+" if is_list else None)
        g.add_argument(
            f"--{f.name}",
            type=parse,
            nargs=nargs,
            choices=choices,
            default=default,
            help=f"{text} (default: {shown})",
        )
    return p


def _num(x: float) -> str:
    return str(x) if isinstance(x, int) else f"{x:g}"


_BOUNDS = (
    ("ge", lambda x, b: x >= b, ">="),
    ("gt", lambda x, b: x > b, ">"),
    ("le", lambda x, b: x <= b, "<="),
    ("lt", lambda x, b: x < b, "<"),
)


def field_errors(cfg: Any, *, resolve_choices: Any = None) -> str | None:
    """The first flag of ``cfg`` (a dataclass instance) whose value breaks its declared rules,
    as a message naming the flag (None: all hold): a float that is not finite, a value outside
    its choices, a bound (``ge``/``gt``/``le``/``lt`` of :func:`flag`) not met. None values
    (an unset optional flag) are not checked. The caller passes the message to ``parser.error``."""
    for f in cli_fields(type(cfg)):
        value = getattr(cfg, f.name)
        values = value if isinstance(value, (list, tuple)) else [value]
        choices = resolve_choices(f) if resolve_choices else f.metadata.get("choices")
        for v in values:
            if v is None:
                continue
            if isinstance(v, float) and not math.isfinite(v):
                return f"--{f.name} must be a finite number (got {v})"
            if choices is not None and v not in choices:
                return f"--{f.name} {v!r}: unknown; choose from {', '.join(map(str, choices))}"
            bounds = [(ok, f.metadata[k], sign) for k, ok, sign in _BOUNDS if k in f.metadata]
            if not isinstance(v, (bool, str)) and not all(ok(v, b) for ok, b, _ in bounds):
                why = f" ({f.metadata['why']})" if f.metadata.get("why") else ""
                rule = " and ".join(f"{sign} {_num(b)}" for _, b, sign in bounds)
                return f"--{f.name} must be {rule}{why}; got {_num(v)}"
    return None
