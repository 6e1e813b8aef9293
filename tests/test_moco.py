"""MoCo: the loss against a float64 reference, the queue's order and wrap-around, the
momentum update, the queue filled by two gloo processes, training and exact resumption."""

from __future__ import annotations

import dataclasses
import math
import os
from pathlib import Path

import helpers
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from fake_cifar import write_fake_cifar10
from helpers import interrupted_then_resumed, train_in_processes, untimed_metrics
from host_reads import host_reads

from dyntemp import loss as loss_module
from dyntemp import moco, train
from dyntemp import temperature as T
from dyntemp.config import TrainConfig

RULES = [
    T.Fixed(0.2),
    T.DySTreSS(0.1, 0.2),
    T.ShiftedDySTreSS(),
    T.MACL(0.1, 0.5, 0.0),
    T.MACL(0.1, 0.5, 0.0, reweight=False),
    T.Learned(0.15),
]


def reference(q, k, queue, rule, *, detach=True, decoupled=False):
    """InfoNCE written query by query from the formula, float64, autograd: logits
    [q.k+, q.queue_j] / tau(s) with the label 0, keys and queue without gradient."""
    q = q / q.norm(dim=1, keepdim=True)
    k = (k / k.norm(dim=1, keepdim=True)).detach()
    queue = (queue / queue.norm(dim=1, keepdim=True)).detach()
    positive_mean = (q * k).sum(1).mean().detach()
    losses = []
    for i in range(q.shape[0]):
        s = torch.cat([(q[i] * k[i]).sum()[None], queue @ q[i]])
        tau = rule(s, positive_mean=positive_mean)
        if detach and rule.per_pair:
            tau = tau.detach()
        x = s / tau
        denominator = torch.logsumexp(x[1:] if decoupled else x, 0)
        loss_i = denominator - x[0]
        if rule.reweight:
            loss_i = loss_i / (1 - torch.softmax(x, 0)[0]).detach()
        losses.append(loss_i)
    return torch.stack(losses).mean()


def problem(b=5, d=6, size=9, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(b, d, generator=g, dtype=torch.float64)
    k = q + 0.6 * torch.randn(b, d, generator=g, dtype=torch.float64)
    queue = torch.nn.functional.normalize(torch.randn(size, d, generator=g, dtype=torch.float64))
    return q.to(dtype).requires_grad_(), k.to(dtype), queue.to(dtype)


# MACL's reweighting needs the positive in the denominator: with DCL it is refused (tested).
LOSSES = [
    pytest.param(rule, decoupled, id=f"{rule!r}-{'dcl' if decoupled else 'infonce'}")
    for rule in RULES
    for decoupled in (False, True)
    if not (getattr(rule, "reweight", False) and decoupled)
]


@pytest.mark.parametrize("detach", [True, False], ids=["detached", "in-graph"])
@pytest.mark.parametrize(("rule", "decoupled"), LOSSES)
def test_matches_reference(rule, detach, decoupled):
    q, k, queue = problem()
    loss = moco.moco_loss(q, k, queue, rule, detach_temperature=detach, decoupled=decoupled)
    params = [q, *rule.parameters()]
    grads = torch.autograd.grad(loss, params)
    r = q.detach().double().requires_grad_()
    twin = T.from_name({v: n for n, v in T._RULES.items()}[type(rule)], **rule.params()).to(
        dtype=torch.float64
    )
    expected = reference(r, k.double(), queue.double(), twin, detach=detach, decoupled=decoupled)
    expected_grads = torch.autograd.grad(expected, [r, *twin.parameters()])
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss.double(), expected, rtol=1e-6, atol=1e-6)
    for got, want in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-6)


