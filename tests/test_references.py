"""The rules against other people's code: the authors' loss transcribed in float64 where it
cannot be installed (dual temperature), the installed library elsewhere (lightly's MACLLoss
and cosine_schedule, LibAUC's GCLoss_v1 for iSogCLR). The libraries are test dependencies
(requirements.txt): these tests are not skipped when one is missing, they fail."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from dyntemp import loss as loss_module
from dyntemp import ntxent
from dyntemp import temperature as T


@pytest.fixture(params=["cpu-path", "gpu-path"])
def path(request, monkeypatch):
    """Both ways through the loss: the CPU's (the values may choose the symmetric
    factorisation) and the one taken on a GPU (row by row, reading no value)."""
    if request.param == "gpu-path":
        monkeypatch.setattr(loss_module, "_may_read_values", lambda device: False)
    return request.param


def views(n=6, d=5, seed=0, spread=0.7):
    g = torch.Generator().manual_seed(seed)
    z1 = torch.randn(n, d, generator=g, dtype=torch.float64)
    z2 = z1 + spread * torch.randn(n, d, generator=g, dtype=torch.float64)
    return z1.requires_grad_(), z2.requires_grad_()


def assert_same_loss_and_gradients(ours, theirs, inputs, rtol=1e-12, grad_rtol=1e-10):
    torch.testing.assert_close(ours, theirs, rtol=rtol, atol=0)
    grads = torch.autograd.grad(ours, inputs)
    for a, b in zip(grads, torch.autograd.grad(theirs, inputs), strict=True):
        torch.testing.assert_close(a, b, rtol=grad_rtol, atol=1e-14)


# ----------------------------------------------------------------------------- dual temperature


def dual_temperature_steps(logits, temperature, dt_m):
    """The steps of the authors' ``dual_temperature_loss_func`` from the logits on
    (github.com/ChaoningZhang/Dual-temperature, solo/losses/dual_temperature_loss.py, lines
    45-61), written out in float64: each row holds the positive's similarity first, then the
    negatives'."""
    logits_intra = logits / temperature
    prob_intra = F.softmax(logits_intra, dim=1)
    logits_inter = logits / (temperature * dt_m)
    prob_inter = F.softmax(logits_inter, dim=1)
    inter_intra = (1 - prob_inter[:, 0]) / (1 - prob_intra[:, 0])
    loss = -F.log_softmax(logits_intra, dim=-1)[:, 0]
    return (inter_intra.detach() * loss).mean()


def authors_dual_temperature_loss(query, key, temperature=0.1, dt_m=10.0):
    """``dual_temperature_loss_func(query, key)`` (lines 36-43 build the logits: the positive
    q_i . k_i, then q_i against every other key of the batch), on unit vectors as their SimCo
    calls it (``F.normalize`` before the loss)."""
    query, key = F.normalize(query, dim=-1), F.normalize(key, dim=-1)
    pos = torch.einsum("nc,nc->n", [query, key]).unsqueeze(-1)
    neg = torch.einsum("nc,ck->nk", [query, key.T])
    mask_neg = torch.ones_like(neg, dtype=torch.bool).fill_diagonal_(False)
    neg = neg[mask_neg].reshape(neg.size(0), neg.size(1) - 1)
    return dual_temperature_steps(torch.cat([pos, neg], dim=1), temperature, dt_m)


SETTINGS = [(0.1, 10.0), (0.2, 3.0), (0.5, 1.0)]  # the authors' first; dt_m = 1: NT-Xent


@pytest.mark.parametrize(("tau", "dt_m"), SETTINGS)
def test_dual_temperature_is_the_authors_loss_on_their_anchors(tau, dt_m):
    """One view's queries against the other view's batch, the layout of the authors' SimCo:
    the loss's own path for anchors against a set of keys computes their function."""
    q1, q2 = views()
    rule = T.DualTemperature(tau, dt_m)
    rows = torch.arange(q1.shape[0])
    options = (rule, None, True, False, None, 0)  # progress, detached, not decoupled, A, keys
    ours = loss_module._PairwiseNTXent.apply(q1, q2, None, rows, *options)
    assert_same_loss_and_gradients(ours, authors_dual_temperature_loss(q1, q2, tau, dt_m), (q1, q2))
    # SimCo's symmetric loss, both views as queries
    both = (
        loss_module._PairwiseNTXent.apply(q1, q2, None, rows, *options)
        + loss_module._PairwiseNTXent.apply(q2, q1, None, rows, *options)
    ) / 2
    theirs = (
        authors_dual_temperature_loss(q1, q2, tau, dt_m)
        + authors_dual_temperature_loss(q2, q1, tau, dt_m)
    ) / 2
    assert_same_loss_and_gradients(both, theirs, (q1, q2))


