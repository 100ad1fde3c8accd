"""Deep-network experiments (REFERENCE.md section 4.1): data sets, models and the trainer.

`deep_nets.data.load_dataset` gives train / validation / test tensors on a device,
`deep_nets.models.build_model` the networks; `deep_nets/train.py` is the command-line trainer.
"""
