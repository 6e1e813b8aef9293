"""MACL in full: the model-aware temperature, its floor, and the reweighting 1 / (1 - P_ip)."""

from __future__ import annotations

import pytest
import torch
from host_reads import host_reads

from dyntemp import loss as loss_module
from dyntemp import ntxent
from dyntemp import temperature as T
from dyntemp.config import TrainConfig


@pytest.fixture(params=["cpu-path", "gpu-path"])
def path(request, monkeypatch):
    if request.param == "gpu-path":
        monkeypatch.setattr(loss_module, "_may_read_values", lambda device: False)
    return request.param


def macl_objective(z1, z2, tau0, alpha, a0, reweight=True, floor=0.01):
    """The MACL objective as the authors' code writes it, in float64: the positive in
    column 0 of [pos, negatives], A the mean positive similarity (detached), the loss
    -W log P_ip with W = 1 / (1 - P_ip) detached and not normalised, averaged over 2N."""
    z1 = torch.nn.functional.normalize(z1.double(), dim=1)
    z2 = torch.nn.functional.normalize(z2.double(), dim=1)
    n = z1.shape[0]
    out = torch.cat([z1, z2])
    cov = out @ out.T
    keep = torch.ones_like(cov, dtype=torch.bool)
    keep.fill_diagonal_(False)
    keep[torch.arange(n), torch.arange(n) + n] = False
    keep[torch.arange(n) + n, torch.arange(n)] = False
    neg = cov[keep].view(2 * n, -1)
    pos = torch.cat([torch.diag(cov, n), torch.diag(cov, -n)])[:, None]
    a = pos.detach().mean()
    tau = torch.clamp(tau0 * (1 + alpha * (a - a0)), min=floor)
    # -log P_ip = log(1 + r) and 1 / (1 - P_ip) = 1 + 1 / r with r = sum_neg e^x / e^x_ip:
    # in log space, float64 holds them also where P_ip rounds to 1 (there the code's
    # 1 / (1 - P) is infinite and -log P zero)
    log_r = torch.logsumexp(neg / tau, dim=1) - pos[:, 0] / tau
    w = 1 + torch.exp(-log_r.detach()) if reweight else torch.ones_like(log_r)
    return (w * torch.nn.functional.softplus(log_r)).mean(), tau


def views(n=6, d=5, noise=0.7, seed=0):
    g = torch.Generator().manual_seed(seed)
    z1 = torch.randn(n, d, generator=g, dtype=torch.float64)
    z2 = z1 + noise * torch.randn(n, d, generator=g, dtype=torch.float64)
    return z1.float().requires_grad_(), z2.float().requires_grad_()


SETTINGS = [
    (0.1, 0.5, 0.0),  # the paper's vision setting (lightly's defaults)
    (0.2, 1.0, 0.0),  # the authors' MACLb: tau_init (1 + beta A)
    (0.05, 2.0, 0.8),  # the SimCSE setting, beyond 1 + alpha (A - a0) > 0 on [-1, 1]
    (0.1, -0.5, 0.3),  # a negative alpha is a setting too
]