def moco_loss_as_it_was(q, k, queue, rule, *, detach=True, decoupled=False):
    """MoCo's loss as moco.py computed it before ``pairwise_ntxent``: the private Function
    called directly. The public entry must give the same bits."""
    from dyntemp.loss import _PairwiseNTXent

    positive_mean = None
    if rule.needs_positive_mean:
        with torch.no_grad():
            unit_q = torch.nn.functional.normalize(q, dim=1)
            unit_k = torch.nn.functional.normalize(k, dim=1)
            positive_mean = (unit_q * unit_k).sum(1).mean()
    positive_index = torch.arange(q.shape[0])
    return _PairwiseNTXent.apply(
        q, torch.cat([k, queue]), None, positive_index, rule, None, detach, decoupled,
        positive_mean, q.shape[0], *rule.parameters(),
    )  # fmt: skip


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("detach", [True, False], ids=["detached", "in-graph"])
@pytest.mark.parametrize(("rule", "decoupled"), LOSSES)
def test_the_public_entry_gives_the_private_paths_bits(rule, detach, decoupled, dtype):
    q, k, queue = problem(b=7, d=5, size=11, seed=3, dtype=dtype)
    options = dict(detach_temperature=detach, decoupled=decoupled)
    got = [loss_module.pairwise_ntxent(q, k, queue, rule, **options)]
    got.append(moco.moco_loss(q, k, queue, rule, **options))
    want = moco_loss_as_it_was(q, k, queue, rule, detach=detach, decoupled=decoupled)
    params = [q, *rule.parameters()]
    want_grads = torch.autograd.grad(want, params)
    for loss in got:
        assert torch.equal(loss, want)
        for a, b in zip(torch.autograd.grad(loss, params), want_grads, strict=True):
            assert torch.equal(a, b)


@pytest.mark.parametrize("detach", [True, False], ids=["detached", "in-graph"])
@pytest.mark.parametrize(("rule", "decoupled"), LOSSES)
def test_the_public_entry_matches_plain_autograd_in_float64(rule, detach, decoupled):
    q, k, queue = problem(b=6, d=4, size=10, seed=4, dtype=torch.float64)
    twin = T.from_name({v: n for n, v in T._RULES.items()}[type(rule)], **rule.params()).to(
        dtype=torch.float64
    )
    options = dict(detach_temperature=detach, decoupled=decoupled)
    loss = loss_module.pairwise_ntxent(q, k, queue, twin, **options)
    expected = reference(q, k, queue, twin, detach=detach, decoupled=decoupled)
    torch.testing.assert_close(loss, expected, rtol=1e-12, atol=1e-12)
    params = [q, *twin.parameters()]
    for got, want in zip(
        torch.autograd.grad(loss, params), torch.autograd.grad(expected, params), strict=True
    ):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


def test_the_public_entry_checks_its_shapes_and_takes_a_given_positive_mean():
    q, k, queue = problem()
    with pytest.raises(ValueError, match="one shape"):
        loss_module.pairwise_ntxent(q, k[:3], queue)
    with pytest.raises(ValueError, match=r"the negatives must be \(K, 6\)"):
        loss_module.pairwise_ntxent(q, k, queue[:, :4])
    rule = T.MACL(0.1, 0.5, 0.0)
    mean = loss_module.mean_positive_similarity(q, k)
    default = loss_module.pairwise_ntxent(q, k, queue, rule)
    assert torch.equal(loss_module.pairwise_ntxent(q, k, queue, rule, positive_mean=mean), default)
    other = loss_module.pairwise_ntxent(q, k, queue, rule, positive_mean=mean - 0.3)
    assert not torch.equal(other, default)


def test_gradcheck_in_float64():
    q, k, queue = problem(b=3, d=3, size=4, dtype=torch.float64)
    rule = T.DySTreSS(0.1, 0.2)
    assert torch.autograd.gradcheck(
        lambda a: moco.moco_loss(a, k, queue, rule, detach_temperature=False), (q,)
    )


