"""deep_nets/README.md's parity table against the command line: the "ours" column lists exactly the
flags of ``deep_nets/train.py --help``, the "original" column every flag of the original's
``train.py`` (its ``get_args``, copied here by hand), and each row has a known status."""

from __future__ import annotations

import re
from pathlib import Path

from deep_nets.config import build_parser

README = Path(__file__).resolve().parent.parent / "deep_nets" / "README.md"
# tml-epfl/understanding-sam deep_nets/train.py get_args(), in its order.
ORIGINAL_FLAGS = """
batch_size dataset model epochs lr_schedule ln_schedule lr_max p_label_noise noise_type attack
at_norm universal_at at_pred_label eps sam_rho sam_step_size_mult sam_iters sam_lr_mult
sam_epoch_frac_start sam_epoch_frac_end sam_no_grad_norm sam_apply_to_pairing sam_use_prev_batch
only_sam_step_size swa_tau add_weight_perturb_scale mul_weight_perturb_scale weight_perturb_distr
sgd_p_label_noise attack_init attack_iters pgd_train_n_iters pgd_alpha_train frac_train acc_steps
frac_rm_per_batch n_rm_pts l1_reg l2_reg pairing_warmup_frac_epochs trades_lambda
input_grad_reg_lambda weight_grad_reg_lambda jac_reg_lambda l2_pairing_lambda pairing_noise_std
kl_pairing_lambda clean_loss_coeff loss_offset gce_q grad_gauss_std scale_init droprate
epoch_rm_noise activation rm_criterion loss seed gpu alpha_weights_linear_at
alpha_weights_linear_at1 alpha_weights_linear_at2 normalize_x export_images debug final_adv_eval
save_model_each_k_epochs half_prec no_data_augm freeze_bn_stats eval_early_stopped_model
eval_iter_freq n_eval_every_k_iter n_layers model_width batch_size_eval n_final_eval exp_name
rlat_layers rlat_dim_scaling rlat_layer_scaling model_path
""".split()
STATUSES = {"same", "default differs", "different", "missing", "ours"}


def table_rows() -> list[list[str]]:
    text = README.read_text()
    section = text.split("## Parity with the original code", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("|")]
    assert rows[0].startswith("| original") and rows[1].startswith("|---")
    return [[c.strip() for c in line.strip().strip("|").split(" | ")] for line in rows[2:]]


def flags_in(cell: str) -> set[str]:
    return set(re.findall(r"`--([a-z0-9_]+)`", cell))


def test_parity_table_matches_help_and_the_original():
    rows = table_rows()
    ours = {a.option_strings[0][2:] for a in build_parser()._actions if a.dest != "help"}
    listed_ours: set[str] = set()
    listed_original: set[str] = set()
    for row in rows:
        assert len(row) == 4, row
        original, here, status, note = row
        assert status in STATUSES, row
        listed_original |= flags_in(original)
        listed_ours |= flags_in(here)
        if status == "missing":
            assert here == "—" and note, row
        elif status == "ours":
            assert original == "—" and flags_in(here), row
        else:
            assert flags_in(original) and flags_in(here), row
        if status == "same":  # same name, same behaviour
            assert flags_in(original) == flags_in(here), row
    assert listed_ours == ours, listed_ours ^ ours
    assert listed_original == set(ORIGINAL_FLAGS), listed_original ^ set(ORIGINAL_FLAGS)


def test_help_states_the_defaults_the_table_names():
    text = " ".join(build_parser().format_help().split())
    for phrase in (
        "(default: 200)",
        "(default: 0.0005)",
        "(default: 128)",
        "(default: first)",
        "(default: float16)",
        "(default: original)",
        "(default: 0.999)",
    ):
        assert phrase in text, phrase


# The original's get_args() defaults of the flags the table gives one, copied by hand.
ORIGINAL_DEFAULTS = dict(
    batch_size=128,
    dataset="cifar10",
    model="resnet18",
    epochs=100,
    lr_schedule="piecewise",
    lr_max=0.1,
    p_label_noise=0.0,
    noise_type="sym",
    sam_rho=0.0,
    sam_step_size_mult=1.0,
    sam_iters=1,
    sam_lr_mult=0.0,
    sam_epoch_frac_start=0.0,
    sam_epoch_frac_end=1.0,
    swa_tau=0.999,
    add_weight_perturb_scale=0.0,
    mul_weight_perturb_scale=0.0,
    weight_perturb_distr="gauss",
    frac_train=1,
    acc_steps=1,
    l1_reg=0.0,
    l2_reg=0.0,
    grad_gauss_std=0.0,
    scale_init=0.0,
    droprate=0.0,
    activation="relu",
    seed=0,
    save_model_each_k_epochs=0,
    eval_iter_freq=-1,
    n_eval_every_k_iter=512,
    batch_size_eval=512,
    n_final_eval=10000,
)


def _value(text: str):
    try:
        return float(text)
    except (TypeError, ValueError):
        return str(text)


def test_the_tables_defaults_are_the_originals_and_ours_where_it_says_same():
    """A row `--flag` (d) | `--flag` | status: d is the original's default; "same" rows have
    our default d too, "default differs" rows another one."""
    ours = {a.option_strings[0][2:]: a.default for a in build_parser()._actions if a.dest != "help"}
    checked = set()
    for original, here, status, _ in table_rows():
        m = re.fullmatch(r"`--([a-z0-9_]+)` \(([^):]*)(?::[^)]*)?\)", original)
        if not m or m.group(1) not in ORIGINAL_DEFAULTS:
            continue
        flag, shown = m.groups()
        assert _value(shown) == _value(ORIGINAL_DEFAULTS[flag]), (flag, shown)
        (mine,) = flags_in(here)
        if status == "same":
            assert _value(ours[mine]) == _value(shown), (flag, ours[mine])
        elif status == "default differs":
            assert _value(ours[mine]) != _value(shown), (flag, ours[mine])
        checked.add(flag)
    assert checked == set(ORIGINAL_DEFAULTS), set(ORIGINAL_DEFAULTS) - checked


def test_rows_that_differ_say_how():
    for original, _, status, note in table_rows():
        if status in ("different", "default differs"):
            assert len(note) > 10, (original, note)
