"""iSogCLR under two gloo processes (gather=True) equals one process on the whole batch: the
same loss, the same averaged gradients, and the same per-image state on every process."""

from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from dyntemp.isogclr import STATE, ISogCLR, isogclr_loss

WORLD = 2
PER_RANK = 4
IMAGES = 20
STEPS = 4


def problem():
    """The steps' inputs (the global batch's two views and its images' indices) and a model."""
    g = torch.Generator().manual_seed(0)
    steps = []
    for _ in range(STEPS):
        x1 = torch.randn(WORLD * PER_RANK, 8, generator=g)
        x2 = x1 + 0.5 * torch.randn(WORLD * PER_RANK, 8, generator=g)
        steps.append((x1, x2, torch.randperm(IMAGES, generator=g)[: WORLD * PER_RANK]))
    torch.manual_seed(1)
    return steps, torch.nn.Linear(8, 6)


def run(model, steps, rule, part=slice(None), gather=False):
    results = []
    for x1, x2, index in steps:
        z1, z2 = model(torch.cat([x1[part], x2[part]])).chunk(2)
        loss = isogclr_loss(z1, z2, index[part], rule, gather=gather)
        loss.backward()
        weight = model.module.weight if hasattr(model, "module") else model.weight
        results.append({"loss": loss.detach(), "weight": weight.grad.clone(), **rule.state_dict()})
        weight.grad = None
        (model.module if hasattr(model, "module") else model).bias.grad = None
    return results


def worker(rank: int, init_file: str, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    steps, model = problem()
    ddp = torch.nn.parallel.DistributedDataParallel(model)
    mine = slice(rank * PER_RANK, (rank + 1) * PER_RANK)
    results = run(ddp, steps, ISogCLR().bind(IMAGES), mine, gather=True)
    for entry in results:  # the mean of the ranks' losses
        losses = [torch.zeros(()) for _ in range(WORLD)]
        dist.all_gather(losses, entry["loss"])
        entry["loss"] = torch.stack(losses).mean()
    torch.save(results, os.path.join(out, f"rank{rank}.pt"))
    dist.destroy_process_group()


@pytest.mark.slow
def test_two_processes_equal_one(tmp_path):
    mp.spawn(worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=WORLD, join=True)
    steps, model = problem()
    alone = run(model, steps, ISogCLR().bind(IMAGES))
    for rank in range(WORLD):
        got = torch.load(tmp_path / f"rank{rank}.pt")
        for step, (theirs, ours) in enumerate(zip(got, alone, strict=True)):
            torch.testing.assert_close(theirs["loss"], ours["loss"], rtol=1e-6, atol=1e-6)
            torch.testing.assert_close(theirs["weight"], ours["weight"], rtol=1e-5, atol=1e-6)
            for name in STATE:  # every process holds the whole batch's new state
                torch.testing.assert_close(
                    theirs[name], ours[name], rtol=1e-6, atol=1e-7, msg=f"{name}, step {step}"
                )