@pytest.mark.parametrize("noise", [0.3, 0.7, 3.0], ids=["close", "related", "far"])
@pytest.mark.parametrize("reweight", [True, False], ids=["reweighted", "plain"])
@pytest.mark.parametrize("setting", SETTINGS, ids=str)
def test_matches_the_authors_objective(setting, reweight, noise, path):
    z1, z2 = views(noise=noise)
    rule = T.MACL(*setting, reweight=reweight)
    loss = ntxent(z1, z2, rule)
    g1, g2 = torch.autograd.grad(loss, (z1, z2))
    r1, r2 = (z.detach().double().requires_grad_() for z in (z1, z2))
    expected, _ = macl_objective(r1, r2, *setting, reweight=reweight)
    e1, e2 = torch.autograd.grad(expected, (r1, r2))
    torch.testing.assert_close(loss.double(), expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(g1.double(), e1, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(g2.double(), e2, rtol=1e-4, atol=1e-5)
    # the temperature does not depend on the pair: in the graph or not, the same
    again = torch.autograd.grad(ntxent(z1, z2, rule, detach_temperature=False), z1)[0]
    torch.testing.assert_close(again, g1)


def test_the_simcse_setting_holds_tau_at_the_floor_where_the_formula_turns_negative():
    rule = T.from_name("macl", tau=0.05, alpha=2.0, a0=0.8)
    assert rule.reweight  # on by default, as the authors train
    s = torch.zeros((), dtype=torch.float64)
    for a, expected in [(0.9, 0.06), (0.8, 0.05), (0.4, 0.01), (0.3, 0.01), (-1.0, 0.01)]:
        tau = rule(s, positive_mean=torch.tensor(a, dtype=torch.float64))
        assert tau.item() == pytest.approx(expected, abs=1e-12), a
    assert T.MACL(0.05, 2.0, 0.8, tau_floor=0.001)(s, positive_mean=torch.tensor(0.2)).item() == (
        pytest.approx(0.001)
    )
    # views far apart: A below 0.3, the floor is what the loss uses
    z1, z2 = views(noise=3.0, seed=0)
    r1, r2 = (z.detach().double() for z in (z1, z2))
    expected, tau = macl_objective(r1, r2, 0.05, 2.0, 0.8)
    assert tau.item() == pytest.approx(0.01)
    torch.testing.assert_close(ntxent(r1, r2, rule), expected, rtol=1e-9, atol=1e-12)


def test_without_reweighting_it_is_nt_xent_at_the_model_aware_temperature():
    z1, z2 = views()
    zn1, zn2 = (torch.nn.functional.normalize(z, dim=1) for z in (z1, z2))
    a = (zn1 * zn2).sum(1).mean().item()
    fixed = T.Fixed(0.1 * (1 + 0.5 * (a - 0.2)))
    plain = ntxent(z1, z2, T.MACL(0.1, 0.5, 0.2, reweight=False))
    torch.testing.assert_close(plain, ntxent(z1, z2, fixed), rtol=1e-6, atol=1e-7)
    assert ntxent(z1, z2, T.MACL(0.1, 0.5, 0.2)) > plain  # every weight exceeds 1


def test_a_nearly_solved_batch_stays_finite(path):
    """P_ip near 1: w_i L_i -> 1 and the gradient's rows stay bounded (no 0 / 0)."""
    z1, z2 = views(n=8, d=16, noise=1e-4, seed=4)
    rule = T.MACL(0.05, 0.5, 0.0)
    loss = ntxent(z1, z2, rule)
    g1, g2 = torch.autograd.grad(loss, (z1, z2))
    r1, r2 = (z.detach().double().requires_grad_() for z in (z1, z2))
    expected, _ = macl_objective(r1, r2, 0.05, 0.5, 0.0)
    assert torch.isfinite(loss) and torch.isfinite(g1).all() and torch.isfinite(g2).all()
    torch.testing.assert_close(loss.double(), expected, rtol=1e-4, atol=1e-5)


def test_reweighting_with_the_decoupled_loss_is_refused():
    z1, z2 = views()
    with pytest.raises(ValueError, match="turn the reweighting off"):
        ntxent(z1, z2, T.MACL(), decoupled=True)
    ntxent(z1, z2, T.MACL(reweight=False), decoupled=True)  # without it: DCL at MACL's tau
    config = TrainConfig(out="run", temperature="macl", decoupled=True)
    with pytest.raises(ValueError, match="--no-reweight"):
        config.check()
    TrainConfig(out="run", temperature="macl", decoupled=True, reweight=False).check()


def test_the_command_line_options_reach_the_rule():
    config = TrainConfig(temperature="macl", tau=0.05, alpha=2.0, a0=0.8, reweight=False)
    assert config.temperature_rule() == T.MACL(0.05, 2.0, 0.8, reweight=False)
    assert TrainConfig(temperature="macl").temperature_rule().reweight
    with pytest.raises(ValueError, match="reweight does not apply to the temperature rule"):
        TrainConfig(out="run", temperature="dystress", reweight=True).check()


def test_the_gpu_path_reads_nothing_with_the_reweighting(monkeypatch):
    monkeypatch.setattr(loss_module, "_may_read_values", lambda device: False)
    z1, z2 = views(n=8, d=4)
    with host_reads() as reads:
        ntxent(z1, z2, T.MACL(0.05, 2.0, 0.8)).backward()
    assert reads == []
