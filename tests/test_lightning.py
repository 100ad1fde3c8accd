"""SAM inside a PyTorch Lightning module with manual optimization (the README's pattern)."""

import lightning as L
import torch
from torch import nn

from sharpness import SAM, frozen_bn_stats
from tests.core_utils import params_of, tiny_data, tiny_model


class SAMModule(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.automatic_optimization = False
        self.net = tiny_model(bn=True)
        self.steps_done = 0

    def training_step(self, batch, batch_idx):
        x, y = batch
        opt = self.optimizers()  # Lightning's wrapper: its step() counts global steps
        opt.zero_grad()
        loss = nn.functional.cross_entropy(self.net(x), y)
        self.manual_backward(loss)

        def closure():  # the second forward-backward, at w + e
            with frozen_bn_stats(self.net):
                perturbed = nn.functional.cross_entropy(self.net(x), y)
            self.manual_backward(perturbed)
            return perturbed

        opt.step(closure=closure)
        self.steps_done += 1
        return loss

    def configure_optimizers(self):
        return SAM(self.parameters(), torch.optim.SGD, rho=0.05, lr=0.1, momentum=0.9)


def test_sam_trains_two_steps_in_lightning(tmp_path):
    x, y = tiny_data(32)
    loader = torch.utils.data.DataLoader(list(zip(x, y)), batch_size=16)
    module = SAMModule()
    w0 = params_of(module.net)
    trainer = L.Trainer(
        max_steps=2,
        max_epochs=1,  # a step-count regression must end, not loop forever
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(module, loader)
    assert module.steps_done == 2
    assert module.net[1].num_batches_tracked.item() == 2  # BN counted the first passes only
    # the same two steps by hand give the same weights
    ref = tiny_model(bn=True)
    opt = SAM(ref.parameters(), torch.optim.SGD, rho=0.05, lr=0.1, momentum=0.9)
    for i in range(2):
        xb, yb = x[16 * i : 16 * i + 16], y[16 * i : 16 * i + 16]
        nn.functional.cross_entropy(ref(xb), yb).backward()
        opt.first_step(zero_grad=True)
        with frozen_bn_stats(ref):
            nn.functional.cross_entropy(ref(xb), yb).backward()
        opt.second_step(zero_grad=True)
    for a, b in zip(params_of(module.net), params_of(ref)):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)
    assert not all(torch.equal(a, b) for a, b in zip(params_of(module.net), w0))
