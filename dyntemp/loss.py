"""NT-Xent with a temperature for every pair, with an exact analytic backward.

For 2N views z_1..z_2N (L2-normalised), s_ik = z_i . z_k and p(i) the other view of i::

    L_i = -log( exp(s_ip / tau_ip) / sum_{k != i} exp(s_ik / tau_ik) ),   L = mean_i L_i

The temperature tau_ik = rule(s_ik) is evaluated on the true similarities (the self-pair
is masked afterwards). With ``decoupled=True`` the positive leaves the denominator (DCL).
``pairwise_ntxent`` is the same loss for queries against their own keys and a set of
shared negatives (MoCo's queue), with the same backward.

Speed: one similarity matrix, worked on in place; no Python loop over the batch, no
boolean-mask gathers. The backward is written out: with P the softmax over k != i,
dL/dx_ik = (P_ik - [k = p(i)]) / (2N) for x = s / tau, then

* tau detached (the paper's code):  dL/ds = dL/dx / tau
* tau in the graph:                 dL/ds = dL/dx * (tau - s tau'(s)) / tau^2

and back to the embeddings in matrix products. Everything runs in float32 (float64
stays float64), outside autocast, so fp16 training cannot overflow exp(s / tau).

On a GPU a forward and backward read no tensor value on the host, so the host never waits
for the device: the path (row by row) is chosen without looking at the data. Only on the
CPU, where a read costs nothing, the values pick the faster symmetric factorisation.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from dyntemp.distributed import gather_with_gradient
from dyntemp.temperature import Fixed, TemperatureRule

__all__ = ["NTXent", "mean_positive_similarity", "ntxent", "pairwise_ntxent", "reference_ntxent"]


def _as_rule(temperature: TemperatureRule | float) -> TemperatureRule:
    if isinstance(temperature, TemperatureRule):
        if temperature.needs_indices:
            raise ValueError(
                f"{temperature!r} gives every image its own temperature, in a loss of its own: "
                "dyntemp.isogclr.isogclr_loss(z1, z2, indices, rule), not NT-Xent"
            )
        return temperature
    if isinstance(temperature, int | float) and not isinstance(temperature, bool):
        return Fixed(float(temperature))
    raise ValueError(
        f"temperature must be a rule from dyntemp.temperature or a number, got {temperature!r}"
    )


def _normalise(z: Tensor) -> tuple[Tensor, Tensor]:
    norm = z.norm(dim=1, keepdim=True).clamp_min_(1e-12)
    return z / norm, norm


def _normalise_backward(grad: Tensor, unit: Tensor, norm: Tensor) -> Tensor:
    """Gradient through z / |z|: remove the radial part, divide by the norm."""
    radial = (grad * unit).sum(dim=1, keepdim=True)
    return grad.sub_(unit * radial).div_(norm)


class _PairwiseNTXent(torch.autograd.Function):
    """Mean NT-Xent of the anchor rows against the key columns, exact backward.

    Takes the raw embeddings and L2-normalises them itself. ``keys=None`` means the
    anchors are the keys (one process): both gradient paths meet in one product (G + G^T) z.
    ``self_index=None``: no self-pair to mask (MoCo's queries against keys).
    ``private_keys``: the first this many key columns are each anchor's own: row i keeps
    only its positive among them (MoCo: a query sees its own key and the queue, not the
    other queries' keys).
    ``positive_mean``: A for the rules that read it (None: the mean of k[:half] . k[half:],
    the views' layout). ``parameters``: the rule's learned tensors, whose gradients the
    backward returns (rules with one temperature per batch: dL/dtau = -sum_ik G_ik s_ik / tau,
    G = dL/ds). A rule's ``positive_rule`` gives the positive pairs their temperatures (and
    logit slopes), the rule itself every other pair.

    With ``rule.reweight`` (MACL) anchor i's loss is multiplied by the detached
    w_i = 1 / (1 - P_ip): its row of dL/dx becomes w_i (P_ik - [k = p(i)]) / count, that is
    P_ik / (1 - P_ip) on the negatives (the softmax over the negatives alone) and exactly -1
    on the positive. Both paths stay exact: a row scaling keeps G = u_i W_ik v_k factored.
    With ``rule.inter_scale`` as well (dual temperature) w_i = (1 - P'_ip) / (1 - P_ip), P' the
    softmax of the logits times inter_scale (at the inter-anchor temperature), detached.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx,
        anchors: Tensor,
        keys: Tensor | None,
        self_index: Tensor | None,
        positive_index: Tensor,
        rule: TemperatureRule,
        progress: float | None,
        detach_temperature: bool,
        decoupled: bool,
        positive_mean: Tensor | None,
        private_keys: int,
        *parameters: Tensor,
    ) -> Tensor:
        reweight = rule.reweight
        rule.check_decoupled(decoupled)
        if parameters and rule.per_pair:
            raise ValueError("a learned temperature must be one number per batch (per_pair False)")
        a, a_norm = _normalise(anchors)
        k, k_norm = (a, a_norm) if keys is None else _normalise(keys)
        count = a.shape[0]
        rows = torch.arange(count, device=a.device)
        if rule.needs_positive_mean and positive_mean is None:  # the mean over every positive
            half = k.shape[0] // 2
            positive_mean = (k[:half] * k[half:]).sum(1).mean()
        rule.check_inputs(progress, positive_mean)

        logits = a @ k.T  # s, then s / tau, then the gradient G, all in this one matrix
        tau = rule.tau(logits, progress, positive_mean)  # on the true s, self-pairs included
        positive_rule = rule.positive_rule
        if positive_rule is not None:  # the positive pairs' own rule (a per-pair rule's)
            s_positive = logits[rows, positive_index]
            tau_positive = positive_rule.tau(s_positive, progress, positive_mean)
            tau[rows, positive_index] = tau_positive
        if detach_temperature or not rule.per_pair:
            scale = tau.reciprocal_()  # dL/ds = dL/dx / tau
        else:  # dL/ds = dL/dx * (tau - s tau') / tau^2
            scale = rule.logit_slope(logits, tau, progress=progress, positive_mean=positive_mean)
            if positive_rule is not None:
                scale[rows, positive_index] = positive_rule.logit_slope(
                    s_positive, tau_positive, progress=progress, positive_mean=positive_mean
                )
            tau.reciprocal_()
            logits.mul_(tau)
            tau = None
        if tau is not None:
            logits.mul_(scale)
        del tau
        positive = logits[rows, positive_index]
        if self_index is not None:
            logits[rows, self_index] = float("-inf")
        if private_keys:  # a fill through a mask of known shape: nothing read on the host
            columns = torch.arange(private_keys, device=a.device)
            others = positive_index[:, None] != columns[None, :]
            logits[:, :private_keys].masked_fill_(others, float("-inf"))
        if decoupled:
            logits[rows, positive_index] = float("-inf")
        factor = None  # dual temperature: the weight's numerator 1 - P'_ip, detached
        if reweight and rule.inter_scale is not None:
            factor = _off_positive(logits * rule.inter_scale, rows, positive_index)
        top = logits.amax(dim=1)
        positive_scale = scale[rows, positive_index] if scale.dim() else scale.expand(count)
        ctx.symmetric = keys is None
        ctx.factored = ctx.symmetric and _may_read_values(a.device)
        ctx.learned = len(parameters) > 0
        ctx.rule = rule
        if ctx.factored:
            # One process: x = s / tau is symmetric, and a symmetric shift keeps it so. Row
            # maxima far apart (tau below ~0.02) would underflow it: then shift row by row.
            spread = top.max() - top.min()
            if not decoupled:  # exp(x_ip - max x) must not underflow either
                spread = torch.maximum(spread, 2.0 * (top.max() - positive.min()))
            ctx.factored = bool(spread < 160.0)  # a CPU tensor: nothing to wait for
        if ctx.factored:
            loss, weights, u, v, off_positive = _factored(
                logits, top, positive, positive_index, decoupled, reweight, factor
            )
            # the positives' entries of G + G^T: -scale_ip (m_i + m_p(i)) / count, with
            # m = 1 - P_ip (off_positive), or 1 when reweighted (1 - P'_ip, dual temperature)
            if factor is not None:
                positive_grad = -positive_scale * (factor + factor[positive_index]) / count
            elif reweight:
                positive_grad = positive_scale * (-2.0 / count)
            else:
                positive_grad = (
                    -positive_scale * (off_positive + off_positive[positive_index]) / count
                )
            weights.mul_(scale)
            ctx.save_for_backward(a, a_norm, weights, u, v, positive_grad, positive_index, scale)
        else:
            loss, grad, off_positive = _dense(
                logits, top, positive, positive_index, scale, reweight, factor
            )
            if factor is not None:
                grad[rows, positive_index] = positive_scale * factor * (-1.0 / count)
            elif reweight:
                grad[rows, positive_index] = positive_scale * (-1.0 / count)
            else:
                grad[rows, positive_index] = -positive_scale * off_positive / count
            ctx.save_for_backward(a, a_norm, k, k_norm, grad, scale)
        return loss.sum() / count

    @staticmethod
    def backward(ctx, grad_loss: Tensor):  # type: ignore[override]
        grad_keys = None
        if ctx.factored:
            a, a_norm, weights, u, v, positive_grad, positive_index, scale = ctx.saved_tensors
            # G + G^T = W * (u v^T + v u^T) off the positives: rank-one scalings, no transpose
            full = torch.outer(u, v).addcmul_(v[:, None], u[None, :]).mul_(weights)
            grad = torch.addcmul(full @ a, positive_grad[:, None], a[positive_index])
            weighted = 0.5 * (grad * a).sum() if ctx.learned else None  # sum_ik G_ik s_ik
            grad_anchors = _normalise_backward(grad, a, a_norm)
        else:
            a, a_norm, k, k_norm, grad, scale = ctx.saved_tensors
            if ctx.symmetric:  # (G + G^T) z as two products: no transposed copy of G
                both = torch.addmm(grad @ a, grad.T, a)
                weighted = 0.5 * (both * a).sum() if ctx.learned else None
                grad_anchors = _normalise_backward(both, a, a_norm)
            else:
                towards_keys = grad @ k
                weighted = (towards_keys * a).sum() if ctx.learned else None
                grad_anchors = _normalise_backward(towards_keys, a, a_norm)
                if ctx.needs_input_grad[1]:
                    grad_keys = _normalise_backward(grad.T @ a, k, k_norm).mul_(grad_loss)
        grad_anchors.mul_(grad_loss)
        parameter_grads: tuple[Tensor, ...] = ()
        if ctx.learned:  # dL/dtau = -sum_ik G_ik s_ik / tau, and scale = 1 / tau
            parameter_grads = ctx.rule.parameter_gradients(-weighted * scale * grad_loss)
        unused = (None,) * 8
        return (grad_anchors, grad_keys, *unused, *parameter_grads)


def _may_read_values(device: torch.device) -> bool:
    """Whether the loss may look at a tensor's value to choose its path.

    On the CPU reading a value waits for nothing, and the symmetric factorisation (when
    the values allow it) is 10-25 % faster there. On an accelerator a read would stop the
    host until the device catches up, every step: there the row-by-row path, safe for every
    input, runs without reading anything.
    """
    return device.type == "cpu"


def _dense(
    logits: Tensor,
    top: Tensor,
    positive: Tensor,
    positive_index: Tensor,
    scale: Tensor,
    reweight: bool = False,
    factor: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Row by row: the anchors' losses, G = scale * P / count with the positives zeroed,
    and 1 - P_ip. Reweighted (MACL): losses times 1 / (1 - P_ip), P over the negatives;
    and times ``factor`` (dual temperature's 1 - P'_ip) where given.

    Each row is shifted by its own maximum, so whatever the spread of the rows' maxima
    (tau near 0.001) the largest entry is 1 and nothing overflows; a positive far below its
    row's maximum still gets its loss ``log(sum) + max - x_ip``. The positive is kept out
    of the row sums, so 1 - P_ip and the loss -log P_ip stay accurate when P_ip is close to
    1 (a nearly solved batch).
    """
    count, rows = logits.shape[0], torch.arange(logits.shape[0], device=logits.device)
    exp = logits.sub_(top[:, None]).exp_()  # P up to each row's sum
    pos = exp[rows, positive_index]  # 1 where the positive is the row's maximum
    exp[rows, positive_index] = 0.0
    negatives = exp.sum(dim=1)
    total = negatives + pos
    loss = torch.log1p(negatives + (pos - 1.0)) + (top - positive)
    if reweight:  # w = total / negatives; negatives 0 (P_ip = 1): loss 0, no division by 0
        negatives_safe = negatives.clamp_min(torch.finfo(negatives.dtype).tiny)
        loss = loss.mul_(total).div_(negatives_safe)
        row = negatives_safe.mul(count).reciprocal_()
        if factor is not None:
            loss.mul_(factor)
            row.mul_(factor)
    else:
        row = total.mul(count).reciprocal_()
    if scale.dim():  # a scale per pair
        grad = exp.mul_(row[:, None]).mul_(scale)
    else:  # one scale: one pass over the matrix
        grad = exp.mul_(row.mul_(scale)[:, None])
    return loss, grad, negatives / total


def _factored(
    logits: Tensor,
    top: Tensor,
    positive: Tensor,
    positive_index: Tensor,
    decoupled: bool,
    reweight: bool = False,
    factor: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """A symmetric factorisation of the gradient: P_ik / count = u_i q_ik v_k.

    With h = top / 2, q_ik = exp(x_ik - h_i - h_k) <= 1 is symmetric, and so is
    W = q * scale (positives zeroed, they are handled apart); then off the positives
    G + G^T = W * (u v^T + v u^T), built from rank-one scalings without a transposed pass
    over the matrix. Returns the anchors' losses, q, u, v and 1 - P_ip. Reweighted (MACL)
    the losses are multiplied by 1 / (1 - P_ip) and u_i = 1 / (count * negatives_i), and both
    by ``factor`` (dual temperature's 1 - P'_ip) where given.
    """
    count, rows = logits.shape[0], torch.arange(logits.shape[0], device=logits.device)
    half = top * 0.5
    shift = half.max()
    q = logits.sub_(half[:, None]).sub_(half[None, :]).exp_()
    v = (half - shift).exp_()
    pos = q[rows, positive_index] * v[positive_index]  # exp(x_ip - h_i - max h)
    q[rows, positive_index] = 0.0
    negatives = q @ v  # sum over negatives of exp(x_ik - h_i - max h)
    total = negatives + pos
    if decoupled:
        loss = negatives.log() + half + shift - positive
    else:
        loss = torch.log1p(negatives / pos)  # -log P_ip, exact also when P_ip is near 1
    if reweight:
        negatives_safe = negatives.clamp_min(torch.finfo(negatives.dtype).tiny)
        loss = loss.mul_(total).div_(negatives_safe)
        u = negatives_safe.mul(count).reciprocal_()
        if factor is not None:
            loss.mul_(factor)
            u.mul_(factor)
    else:
        u = total.mul(count).reciprocal_()
    return loss, q, u, v, negatives / total


def _off_positive(logits: Tensor, rows: Tensor, positive_index: Tensor) -> Tensor:
    """1 - P_ip of each row's softmax (masked entries -inf), as the sigmoid of the
    log-sum-exp of the other entries less the positive's: accurate when P_ip is near 1 too.
    Works in place on ``logits``."""
    positive = logits[rows, positive_index]
    logits[rows, positive_index] = float("-inf")
    return torch.sigmoid(torch.logsumexp(logits, dim=1).sub_(positive))


def _check_inputs(z1: Tensor, z2: Tensor) -> None:
    if not (isinstance(z1, Tensor) and isinstance(z2, Tensor)):
        raise ValueError("z1 and z2 must be tensors")
    if z1.dim() != 2 or z2.dim() != 2:
        raise ValueError(
            f"z1 and z2 must be 2-D (N, D), got shapes {tuple(z1.shape)} and {tuple(z2.shape)}"
        )
    if z1.shape != z2.shape:
        raise ValueError(
            f"z1 and z2 must have the same shape, got {tuple(z1.shape)} and {tuple(z2.shape)}"
        )
    if z1.shape[0] < 2:
        raise ValueError(f"need at least 2 images (N >= 2) for a negative, got N={z1.shape[0]}")


def ntxent(
    z1: Tensor,
    z2: Tensor,
    temperature: TemperatureRule | float = 0.2,
    *,
    detach_temperature: bool = True,
    decoupled: bool = False,
    gather: bool = False,
    progress: float | None = None,
) -> Tensor:
    """NT-Xent of two batches of views with a per-pair temperature rule.

    Args:
        z1, z2: (N, D) projector outputs of the two views; row i of each is image i.
        temperature: a rule of ``dyntemp.temperature`` or a number (a fixed tau).
        detach_temperature: stop gradients through tau (the paper's code); False lets
            them flow through tau(s).
        decoupled: DCL, the positive removed from the denominator.
        gather: under ``torch.distributed``, use every rank's views as negatives. Each
            rank returns the mean over its own anchors; averaging the ranks' gradients
            (as DistributedDataParallel does) gives the full-batch gradient.
        progress: training progress in epochs, for rules that read it.

    Returns:
        The mean loss over the 2N anchors (a 0-d float32 tensor, float64 for float64 input).

    Two images whose views agree, orthogonal to each other: each anchor's loss is
    log(1 + 2 exp(-1 / tau)).

    >>> z = torch.eye(2)
    >>> round(ntxent(z, z, 0.2).item(), 4)
    0.0134
    >>> from dyntemp.temperature import DySTreSS
    >>> g = torch.Generator().manual_seed(0)
    >>> z1 = torch.randn(8, 16, generator=g, requires_grad=True)
    >>> ntxent(z1, torch.randn(8, 16, generator=g), DySTreSS(0.1, 0.2)).backward()
    >>> z1.grad.shape
    torch.Size([8, 16])
    """
    _check_inputs(z1, z2)
    rule = _as_rule(temperature)
    dtype = torch.float64 if z1.dtype == torch.float64 else torch.float32
    with torch.autocast(device_type=z1.device.type, enabled=False):
        z1, z2 = z1.to(dtype), z2.to(dtype)
        n = z1.shape[0]
        if gather:
            import torch.distributed as dist

            if not (dist.is_available() and dist.is_initialized()):
                raise ValueError("gather=True needs an initialised torch.distributed process group")
            rank, world = dist.get_rank(), dist.get_world_size()
            keys = torch.cat([gather_with_gradient(z1), gather_with_gradient(z2)])
            total = n * world
            local = torch.arange(rank * n, (rank + 1) * n, device=z1.device)
            self_index = torch.cat([local, local + total])
            positive_index = torch.cat([local + total, local])
        else:
            keys = None
            self_index = torch.arange(2 * n, device=z1.device)
            positive_index = torch.cat([self_index[n:], self_index[:n]])
        return _PairwiseNTXent.apply(
            torch.cat([z1, z2]),
            keys,
            self_index,
            positive_index,
            rule,
            progress,
            detach_temperature,
            decoupled,
            None,
            0,
            *rule.parameters(),
        )


def _float_dtype(tensor: Tensor) -> torch.dtype:
    return torch.float64 if tensor.dtype == torch.float64 else torch.float32


def mean_positive_similarity(queries: Tensor, keys: Tensor) -> Tensor:
    """The mean of q_i . k_i over the rows, of unit vectors, detached (MACL's A).

    >>> q = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    >>> round(mean_positive_similarity(q, torch.tensor([[1.0, 1.0], [0.0, 1.0]])).item(), 4)
    0.8536
    """
    dtype = _float_dtype(queries)
    with torch.no_grad(), torch.autocast(device_type=queries.device.type, enabled=False):
        unit_q = nn.functional.normalize(queries.to(dtype), dim=1)
        unit_k = nn.functional.normalize(keys.to(dtype), dim=1)
        return (unit_q * unit_k).sum(1).mean()


def pairwise_ntxent(
    queries: Tensor,
    keys: Tensor,
    negatives: Tensor,
    temperature: TemperatureRule | float = 0.2,
    *,
    detach_temperature: bool = True,
    decoupled: bool = False,
    progress: float | None = None,
    positive_mean: Tensor | None = None,
) -> Tensor:
    """InfoNCE of each query against its own key and shared negatives (MoCo's loss).

    Row i has the logits [q_i . k_i, q_i . n_1, ..., q_i . n_K] / tau of unit vectors (the
    other queries' keys are not negatives), tau the rule on each true similarity; the
    backward is the exact analytic one of ``ntxent``. Only the queries (and a learned
    rule's parameters) get gradients. ``decoupled`` drops the positive from the
    denominator; ``positive_mean`` is A for the rules that read it (MACL), by default
    ``mean_positive_similarity(queries, keys)``.

    Args:
        queries, keys: (B, D); row i of ``keys`` is query i's positive.
        negatives: (K, D), MoCo's queue.

    Returns:
        The mean over the B queries (float32, float64 for float64 input).

    >>> g = torch.Generator().manual_seed(0)
    >>> q = torch.randn(4, 8, generator=g, requires_grad=True)
    >>> k = q.detach() + 0.1 * torch.randn(4, 8, generator=g)
    >>> loss = pairwise_ntxent(q, k, torch.randn(16, 8, generator=g), 0.2)
    >>> loss.backward()
    >>> loss.dtype, tuple(q.grad.shape)
    (torch.float32, (4, 8))
    """
    if queries.dim() != 2 or keys.shape != queries.shape:
        raise ValueError(
            f"queries and keys must be (B, D) of one shape, got {tuple(queries.shape)} and "
            f"{tuple(keys.shape)}"
        )
    if negatives.dim() != 2 or negatives.shape[1] != queries.shape[1]:
        raise ValueError(
            f"the negatives must be (K, {queries.shape[1]}), got {tuple(negatives.shape)}"
        )
    rule = _as_rule(temperature)
    dtype = _float_dtype(queries)
    with torch.autocast(device_type=queries.device.type, enabled=False):
        queries, keys = queries.to(dtype), keys.detach().to(dtype)
        if rule.needs_positive_mean and positive_mean is None:
            positive_mean = mean_positive_similarity(queries, keys)
        all_keys = torch.cat([keys, negatives.detach().to(dtype)])
        positive_index = torch.arange(queries.shape[0], device=queries.device)
        return _PairwiseNTXent.apply(
            queries,
            all_keys,
            None,  # no self-pair: a query is not among the keys
            positive_index,
            rule,
            progress,
            detach_temperature,
            decoupled,
            positive_mean,
            queries.shape[0],  # the batch's keys: a query's own only, the others masked
            *rule.parameters(),
        )


class NTXent(nn.Module):
    """``ntxent`` as a module: ``NTXent(DySTreSS(0.1, 0.2))(z1, z2, progress=epoch)``.

    A rule's learned parameters (``Learned``'s log tau) are the module's parameters.
    """

    def __init__(
        self,
        temperature: TemperatureRule | float = 0.2,
        *,
        detach_temperature: bool = True,
        decoupled: bool = False,
        gather: bool = False,
    ) -> None:
        super().__init__()
        self.temperature = _as_rule(temperature)
        for name, parameter in self.temperature.named_parameters().items():
            self.register_parameter(name, parameter)
        self.detach_temperature = detach_temperature
        self.decoupled = decoupled
        self.gather = gather

    def forward(self, z1: Tensor, z2: Tensor, progress: float | None = None) -> Tensor:
        return ntxent(
            z1,
            z2,
            self.temperature,
            detach_temperature=self.detach_temperature,
            decoupled=self.decoupled,
            gather=self.gather,
            progress=progress,
        )

    def extra_repr(self) -> str:
        return (
            f"temperature={self.temperature!r}, detach_temperature={self.detach_temperature}, "
            f"decoupled={self.decoupled}, gather={self.gather}"
        )


def reference_ntxent(
    z1: Tensor,
    z2: Tensor,
    temperature: TemperatureRule | float = 0.2,
    *,
    detach_temperature: bool = True,
    decoupled: bool = False,
    progress: float | None = None,
) -> Tensor:
    """NT-Xent in plain autograd, as papers' code writes it: the reference ``ntxent`` is
    checked against, and the baseline of the benchmarks.

    The temperature of each pair is the rule on the true similarities; the self-pair is
    masked; with ``decoupled`` the positive leaves the denominator; a learned temperature
    stays in the graph of its parameter; a reweighting rule (MACL) multiplies each anchor's
    loss by the detached 1 / (1 - P_ip), and dual temperature by (1 - P'_ip) / (1 - P_ip).
    """
    _check_inputs(z1, z2)
    rule = _as_rule(temperature)
    n = z1.shape[0]
    z = nn.functional.normalize(torch.cat([z1, z2]), dim=1)
    sims = z @ z.T
    rows = torch.arange(2 * n, device=z.device)
    positive_index = torch.cat([rows[n:], rows[:n]])
    positive_mean = (z[:n] * z[n:]).sum(1).mean().detach() if rule.needs_positive_mean else None
    tau = rule(sims, progress, positive_mean)
    if rule.positive_rule is not None:  # the positive pairs' own rule
        tau = tau.clone()
        positive_tau = rule.positive_rule(sims[rows, positive_index], progress, positive_mean)
        tau[rows, positive_index] = positive_tau
    in_graph = (rule.per_pair and not detach_temperature) or bool(rule.parameters())
    logits = sims / (tau if in_graph else tau.detach())
    positive = logits[rows, positive_index]
    masked = torch.eye(2 * n, dtype=torch.bool, device=z.device)
    if decoupled:
        masked[rows, positive_index] = True
    denominator = logits.masked_fill(masked, float("-inf")).logsumexp(dim=1)
    losses = denominator - positive
    if rule.reweight:
        losses = losses / -torch.expm1(-losses.detach())  # 1 - P_ip = 1 - exp(-L_i)
    if rule.reweight and rule.inter_scale is not None:  # times 1 - P'_ip, P' at tau / scale
        inter = (logits.detach() * rule.inter_scale).masked_fill(masked, float("-inf"))
        losses = losses * -torch.expm1(inter.log_softmax(dim=1)[rows, positive_index])
    return losses.mean()