def test_symmetrised_loss_and_no_gradient_to_keys():
    q1, k1, queue = problem(seed=1)
    q2, k2, _ = problem(seed=2)
    k1.requires_grad_()
    rule = T.DySTreSS()
    loss = moco.symmetric_moco_loss(q1, q2, k1, k2, queue, rule)
    halves = moco.moco_loss(q1, k2, queue, rule), moco.moco_loss(q2, k1, queue, rule)
    torch.testing.assert_close(loss, (halves[0] + halves[1]) / 2)
    loss.backward()
    assert k1.grad is None and q1.grad is not None


def test_the_gpu_path_reads_no_value_on_the_host():
    q, k, queue = problem()
    for rule in RULES:
        with host_reads() as reads:
            moco.moco_loss(q, k, queue, rule).backward()
        assert reads == [], rule


def tiny_model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3))


def test_queue_order_and_wrap_around():
    queue = moco.MoCo(tiny_model(), queue_size=10, dim=3, momentum=0.9)
    initial = queue.queue.clone()
    assert torch.allclose(initial.norm(dim=1), torch.ones(10))
    blocks = [torch.full((2, 3), float(i + 1)) for i in range(8)]  # keys i+1, unit after norm
    unit = [torch.nn.functional.normalize(b, dim=1) for b in blocks]
    queue.enqueue(blocks[0], blocks[1])  # first view's keys first
    assert queue.pointer == 4
    assert torch.equal(queue.queue[:2], unit[0]) and torch.equal(queue.queue[2:4], unit[1])
    assert torch.equal(queue.queue[4:], initial[4:])
    queue.enqueue(blocks[2], blocks[3])
    queue.enqueue(blocks[4], blocks[5])  # 12 keys written: the last two wrap to the front
    assert queue.pointer == 2
    assert torch.equal(queue.queue[:2], unit[5])
    assert torch.equal(queue.queue[2:4], unit[1])  # not yet overwritten: the oldest left
    assert torch.equal(queue.queue[8:10], unit[4])
    with pytest.raises(ValueError, match="do not fit"):
        queue.enqueue(torch.ones(11, 3))


def test_momentum_update_and_state():
    model = tiny_model()
    keys = moco.MoCo(model, queue_size=6, dim=3, momentum=0.75)
    assert all(not p.requires_grad for p in keys.encoder.parameters())
    before = [p.clone() for p in keys.encoder.parameters()]
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    keys.update(model)
    for old, new, q in zip(before, keys.encoder.parameters(), model.parameters(), strict=True):
        torch.testing.assert_close(new, 0.75 * old + 0.25 * q)
    keys.enqueue(torch.randn(2, 3))
    state = keys.state_dict()
    other = moco.MoCo(tiny_model(), queue_size=6, dim=3, momentum=0.75, seed=5)
    other.load_state_dict(state)
    assert other.pointer == 2 and torch.equal(other.queue, keys.queue)
    for a, b in zip(other.encoder.state_dict().values(), state["encoder"].values(), strict=True):
        assert torch.equal(a, b)
    with pytest.raises(ValueError, match="saved queue has shape"):
        moco.MoCo(tiny_model(), queue_size=8, dim=3, momentum=0.75).load_state_dict(state)


# ----------------------------------------------------------------------------- two processes

WORLD, PER_RANK = 2, 3


def global_keys():
    g = torch.Generator().manual_seed(7)
    return torch.randn(3, WORLD * PER_RANK, 4, generator=g)  # 3 steps of k1 and k2 parts


def macl_problem():
    """Both ranks' queries and keys (B = WORLD x PER_RANK), and one queue."""
    q, k, queue = problem(b=WORLD * PER_RANK, d=4, size=5, seed=9)
    return q.detach(), k, queue


