"""A learned temperature: the analytic gradient of log tau, its floor, and the module."""

from __future__ import annotations

import math

import pytest
import torch

from dyntemp import NTXent, ntxent
from dyntemp import loss as loss_module
from dyntemp import temperature as T
from dyntemp.loss import reference_ntxent


@pytest.fixture(params=["cpu-path", "gpu-path"])
def path(request, monkeypatch):
    if request.param == "gpu-path":
        monkeypatch.setattr(loss_module, "_may_read_values", lambda device: False)
    return request.param


def views(n=5, d=4, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    z1 = torch.randn(n, d, generator=g, dtype=torch.float64)
    z2 = z1 + 0.7 * torch.randn(n, d, generator=g, dtype=torch.float64)
    return z1.to(dtype).requires_grad_(), z2.to(dtype).requires_grad_()


def learned(tau=0.2, floor=0.01, dtype=torch.float32, value=None):
    rule = T.Learned(tau, tau_floor=floor).to(dtype=dtype)
    if value is not None:
        with torch.no_grad():
            rule.log_tau.fill_(math.log(value))
    return rule


@pytest.mark.parametrize("decoupled", [False, True], ids=["ntxent", "dcl"])
def test_gradcheck_in_float64(decoupled, path):
    z1, z2 = views(n=4, d=3, dtype=torch.float64, seed=1)
    rule = learned(0.3, dtype=torch.float64)

    def f(a, b, theta):
        rule.log_tau = theta  # the rule reads the tensor gradcheck perturbs
        return ntxent(a, b, rule, decoupled=decoupled)

    theta = torch.tensor(math.log(0.3), dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(f, (z1, z2, theta))


@pytest.mark.parametrize("decoupled", [False, True], ids=["ntxent", "dcl"])
def test_matches_autograd_through_the_temperature(decoupled, path):
    """Against reference_ntxent in plain autograd (float64), where tau = exp(theta) is in
    the graph: the same loss and the same gradients for the views and for log tau."""
    z1, z2 = views()
    ours = learned(0.15)
    loss = ntxent(z1, z2, ours, decoupled=decoupled)
    g1, g2, gt = torch.autograd.grad(loss, (z1, z2, ours.log_tau))
    r1, r2 = (z.detach().double().requires_grad_() for z in (z1, z2))
    theirs = learned(0.15, dtype=torch.float64)
    expected = reference_ntxent(r1, r2, theirs, decoupled=decoupled)
    e1, e2, et = torch.autograd.grad(expected, (r1, r2, theirs.log_tau))
    torch.testing.assert_close(loss.double(), expected, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(g1.double(), e1, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(g2.double(), e2, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(gt.double(), et, rtol=1e-5, atol=1e-6)
    assert gt.shape == () and gt.dtype == torch.float32 and gt != 0


@pytest.mark.parametrize("decoupled", [False, True], ids=["ntxent", "dcl"])
def test_closed_form_of_the_log_tau_gradient(decoupled):
    """dL/dlog tau = mean_i (x_ip - sum_k P_ik x_ik), P the softmax over i's denominator."""
    z1, z2 = (z.detach().double() for z in views(n=6, d=5, seed=2))
    rule = learned(0.2, dtype=torch.float64)
    (grad,) = torch.autograd.grad(ntxent(z1, z2, rule, decoupled=decoupled), rule.log_tau)
    z = torch.nn.functional.normalize(torch.cat([z1, z2]), dim=1)
    n2, n = 12, 6
    x = z @ z.T / rule.value()  # exp of the stored theta (log 0.2 rounded to float32)
    rows = torch.arange(n2)
    positive = torch.cat([rows[n:], rows[:n]])
    x_ip = x[rows, positive]
    masked = torch.eye(n2, dtype=torch.bool)
    if decoupled:
        masked[rows, positive] = True
    p = torch.softmax(x.masked_fill(masked, float("-inf")), dim=1)
    closed = (x_ip - (p * x.masked_fill(masked, 0.0)).sum(1)).mean()
    torch.testing.assert_close(grad, closed, rtol=1e-10, atol=1e-12)


def test_the_floor_clamps_and_stops_the_gradient_below_it(path):
    z1, z2 = views()
    below = learned(0.2, floor=0.05, value=0.02)  # exp(theta) = 0.02 < 0.05: tau = 0.05
    loss = ntxent(z1, z2, below)
    (grad,) = torch.autograd.grad(loss, below.log_tau)
    assert grad == 0
    torch.testing.assert_close(loss, ntxent(z1, z2, 0.05))
    at = learned(0.2, floor=0.05)
    at.clamp_()  # nothing to do above the floor
    assert at.log_tau.item() == pytest.approx(math.log(0.2))
    below.clamp_()  # as CLIP's training code: theta held at log tau_floor
    assert below.value().item() == pytest.approx(0.05)
    (grad,) = torch.autograd.grad(ntxent(z1, z2, below), below.log_tau)
    assert grad != 0  # at the floor the gradient flows: it can leave it again


def test_the_module_holds_the_parameter_and_an_optimiser_trains_it():
    rule = T.Learned(0.2)
    module = NTXent(rule)
    assert [name for name, _ in module.named_parameters()] == ["log_tau"]
    assert list(module.parameters())[0] is rule.log_tau
    optimizer = torch.optim.SGD(module.parameters(), lr=0.5)
    z1, z2 = views()
    before = rule.value().item()
    for _ in range(3):
        optimizer.zero_grad()
        module(z1.detach(), z2.detach()).backward()
        optimizer.step()
    assert rule.value().item() != before
    state = rule.state_dict()
    other = T.Learned(0.2)
    other.load_state_dict(state)
    assert torch.equal(other.log_tau, rule.log_tau)
    assert other == rule and repr(rule) == "Learned(tau=0.2, tau_floor=0.01)"
    with pytest.raises(ValueError, match="temperature state"):
        other.load_state_dict({})


def test_from_name_and_params():
    rule = T.from_name("learned", tau=0.07, tau_floor=0.01)
    assert rule.params() == {"tau": 0.07, "tau_floor": 0.01}
    assert rule.value().item() == pytest.approx(0.07)
    assert "learned" in T.NAMES
    assert T.from_name("learned").value().item() == pytest.approx(0.2)
