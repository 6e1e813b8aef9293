"""The loss against an independent float64 reference, gradcheck, closed forms, DCL, autocast."""

from __future__ import annotations

import pytest
import torch
from host_reads import host_reads

from dyntemp import NTXent, ntxent
from dyntemp import loss as loss_module
from dyntemp import temperature as T

RULES = [
    T.Fixed(0.2),
    T.DySTreSS(0.1, 0.2),
    T.DySTreSS(0.07, 0.2),
    T.DySTreSSNeurIPS(0.1, 0.2),  # the positive pairs under a rule of their own
    T.TemperatureFree(),  # the paper's loss with the temperature in the graph
    T.ShiftedDySTreSS(),
    T.Linear(0.1, 0.2),
    T.Exponential(),
    T.CosineSchedule(0.1, 1.0, period=40),
    T.MACL(0.1, 0.5, 0.0),  # reweighted, as the authors train
    T.MACL(0.1, 0.5, 0.0, reweight=False),
    T.MACL(0.05, 2.0, 0.8),  # the SimCSE setting: tau held at the floor when A < 0.3
    T.DualTemperature(0.1, 10.0),  # the authors' setting
    T.DualTemperature(0.2, 3.0),
    T.Learned(0.2),
]
PER_PAIR = [r for r in RULES if r.per_pair]


# Every rule with NT-Xent and with DCL, except MACL's reweighting with DCL: it is defined for
# NT-Xent only, and refused otherwise (a test checks the refusal).
LOSSES = [
    pytest.param(rule, decoupled, id=f"{rule!r}-{'dcl' if decoupled else 'ntxent'}")
    for rule in RULES
    for decoupled in (False, True)
    if not (getattr(rule, "reweight", False) and decoupled)
]


@pytest.fixture(params=["cpu-path", "gpu-path"])
def path(request, monkeypatch):
    """Both ways through the loss: the CPU's (the values may choose the symmetric
    factorisation) and the one taken on a GPU (row by row, reading no value)."""
    if request.param == "gpu-path":
        monkeypatch.setattr(loss_module, "_may_read_values", lambda device: False)
    return request.param


def reference(z1, z2, rule, *, detach=True, decoupled=False, progress=3.0):
    """NT-Xent written anchor by anchor from the formula, in float64, with autograd."""
    z = torch.cat([z1, z2]).double()
    z = z / z.norm(dim=1, keepdim=True)
    n2 = z.shape[0]
    n = n2 // 2
    positive_mean = sum(z[i] @ z[i + n] for i in range(n)).detach() / n
    losses = []
    for i in range(n2):
        p = (i + n) % n2
        terms = []
        for k in range(n2):
            if k == i or (decoupled and k == p):
                continue
            s = z[i] @ z[k]
            pair_rule = rule.positive_rule if k == p and rule.positive_rule else rule
            tau = pair_rule(s, progress=progress, positive_mean=positive_mean)
            if detach:
                tau = tau.detach()
            terms.append(s / tau)
        s_p = z[i] @ z[p]
        tau_p = (rule.positive_rule or rule)(s_p, progress=progress, positive_mean=positive_mean)
        if detach:
            tau_p = tau_p.detach()
        loss_i = torch.logsumexp(torch.stack(terms), 0) - s_p / tau_p
        if rule.reweight:  # MACL: times the detached 1 / (1 - P_ip), P_ip the softmax's
            p_ip = torch.exp(s_p / tau_p) / torch.stack(terms).exp().sum()
            loss_i = loss_i / (1 - p_ip.detach())
        if rule.reweight and rule.inter_scale is not None:  # dual: times 1 - P'_ip
            r = rule.inter_scale
            p_inter = torch.exp(r * s_p / tau_p) / (r * torch.stack(terms)).exp().sum()
            loss_i = loss_i * (1 - p_inter.detach())
        losses.append(loss_i)
    return torch.stack(losses).mean()