def worker(rank: int, init_file: str, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    keys = moco.MoCo(tiny_model(), queue_size=16, dim=4, momentum=0.9, seed=3)
    steps = global_keys()
    mine = slice(rank * PER_RANK, (rank + 1) * PER_RANK)
    pointers = []
    for k in steps:  # this rank's shard of both views
        keys.enqueue(k[mine], 2 * k[mine])
        pointers.append(keys.pointer)
    q, k, queue = macl_problem()  # MACL's A: the mean positive over both ranks' queries
    q = q[mine].requires_grad_()
    loss = moco.moco_loss(q, k[mine], queue, T.MACL(0.1, 0.5, 0.0))
    (grad,) = torch.autograd.grad(loss, q)
    losses = [torch.zeros(()) for _ in range(WORLD)]
    dist.all_gather(losses, loss.detach())
    saved = {"queue": keys.queue, "pointers": pointers, "loss": torch.stack(losses).mean()}
    torch.save({**saved, "grad": grad}, os.path.join(out, f"rank{rank}.pt"))
    dist.destroy_process_group()


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory) -> list[dict]:
    folder = tmp_path_factory.mktemp("moco-gloo")
    mp.spawn(worker, args=(str(folder / "init"), str(folder)), nprocs=WORLD, join=True)
    return [torch.load(folder / f"rank{rank}.pt") for rank in range(WORLD)]


def test_two_processes_fill_the_queue_as_one(two_processes):
    one = moco.MoCo(tiny_model(), queue_size=16, dim=4, momentum=0.9, seed=3)
    pointers = []
    for k in global_keys():
        one.enqueue(k, 2 * k)  # 12 keys a step into 16 places: steps 2 and 3 wrap around
        pointers.append(one.pointer)
    for rank, got in enumerate(two_processes):
        assert got["pointers"] == pointers == [12, 8, 4]
        assert torch.equal(got["queue"], one.queue), rank


