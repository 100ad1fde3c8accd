"""debug: a laptop-sized smoke run of the whole trainer (nanoGPT-style debug config).

Claim: none; checks that data, model, m-SAM, evaluation, checkpointing work end to end.
Paper number: n/a.
Command: python -m deep_nets.train --config debug --out_dir runs/debug
Measured here: 2 epochs in a few seconds on 2 CPU cores (after ~7 s generating mnist1d).
"""

FLAGS = dict(
    dataset="mnist1d",
    model="mlp",
    model_width=32,
    batch_size=32,
    epochs=2,
    frac_train=0.2,
    lr_max=0.05,
    sam_rho=0.05,
    acc_steps=4,
    n_eval_train=500,
    n_sharpness=128,
    device="cpu",
)