def views(n=6, d=5, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    z1 = torch.randn(n, d, generator=g, dtype=torch.float64)
    z2 = z1 + 0.7 * torch.randn(n, d, generator=g, dtype=torch.float64)  # related views
    return z1.to(dtype).requires_grad_(), z2.to(dtype).requires_grad_()


@pytest.mark.parametrize("detach", [True, False], ids=["detached", "in-graph"])
@pytest.mark.parametrize(("rule", "decoupled"), LOSSES)
def test_matches_reference(rule, detach, decoupled, path):
    z1, z2 = views()
    loss = ntxent(z1, z2, rule, detach_temperature=detach, decoupled=decoupled, progress=3.0)
    g1, g2 = torch.autograd.grad(loss, (z1, z2))
    r1, r2 = (z.detach().double().requires_grad_() for z in (z1, z2))
    expected = reference(r1, r2, rule, detach=detach, decoupled=decoupled)
    e1, e2 = torch.autograd.grad(expected, (r1, r2))
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss.double(), expected, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(g1.double(), e1, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(g2.double(), e2, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("decoupled", [False, True], ids=["ntxent", "dcl"])
@pytest.mark.parametrize("rule", [T.Fixed(0.3), *PER_PAIR], ids=repr)
def test_gradcheck_with_temperature_in_graph(rule, decoupled, path):
    """With tau in the graph the backward is the true gradient of the forward."""
    z1, z2 = views(n=4, d=3, dtype=torch.float64, seed=1)
    assert torch.autograd.gradcheck(
        lambda a, b: ntxent(a, b, rule, detach_temperature=False, decoupled=decoupled), (z1, z2)
    )


def test_gradcheck_fixed_detached(path):
    z1, z2 = views(n=4, d=3, dtype=torch.float64, seed=2)
    assert torch.autograd.gradcheck(lambda a, b: ntxent(a, b, 0.2), (z1, z2))


def similarity_loss(s, rule, detach):
    """L as a function of the similarity matrix, for the closed forms of chapter 2."""
    n2 = s.shape[0]
    n = n2 // 2
    pos = torch.cat([torch.arange(n, n2), torch.arange(n)])
    tau = rule(s)
    if rule.positive_rule is not None:  # the positive pairs' own rule
        rows = torch.arange(n2)
        tau = tau.clone()
        tau[rows, pos] = rule.positive_rule(s[rows, pos])
    if detach:
        tau = tau.detach()
    x = (s / tau).masked_fill(torch.eye(n2, dtype=torch.bool), float("-inf"))
    return (torch.logsumexp(x, 1) - x[torch.arange(n2), pos]).mean(), x, tau, pos


@pytest.mark.parametrize("detach", [True, False], ids=["detached", "in-graph"])
@pytest.mark.parametrize("rule", PER_PAIR, ids=repr)
def test_closed_form_gradients(rule, detach):
    """dL_i/ds_ij = P_ij/tau_ij (negatives), -(1 - P_ip)/tau_ip (positive), times
    1 - s tau'/tau when tau is in the graph."""
    z1, z2 = views(n=5, d=4, dtype=torch.float64, seed=3)
    z = torch.nn.functional.normalize(torch.cat([z1, z2]).detach(), dim=1)
    s = (z @ z.T).requires_grad_()
    loss, x, tau, pos = similarity_loss(s, rule, detach)
    (grad,) = torch.autograd.grad(loss, s)
    n2 = s.shape[0]
    p = torch.softmax(x.detach(), dim=1)
    closed = p / tau.detach()
    rows = torch.arange(n2)
    closed[rows, pos] = -(1 - p[rows, pos]) / tau.detach()[rows, pos]
    if not detach:
        sd, td = s.detach(), tau.detach()
        slope = rule.derivative(sd)
        if rule.positive_rule is not None:
            slope[rows, pos] = rule.positive_rule.derivative(sd[rows, pos])
        closed = closed * (1 - sd * slope / td)
    closed = closed / n2  # the mean over the 2N anchors
    torch.testing.assert_close(grad, closed, rtol=1e-10, atol=1e-12)


def test_detached_and_in_graph_differ_only_for_per_pair_rules():
    z1, z2 = views()
    for rule, differ in [(T.Fixed(0.2), False), (T.DySTreSS(0.1, 0.2), True)]:
        g_det = torch.autograd.grad(ntxent(z1, z2, rule), z1)[0]
        g_in = torch.autograd.grad(ntxent(z1, z2, rule, detach_temperature=False), z1)[0]
        assert (not torch.allclose(g_det, g_in)) == differ


def test_number_means_fixed_and_module_matches_function():
    z1, z2 = views()
    assert torch.equal(ntxent(z1, z2, 0.2), ntxent(z1, z2, T.Fixed(0.2)))
    module = NTXent(T.DySTreSS(), decoupled=True)
    assert torch.equal(module(z1, z2), ntxent(z1, z2, T.DySTreSS(), decoupled=True))
    assert "DySTreSS" in repr(module)


def test_equal_tau_range_is_fixed():
    z1, z2 = views()
    torch.testing.assert_close(ntxent(z1, z2, T.DySTreSS(0.15, 0.15)), ntxent(z1, z2, 0.15))


def test_float64_stays_float64():
    z1, z2 = views(dtype=torch.float64)
    assert ntxent(z1, z2, T.DySTreSS()).dtype == torch.float64


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_autocast_is_stable_with_small_tau(dtype, path):
    g = torch.Generator().manual_seed(4)
    x = torch.randn(64, 32, generator=g)
    layer = torch.nn.Linear(32, 16)
    rule = T.DySTreSS(0.05, 0.1)
    with torch.autocast("cpu", dtype=dtype):
        z1, z2 = layer(x), layer(x + 0.1 * torch.randn(64, 32, generator=g))
        assert z1.dtype == dtype
        z1, z2 = z1 * 100, z2 * 100  # large norms must not overflow
        loss = ntxent(z1, z2, rule)
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    loss.backward()
    assert torch.isfinite(layer.weight.grad).all()
    exact = ntxent(z1.float(), z2.float(), rule)  # the same low-precision inputs, no autocast
    torch.testing.assert_close(loss, exact, rtol=1e-6, atol=1e-6)


def test_positive_pairs_pull_together():
    """A step along -grad lowers the loss and raises the positive similarity."""
    z1, z2 = views()
    rule = T.DySTreSS()
    loss = ntxent(z1, z2, rule)
    g1, g2 = torch.autograd.grad(loss, (z1, z2))
    with torch.no_grad():
        a, b = z1 - 0.05 * g1, z2 - 0.05 * g2
        assert ntxent(a, b, rule) < loss
        cos = torch.nn.functional.cosine_similarity
        assert cos(a, b).mean() > cos(z1, z2).mean()


@pytest.mark.parametrize(
    ("z1", "z2", "match"),
    [
        (torch.randn(4, 3), torch.randn(5, 3), "same shape"),
        (torch.randn(4, 3), torch.randn(4, 2), "same shape"),
        (torch.randn(1, 3), torch.randn(1, 3), "N >= 2"),
        (torch.randn(4), torch.randn(4), "2-D"),
        (torch.randn(2, 4, 3), torch.randn(2, 4, 3), "2-D"),
    ],
)
def test_bad_input(z1, z2, match):
    with pytest.raises(ValueError, match=match):
        ntxent(z1, z2, 0.2)


def test_bad_temperature_and_missing_progress():
    z1, z2 = views()
    with pytest.raises(ValueError, match="temperature must be"):
        ntxent(z1, z2, "hot")
    with pytest.raises(ValueError, match="progress"):
        ntxent(z1, z2, T.CosineSchedule())
    with pytest.raises(ValueError, match="torch.distributed"):
        ntxent(z1, z2, 0.2, gather=True)


@pytest.mark.parametrize("detach", [True, False], ids=["detached", "in-graph"])
def test_tiny_temperature_takes_the_row_by_row_path(detach, path):
    """Row maxima of s/tau far apart (tau near 0.001) switch to the row-shifted form."""
    g = torch.Generator().manual_seed(5)
    z1 = torch.randn(6, 8, generator=g)
    noise = torch.linspace(0.1, 3.0, 6)[:, None]  # positives from close to far
    z2 = (z1 + noise * torch.randn(6, 8, generator=g)).requires_grad_()
    z1.requires_grad_()
    rule = T.DySTreSS(0.001, 0.002)
    with torch.no_grad():
        z = torch.nn.functional.normalize(torch.cat([z1, z2]), dim=1)
        s = (z @ z.T).fill_diagonal_(-1.0)
        top = (s / rule(s)).amax(1)
        assert top.max() - top.min() >= 160  # the case this test is about
    loss = ntxent(z1, z2, rule, detach_temperature=detach)
    assert loss.grad_fn.factored is False
    g1, g2 = torch.autograd.grad(loss, (z1, z2))
    r1, r2 = (z.detach().double().requires_grad_() for z in (z1, z2))
    expected = reference(r1, r2, rule, detach=detach)
    e1, e2 = torch.autograd.grad(expected, (r1, r2))
    torch.testing.assert_close(loss.double(), expected, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(g1.double(), e1, rtol=1e-4, atol=1e-3)
    torch.testing.assert_close(g2.double(), e2, rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("decoupled", [False, True], ids=["ntxent", "dcl"])
def test_nearly_solved_batch_keeps_float32_precision(decoupled, path):
    """P_ip close to 1: the loss and its gradient stay accurate to float32's relative precision."""
    g = torch.Generator().manual_seed(6)
    z1 = torch.randn(16, 32, generator=g, dtype=torch.float64)
    z2 = z1 + 0.02 * torch.randn(16, 32, generator=g, dtype=torch.float64)
    exact = ntxent(z1.requires_grad_(), z2.requires_grad_(), 0.07, decoupled=decoupled)
    e1 = torch.autograd.grad(exact, z1)[0]
    a, b = (z.detach().float().requires_grad_() for z in (z1, z2))
    loss = ntxent(a, b, 0.07, decoupled=decoupled)
    assert loss.grad_fn.factored is (path == "cpu-path")  # both paths are tested here
    g1 = torch.autograd.grad(loss, a)[0]
    if not decoupled:
        assert exact.item() < 1e-3  # the regime this test is about
    torch.testing.assert_close(loss.double(), exact, rtol=1e-5, atol=0)
    torch.testing.assert_close(g1.double(), e1, rtol=1e-3, atol=1e-4 * e1.abs().max().item())


def test_far_positive_takes_the_row_by_row_path(path):
    """A positive far below its row's maximum (exp would underflow) is computed row by row."""
    z1 = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]], requires_grad=True)
    z2 = torch.tensor([[-1.0, 0.05], [0.05, 1.0], [0.8, 0.6]], requires_grad=True)
    rule = T.Fixed(0.01)  # the first image's positive: x_ip = -100, its row max = +60
    loss = ntxent(z1, z2, rule)
    assert loss.grad_fn.factored is False
    g1, g2 = torch.autograd.grad(loss, (z1, z2))
    r1, r2 = (z.detach().double().requires_grad_() for z in (z1, z2))
    expected = reference(r1, r2, rule)
    e1, e2 = torch.autograd.grad(expected, (r1, r2))
    torch.testing.assert_close(loss.double(), expected, rtol=1e-6, atol=1e-4)
    torch.testing.assert_close(g1.double(), e1, rtol=1e-4, atol=1e-3)
    torch.testing.assert_close(g2.double(), e2, rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("detach", [True, False], ids=["detached", "in-graph"])
@pytest.mark.parametrize(("rule", "decoupled"), LOSSES)
def test_reference_ntxent_matches_the_anchor_by_anchor_reference(rule, detach, decoupled):
    from dyntemp.loss import reference_ntxent

    z1, z2 = views(dtype=torch.float64)
    options = {"detach_temperature": detach, "decoupled": decoupled, "progress": 3.0}
    ours = reference_ntxent(z1, z2, rule, **options)
    theirs = reference(z1, z2, rule, detach=detach, decoupled=decoupled)
    torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-12)
    grads = torch.autograd.grad(ours, (z1, z2))
    expected = torch.autograd.grad(theirs, (z1, z2))
    for a, b in zip(grads, expected, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_in_graph_temperature_with_a_0d_derivative():
    """A per-pair rule may return a 0-d derivative (the base class says broadcastable)."""

    class Flat(T.TemperatureRule):
        def tau(self, s, progress=None, positive_mean=None):
            return torch.full_like(s, 0.2)

        def derivative(self, s):
            return s.new_zeros(())

    z1, z2 = views(dtype=torch.float64)
    loss = ntxent(z1, z2, Flat(), detach_temperature=False)
    torch.testing.assert_close(loss, ntxent(z1, z2, 0.2))


@pytest.mark.parametrize("detach", [True, False], ids=["detached", "in-graph"])
@pytest.mark.parametrize(("rule", "decoupled"), LOSSES)
def test_a_step_on_the_gpu_path_reads_no_value_on_the_host(rule, detach, decoupled, monkeypatch):
    """No forward+backward waits for the device: nothing reads a value (item, bool,
    nonzero, boolean masks, tolist, ...) on the path a GPU takes."""
    monkeypatch.setattr(loss_module, "_may_read_values", lambda device: False)
    z1, z2 = views(n=8, d=4)
    with host_reads() as reads:
        loss = ntxent(z1, z2, rule, detach_temperature=detach, decoupled=decoupled, progress=3.0)
        loss.backward()
    assert reads == []
    assert torch.isfinite(z1.grad).all()


def test_the_cpu_path_reads_one_value_to_choose_and_the_counter_sees_it():
    """On the CPU the loss reads the spread of the row maxima (free there): the counter of
    the test above sees that read, so an empty list there means something."""
    z1, z2 = views(n=8, d=4)
    with host_reads() as reads:
        ntxent(z1, z2, T.DySTreSS(0.1, 0.2)).backward()
    assert reads == ["aten._local_scalar_dense.default"]


@pytest.mark.parametrize("detach", [True, False], ids=["detached", "in-graph"])
def test_the_positive_pairs_rule_reaches_moco_s_loss(detach, path):
    """pairwise_ntxent (MoCo's loss) gives the positive pairs the rule's positive_rule too."""
    g = torch.Generator().manual_seed(5)
    q = torch.randn(4, 6, generator=g, dtype=torch.float64, requires_grad=True)
    k = q.detach() + 0.5 * torch.randn(4, 6, generator=g, dtype=torch.float64)
    queue = torch.randn(10, 6, generator=g, dtype=torch.float64)
    rule = T.DySTreSSNeurIPS(0.1, 0.2)
    loss = loss_module.pairwise_ntxent(q, k, queue, rule, detach_temperature=detach)
    unit = torch.nn.functional.normalize
    qn, kn, nn = unit(q, dim=1), unit(k, dim=1), unit(queue, dim=1)
    s_pos, s_neg = (qn * kn).sum(1), qn @ nn.T
    tau_pos, tau_neg = rule.positive_rule(s_pos), rule(s_neg)
    if detach:
        tau_pos, tau_neg = tau_pos.detach(), tau_neg.detach()
    logits = torch.cat([(s_pos / tau_pos)[:, None], s_neg / tau_neg], dim=1)
    expected = (torch.logsumexp(logits, 1) - logits[:, 0]).mean()
    torch.testing.assert_close(loss, expected, rtol=1e-12, atol=1e-12)
    (grad,), (expected_grad,) = torch.autograd.grad(loss, q), torch.autograd.grad(expected, q)
    torch.testing.assert_close(grad, expected_grad, rtol=1e-10, atol=1e-12)


def test_temperature_free_in_the_graph_is_the_papers_loss(path):
    """With the temperature in the graph the rule is the paper's InfoNCE of the logits
    2 atanh(s), the loss and its gradient (detached it would be another method)."""
    z1, z2 = views(dtype=torch.float64)
    loss = ntxent(z1, z2, T.TemperatureFree(), detach_temperature=False)
    z = torch.nn.functional.normalize(torch.cat([z1, z2]), dim=1)
    n2 = z.shape[0]
    self_pairs = torch.eye(n2, dtype=torch.bool)
    s = (z @ z.T).masked_fill(self_pairs, 0.0)  # atanh(1) is infinite: mask before, and after
    logits = (2 * torch.atanh(s)).masked_fill(self_pairs, -torch.inf)
    positives = torch.cat([torch.arange(n2 // 2, n2), torch.arange(n2 // 2)])
    expected = torch.nn.functional.cross_entropy(logits, positives)
    torch.testing.assert_close(loss, expected, rtol=1e-13, atol=0)
    grads = torch.autograd.grad(loss, (z1, z2))
    for a, b in zip(grads, torch.autograd.grad(expected, (z1, z2)), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-11, atol=1e-13)