def test_two_processes_read_the_mean_positive_of_both(two_processes):
    q, k, queue = macl_problem()
    q.requires_grad_()
    loss = moco.moco_loss(q, k, queue, T.MACL(0.1, 0.5, 0.0))
    (grad,) = torch.autograd.grad(loss, q)
    for rank, got in enumerate(two_processes):
        mine = slice(rank * PER_RANK, (rank + 1) * PER_RANK)
        torch.testing.assert_close(got["loss"], loss, rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(got["grad"] / WORLD, grad[mine], rtol=1e-5, atol=1e-7)
    shards = [slice(rank * PER_RANK, (rank + 1) * PER_RANK) for rank in range(WORLD)]
    alone = [moco.moco_loss(q[s], k[s], queue, T.MACL(0.1, 0.5, 0.0)) for s in shards]
    assert not torch.allclose(torch.stack(alone).mean(), loss)  # each rank's own A differs


# ----------------------------------------------------------------------------- training


def tiny(root: Path, out: Path, **changes) -> TrainConfig:
    """``helpers.tiny`` trained with MoCo."""
    settings = dict(
        method="moco",
        queue_size=200,  # 80 keys a step: the queue wraps around within the first epoch
        momentum=0.9,
    )
    return helpers.tiny(root, out, **{**settings, **changes})


def assert_same_checkpoints(a_folder: Path, b_folder: Path) -> None:
    a = torch.load(a_folder / "checkpoint.pt", weights_only=True)
    b = torch.load(b_folder / "checkpoint.pt", weights_only=True)
    for key in ("model",):
        for name in a[key]:
            assert torch.equal(a[key][name], b[key][name]), name
    for name in a["moco"]["encoder"]:
        assert torch.equal(a["moco"]["encoder"][name], b["moco"]["encoder"][name]), name
    assert torch.equal(a["moco"]["queue"], b["moco"]["queue"])
    assert a["moco"]["pointer"] == b["moco"]["pointer"]
    assert a["temperature"].keys() == b["temperature"].keys()
    for name in a["temperature"]:
        assert torch.equal(a["temperature"][name], b["temperature"][name])
    for sa, sb in zip(
        a["optimizer"]["state"].values(), b["optimizer"]["state"].values(), strict=True
    ):
        assert torch.equal(sa["momentum_buffer"], sb["momentum_buffer"])
    assert untimed_metrics(a_folder) == untimed_metrics(b_folder)


@pytest.mark.parametrize("rule", ["dystress", "learned"])
def test_moco_trains_and_resumes_exactly(fake_root, tmp_path, monkeypatch, rule):
    config = tiny(fake_root, tmp_path / "whole", temperature=rule)
    results = train.train(config)
    assert results["method"] == "moco" and results["knn_top1"] > 30  # chance: 10 %
    state = torch.load(tmp_path / "whole" / "checkpoint.pt", weights_only=True)
    assert state["moco"]["pointer"] == (2 * 5 * 80) % 200  # 2 epochs of 5 steps, 80 keys each
    assert set(state["moco"]["encoder"]) == set(state["model"])
    resumed = dataclasses.replace(config, out=str(tmp_path / "resumed"))
    interrupted_then_resumed(resumed, monkeypatch)
    assert_same_checkpoints(tmp_path / "whole", tmp_path / "resumed")


def test_moco_settings_are_checked(fake_root, tmp_path):
    with pytest.raises(ValueError, match="--queue-size 50 must hold"):
        tiny(fake_root, tmp_path, queue_size=50).check()
    with pytest.raises(ValueError, match="--moco-momentum must be in"):
        tiny(fake_root, tmp_path, moco_momentum=1.0).check()
    with pytest.raises(ValueError, match="unknown --method"):
        tiny(fake_root, tmp_path, method="byol").check()


def test_the_command_line_takes_every_new_option():
    from dyntemp.__main__ import build_parser

    args = build_parser().parse_args(
        "train --out x --method moco --moco-momentum 0.999 --queue-size 8192 "
        "--temperature macl --tau 0.05 --alpha 2 --a0 0.8 --no-reweight --tau-floor 0.005".split()
    )
    assert (args.method, args.moco_momentum, args.queue_size) == ("moco", 0.999, 8192)
    assert args.reweight is False and args.tau_floor == 0.005
    config = TrainConfig(
        **{k: getattr(args, k) for k in ("method", "temperature", "tau", "alpha", "a0")},
        reweight=args.reweight,
        tau_floor=args.tau_floor,
    )
    assert config.temperature_rule() == T.MACL(0.05, 2.0, 0.8, reweight=False, tau_floor=0.005)
    learned = build_parser().parse_args("train --out x --temperature learned --tau 0.07".split())
    assert learned.temperature == "learned" and learned.tau == 0.07


def _torchrun(root: Path, out: Path, processes: int, batch_size: int) -> dict:
    options = "--model small --epochs 1 --knn-k 5 --projector-hidden-dim 64 --projector-dim 32"
    options += " --no-progress --momentum 0.9 --amp off --method moco --queue-size 64"
    options += " --temperature learned --tau 0.2"
    return train_in_processes(root, out, processes, batch_size, options.split())


@pytest.mark.slow
def test_two_processes_train_moco_as_one(tmp_path):
    """A step of 2 x 8 images on two processes equals one of 16 on one: the same queue
    (both ranks' keys, in order), the same learned temperature (its gradient averaged)."""
    root = write_fake_cifar10(tmp_path / "data", train_per_class=2, test_per_class=2)
    single = _torchrun(root, tmp_path / "single", processes=1, batch_size=16)
    double = _torchrun(root, tmp_path / "double", processes=2, batch_size=8)
    assert double["provenance"]["world_size"] == 2
    assert double["final"]["loss"] == pytest.approx(single["final"]["loss"], rel=1e-5)
    a = torch.load(tmp_path / "single" / "checkpoint.pt", weights_only=True)
    b = torch.load(tmp_path / "double" / "checkpoint.pt", weights_only=True)
    assert a["moco"]["pointer"] == b["moco"]["pointer"] == 32
    torch.testing.assert_close(a["moco"]["queue"], b["moco"]["queue"], rtol=1e-4, atol=1e-5)
    initial = math.log(0.2)
    change_a = a["temperature"]["log_tau"].item() - initial
    change_b = b["temperature"]["log_tau"].item() - initial
    assert change_a != 0 and change_b == pytest.approx(change_a, rel=1e-3)
