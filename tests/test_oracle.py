"""An independent implementation as an oracle: the PyPI package pytorch-optimizer's SAM/ASAM."""

import pytest
import torch
from pytorch_optimizer import SAM as PeerSAM

from sharpness import SAM
from tests.core_utils import loss_fn, params_of, tiny_data, tiny_model

# pytorch-optimizer accumulates the squared gradient norm in float32 even for float64 parameters
# (its get_global_gradient_norm), so its |e| carries a relative error of ~1e-7. The tolerances
# below allow that and nothing more: a wrong rule (T instead of T^2, eta = 0.01, no
# normalization) changes e by more than 1e-3 relative on this model.
E_RTOL = 1e-6


def _first_backward(model, opt, x, y):
    opt.zero_grad()
    loss_fn(model, x, y).backward()


@pytest.mark.parametrize("adaptive", [False, True])
def test_sam_and_asam_equal_pytorch_optimizer(adaptive):
    ours_kw = dict(adaptive=True, eta=0.0, adaptive_weights_only=False) if adaptive else {}
    rho = 0.5 if adaptive else 0.05
    m1, m2 = tiny_model(), tiny_model()
    o1 = SAM(m1.parameters(), torch.optim.SGD, rho=rho, lr=0.1, momentum=0.9, **ours_kw)
    o2 = PeerSAM(m2.parameters(), torch.optim.SGD, rho=rho, adaptive=adaptive, lr=0.1, momentum=0.9)
    for step in range(2):
        x, y = tiny_data(seed=step)
        w0 = params_of(m1)
        for m, o in ((m1, o1), (m2, o2)):
            _first_backward(m, o, x, y)
            o.first_step(zero_grad=True)
        e1 = torch.cat([(p - w).reshape(-1) for p, w in zip(params_of(m1), w0)])
        e2 = torch.cat([(p - w).reshape(-1) for p, w in zip(params_of(m2), w0)])
        assert e1.norm() > 0.01 * rho
        torch.testing.assert_close(e1, e2, rtol=E_RTOL, atol=E_RTOL * e1.abs().max().item())
        for m, o in ((m1, o1), (m2, o2)):
            loss_fn(m, x, y).backward()
            o.second_step(zero_grad=True)
        for a, b in zip(params_of(m1), params_of(m2)):
            torch.testing.assert_close(a, b, rtol=E_RTOL, atol=1e-9)
