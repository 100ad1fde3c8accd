"""Deep-network experiments (PAPERS.md#deep-nets): data sets, models and the trainer.

`deep_nets.data.load_dataset` gives train / validation / test tensors on a device,
`deep_nets.models.build_model` the networks; `deep_nets/train.py` is the command-line trainer.
"""
