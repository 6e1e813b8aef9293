"""gather=True: two gloo processes on CPU equal one process on the whole batch."""

from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from dyntemp import ntxent
from dyntemp import temperature as T

WORLD = 2
PER_RANK = 4
RULES = {
    "fixed": (T.Fixed(0.2), True),
    "dystress": (T.DySTreSS(0.1, 0.2), True),
    "dystress-in-graph": (T.DySTreSS(0.07, 0.2), False),
    "macl": (T.MACL(0.1, 0.5, 0.0), True),
}


def problem():
    g = torch.Generator().manual_seed(0)
    x1 = torch.randn(WORLD * PER_RANK, 8, generator=g)
    x2 = x1 + 0.5 * torch.randn(WORLD * PER_RANK, 8, generator=g)
    torch.manual_seed(1)
    model = torch.nn.Linear(8, 6)
    return x1, x2, model


def step(model, x1, x2, rule, detach, gather):
    x1, x2 = x1.clone().requires_grad_(), x2.clone().requires_grad_()
    z = model(torch.cat([x1, x2]))
    z1, z2 = z.chunk(2)
    loss = ntxent(z1, z2, rule, detach_temperature=detach, decoupled=False, gather=gather)
    loss.backward()
    return loss.detach(), x1.grad, x2.grad


def worker(rank: int, init_file: str, out: str) -> None:
    torch.set_num_threads(1)  # two processes on two cores: no thread oversubscription
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    results = {}
    for name, (rule, detach) in RULES.items():
        x1, x2, model = problem()
        ddp = torch.nn.parallel.DistributedDataParallel(model)
        mine = slice(rank * PER_RANK, (rank + 1) * PER_RANK)
        loss, g1, g2 = step(ddp, x1[mine], x2[mine], rule, detach, gather=True)
        all_losses = [torch.zeros(()) for _ in range(WORLD)]
        dist.all_gather(all_losses, loss)
        results[name] = {
            "loss": torch.stack(all_losses).mean(),
            "x1": g1,
            "x2": g2,
            "weight": model.weight.grad.clone(),
            "bias": model.bias.grad.clone(),
        }
    torch.save(results, os.path.join(out, f"rank{rank}.pt"))
    dist.destroy_process_group()


@pytest.fixture(scope="module")
def distributed_results(tmp_path_factory) -> list[dict]:
    folder = tmp_path_factory.mktemp("gather")
    mp.spawn(worker, args=(str(folder / "init"), str(folder)), nprocs=WORLD, join=True)
    return [torch.load(folder / f"rank{r}.pt") for r in range(WORLD)]


@pytest.mark.parametrize("name", list(RULES))
def test_two_processes_equal_one(distributed_results, name):
    rule, detach = RULES[name]
    x1, x2, model = problem()
    loss, g1, g2 = step(model, x1, x2, rule, detach, gather=False)
    for rank, results in enumerate(distributed_results):
        got = results[name]
        mine = slice(rank * PER_RANK, (rank + 1) * PER_RANK)
        torch.testing.assert_close(got["loss"], loss, rtol=1e-6, atol=1e-6)
        # DDP averages parameter gradients over ranks: the full-batch gradient
        torch.testing.assert_close(got["weight"], model.weight.grad, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(got["bias"], model.bias.grad, rtol=1e-5, atol=1e-6)
        # each rank's inputs get the sum over ranks' losses: WORLD x the full-batch gradient
        torch.testing.assert_close(got["x1"] / WORLD, g1[mine], rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(got["x2"] / WORLD, g2[mine], rtol=1e-5, atol=1e-7)


# gloo everywhere; nccl where there is a GPU to run it (``bench gpu`` exercises it there too):
# a machine without one does not collect the nccl case rather than report it skipped.
BACKENDS = [("gloo", "cpu")] + ([("nccl", "cuda")] if torch.cuda.is_available() else [])


@pytest.mark.parametrize(("backend", "device"), BACKENDS, ids=[b for b, _ in BACKENDS])
def test_one_process_gathering_equals_no_gathering(backend, device):
    """What ``bench gpu`` times (gather=True in a one-process group) computes the loss and
    gradients of the loss without gathering."""
    from dyntemp.bench.gpu import one_process_group

    rule = T.DySTreSS(0.1, 0.2)
    g = torch.Generator().manual_seed(1)
    z1 = torch.randn(16, 8, generator=g).to(device).requires_grad_()
    z2 = torch.randn(16, 8, generator=g).to(device).requires_grad_()
    alone = ntxent(z1, z2, rule)
    expected = torch.autograd.grad(alone, (z1, z2))
    with one_process_group(backend, device):
        for _ in range(2):
            loss = ntxent(z1, z2, rule, gather=True)
            grads = torch.autograd.grad(loss, (z1, z2))
            torch.testing.assert_close(loss, alone, rtol=1e-6, atol=1e-6)
            for got, want in zip(grads, expected, strict=True):
                torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    assert not dist.is_initialized()