@pytest.mark.parametrize(("tau", "dt_m"), SETTINGS)
def test_dual_temperature_in_nt_xent_is_the_authors_steps_on_its_anchors(tau, dt_m, path):
    """NT-Xent's 2N anchors, each with its positive and the 2N - 2 other views as negatives:
    ntxent with the rule is the authors' steps on those logits."""
    z1, z2 = views(n=7, seed=1)
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    n2 = z.shape[0]
    positives = torch.cat([torch.arange(n2 // 2, n2), torch.arange(n2 // 2)])
    sims = z @ z.T
    rows = torch.arange(n2)
    negative = torch.ones(n2, n2, dtype=torch.bool)
    negative[rows, rows] = False
    negative[rows, positives] = False
    logits = torch.cat([sims[rows, positives][:, None], sims[negative].reshape(n2, -1)], dim=1)
    theirs = dual_temperature_steps(logits, tau, dt_m)
    ours = ntxent(z1, z2, T.DualTemperature(tau, dt_m))
    assert_same_loss_and_gradients(ours, theirs, (z1, z2))


def test_dual_temperature_with_equal_temperatures_is_nt_xent():
    """dt_m = 1: the weight is 1 and the loss NT-Xent's at tau."""
    z1, z2 = views()
    assert_same_loss_and_gradients(
        ntxent(z1, z2, T.DualTemperature(0.3, 1.0)), ntxent(z1, z2, 0.3), (z1, z2)
    )


# ----------------------------------------------------------------------------- lightly


@pytest.mark.parametrize(
    ("tau", "alpha", "a0"), [(0.1, 0.5, 0.0), (0.2, 1.0, 0.5), (0.5, 0.0, 1.0), (0.07, 0.3, 0.2)]
)
def test_macl_is_lightlys_macl_loss(tau, alpha, a0, path):
    """lightly's MACLLoss (lightly/loss/macl_loss.py, from its PR #1799): the same temperature
    tau0 (1 + alpha (A - A0)) and the same detached 1 / (1 - P_ip), but lightly adds eps = 1e-8
    to 1 - P_ip. With its eps set to 0 the two agree to float64's rounding; with lightly's eps,
    to within eps / (1 - P_ip)."""
    from lightly.loss import MACLLoss

    z1, z2 = views(n=8, d=6, seed=2)
    rule = T.MACL(tau, alpha, a0)
    exact = MACLLoss(temperature=tau, alpha=alpha, A_0=a0)
    exact.eps = 0.0
    assert_same_loss_and_gradients(ntxent(z1, z2, rule), exact(z1, z2), (z1, z2))
    with_eps = MACLLoss(temperature=tau, alpha=alpha, A_0=a0)(z1, z2)
    torch.testing.assert_close(ntxent(z1, z2, rule), with_eps, rtol=1e-6, atol=0)


def test_the_schedule_is_lightlys_cosine_schedule_with_a_period():
    """Kukleva et al.'s schedule is lightly's cosine_schedule with a period, from tau_max to
    tau_min and back: at the trainer's steps (progress = step / steps per epoch) they agree."""
    from lightly.utils.scheduler import cosine_schedule

    steps_per_epoch = 390
    for tau_min, tau_max, period in [(0.1, 1.0, 400), (0.05, 0.5, 30)]:
        rule = T.CosineSchedule(tau_min, tau_max, period=period)
        for step in [0, 1, 389, 390, 7_800, 77_999, 78_000, 155_999, 156_000, 200_001]:
            progress = step / steps_per_epoch  # as dyntemp.train computes it
            ours = rule.tau(torch.zeros((), dtype=torch.float64), progress).item()
            theirs = cosine_schedule(
                step, 200_001, tau_max, tau_min, period=period * steps_per_epoch
            )
            assert ours == pytest.approx(theirs, rel=1e-13, abs=1e-15), (step, ours, theirs)


# ----------------------------------------------------------------------------- LibAUC


@pytest.mark.parametrize(
    ("dtype", "rtol"), [(torch.float64, 1e-11), (torch.float32, 2e-5)], ids=["float64", "float32"]
)
def test_isogclr_is_libaucs_gcloss_v1_step_by_step(dtype, rtol):
    """LibAUC 2.0.0's GCLoss_v1(enable_isogclr=True) and isogclr_loss on the same batches,
    indices and state, step after step: the same losses, gradients, u, momenta and
    temperatures (to float64's rounding; float32 sums in another order). The batches draw
    their images at random, so some meet images seen before and some not; the first ones
    meet none (gamma = 1)."""
    from libauc.losses import GCLoss_v1

    from dyntemp.isogclr import ISogCLR, isogclr_loss

    images, size, steps = 24, 6, 12
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # LibAUC makes its state with torch's default dtype
    try:
        theirs = GCLoss_v1(N=images, tau=0.1, device=torch.device("cpu"), enable_isogclr=True)
    finally:
        torch.set_default_dtype(default)
    assert (theirs.tau_min, theirs.tau_max, theirs.rho, theirs.eta, theirs.beta) == (
        0.05, 0.7, 0.3, 0.01, 0.9,
    )  # fmt: skip
    ours = ISogCLR().bind(images, dtype=dtype)
    assert ours.params()["gamma"] == theirs.gamma_min
    g = torch.Generator().manual_seed(3)
    first = torch.randperm(images, generator=g)
    for step in range(steps):
        if step < images // size:  # an epoch's batches first: every image unseen
            index = first[step * size : (step + 1) * size]
        else:
            index = torch.randperm(images, generator=g)[:size]
        z1 = torch.randn(size, 8, generator=g, dtype=dtype)
        z2 = z1 + 0.8 * torch.randn(size, 8, generator=g, dtype=dtype)
        ours_z = (z1.clone().requires_grad_(), z2.clone().requires_grad_())
        theirs_z = (z1.clone().requires_grad_(), z2.clone().requires_grad_())
        loss = isogclr_loss(*ours_z, index, ours)
        expected = theirs(*theirs_z, index)
        torch.testing.assert_close(loss, expected, rtol=rtol, atol=rtol * 1e-3)
        grads = torch.autograd.grad(loss, ours_z)
        for a, b in zip(grads, torch.autograd.grad(expected, theirs_z), strict=True):
            torch.testing.assert_close(a, b, rtol=rtol, atol=rtol * 1e-2)
        for name, state in [("u", theirs.u), ("tau_gradient", theirs.grad_tau),
                            ("tau", theirs.learnable_tau)]:  # fmt: skip
            torch.testing.assert_close(
                ours.state(name), state.squeeze(1), rtol=rtol, atol=rtol * 1e-2, msg=name
            )
    assert (ours.state("tau") != 0.1).sum() > images // 2  # the temperatures moved
