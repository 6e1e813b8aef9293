"""iSogCLR's individual temperatures: the rule, its state, its loss, and the trainer with it
(the images' indices, the checkpoint, an exact resume). LibAUC's GCLoss_v1 checks the step
itself in test_references.py."""

from __future__ import annotations

import dataclasses

import pytest
import sympy as sp
import torch
from helpers import interrupted_then_resumed, tiny, untimed_metrics

from dyntemp import augment, ntxent, runs, step, train
from dyntemp import temperature as T
from dyntemp.config import TrainConfig
from dyntemp.isogclr import STATE, ISogCLR, isogclr_loss
from dyntemp.loss import reference_ntxent


def batch(n=6, d=5, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    z1 = torch.randn(n, d, generator=g, dtype=dtype)
    z2 = z1 + 0.7 * torch.randn(n, d, generator=g, dtype=dtype)
    return z1.requires_grad_(), z2.requires_grad_()


def test_the_defaults_are_libaucs_and_the_parameters_are_checked():
    rule = T.from_name("isogclr")
    assert rule == ISogCLR() and rule.params() == {
        "tau": 0.1,
        "tau_min": 0.05,
        "tau_max": 0.7,
        "rho": 0.3,
        "eta": 0.01,
        "beta": 0.9,
        "gamma": 0.9,
    }
    assert rule.needs_indices and not rule.per_pair and rule.parameters() == []
    for bad, match in [
        ({"tau": 0.01}, "tau_min must be <= tau"),
        ({"tau": 0.9}, "tau must be <= tau_max"),
        ({"beta": 0.0}, "beta must be"),
        ({"gamma": 1.5}, "gamma must be"),
        ({"eta": -1.0}, "eta must be > 0"),
        ({"rho": -0.1}, "rho must be"),
    ]:
        with pytest.raises(ValueError, match=match):
            ISogCLR(**bad)


def test_as_a_temperature_it_is_the_starting_one_or_a_symbol():
    rule = ISogCLR(tau=0.2)
    s = sp.Symbol("s", real=True)
    assert rule.sympy(s) == sp.Rational(1, 5)
    assert rule.sympy(s, symbolic=True) == sp.Symbol("tau_i", positive=True)
    assert rule.logit_slope(s) == 5
    assert float(rule(torch.zeros(2))[0]) == pytest.approx(0.2)


def test_nt_xent_refuses_the_rule_and_names_its_loss():
    z1, z2 = batch()
    for loss in (ntxent, reference_ntxent):
        with pytest.raises(ValueError, match="isogclr_loss"):
            loss(z1, z2, ISogCLR())


def test_the_state_is_bound_saved_and_loaded():
    rule = ISogCLR(tau=0.2)
    with pytest.raises(ValueError, match="bind"):
        rule.state("tau")
    rule.bind(10)
    assert rule.images == 10 and set(rule.state_dict()) == set(STATE)
    assert torch.equal(rule.state("tau"), torch.full((10,), 0.2))
    z1, z2 = batch(n=4, dtype=torch.float32)
    isogclr_loss(z1, z2, torch.tensor([3, 1, 7, 0]), rule)
    saved = rule.state_dict()
    assert not torch.equal(saved["tau"], torch.full((10,), 0.2))
    other = ISogCLR(tau=0.2).bind(10)
    other.load_state_dict(saved)
    for name in STATE:
        assert torch.equal(other.state(name), saved[name])
    unbound = ISogCLR(tau=0.2)
    unbound.load_state_dict(saved)  # binds from the state
    assert unbound.images == 10
    with pytest.raises(ValueError, match="holds 10 images, this run 11"):
        ISogCLR(tau=0.2).bind(11).load_state_dict(saved)
    with pytest.raises(ValueError, match="needs"):
        other.load_state_dict({"tau": saved["tau"]})


def test_only_the_batch_images_change_and_their_temperatures_stay_in_range():
    rule = ISogCLR(tau=0.1, tau_min=0.05, tau_max=0.7, eta=5.0).bind(12)
    indices = torch.tensor([2, 9, 4, 11, 0])
    for seed in range(4):
        z1, z2 = batch(n=5, seed=seed, dtype=torch.float32)
        loss = isogclr_loss(z1, z2, indices, rule)
        loss.backward()
        assert torch.isfinite(loss) and torch.isfinite(z1.grad).all()
    others = torch.ones(12, dtype=torch.bool)
    others[indices] = False
    assert (rule.state("u")[others] == 0).all() and (rule.state("u")[indices] > 0).all()
    assert (rule.state("tau")[others] == 0.1).all()
    tau = rule.state("tau")[indices]
    assert ((tau >= 0.05) & (tau <= 0.7)).all() and (tau != 0.1).any()


def test_the_first_visit_is_the_decoupled_loss_at_each_images_temperature():
    """At a batch's first visit (gamma = 1) u is the batch's own mean, so w_xk / M is the
    softmax over the negatives at tau_i: the gradient is tau_i times DCL's, the positive's -1."""
    rule = ISogCLR(tau=0.3).bind(5, dtype=torch.float64)
    z1, z2 = batch(n=5)
    h = torch.nn.functional.normalize(torch.cat([z1, z2]), dim=1)
    s = h @ h.T
    n2 = 10
    positives = torch.cat([torch.arange(5, 10), torch.arange(5)])
    rows = torch.arange(n2)
    negatives = torch.ones(n2, n2, dtype=torch.bool)
    negatives[rows, rows] = False
    negatives[rows, positives] = False
    softmax = torch.softmax((s.detach() / 0.3).masked_fill(~negatives, -torch.inf), dim=1)
    expected = ((softmax * s).sum(1) - s[rows, positives]).sum() / 5
    loss = isogclr_loss(z1, z2, torch.arange(5), rule)
    torch.testing.assert_close(loss, expected, rtol=1e-13, atol=1e-15)
    grads = torch.autograd.grad(loss, (z1, z2))
    for a, b in zip(grads, torch.autograd.grad(expected, (z1, z2)), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-11, atol=1e-14)
    dcl = reference_ntxent(z1, z2, 0.3, decoupled=True)  # the mean over the 2N anchors
    for a, b in zip(grads, torch.autograd.grad(dcl, (z1, z2)), strict=True):
        torch.testing.assert_close(a, 0.3 * 2 * b, rtol=1e-10, atol=1e-14)


def test_the_config_refuses_what_does_not_apply(tmp_path):
    out = str(tmp_path / "run")
    with pytest.raises(ValueError, match="--method simclr only"):
        TrainConfig(out=out, temperature="isogclr", method="moco").check()
    with pytest.raises(ValueError, match="--no-detach-temperature does not apply"):
        TrainConfig(out=out, temperature="isogclr", detach_temperature=False).check()
    with pytest.raises(ValueError, match="no decoupled form"):
        TrainConfig(out=out, temperature="isogclr", decoupled=True).check()
    config = TrainConfig(out=out, temperature="isogclr", tau=0.2, rho=0.5, gamma=0.8)
    config.check()
    assert config.temperature_rule() == ISogCLR(tau=0.2, rho=0.5, gamma=0.8)


def test_the_views_come_with_their_images_indices():
    images = torch.arange(10, dtype=torch.uint8).repeat_interleave(3 * 8 * 8).reshape(10, 3, 8, 8)
    views = augment.SimCLRAugment(size=8)
    plain = list(augment.ViewBatches(images, 4, views, seed=1, epoch=2))
    indexed = list(augment.ViewBatches(images, 4, views, seed=1, epoch=2, with_indices=True))
    assert len(plain) == len(indexed) == 2
    seen = []
    for (a1, a2), (b1, b2, index) in zip(plain, indexed, strict=True):
        assert torch.equal(a1, b1) and torch.equal(a2, b2)
        seen += index.tolist()
    assert len(set(seen)) == 8 and set(seen) <= set(range(10))
    # each rank's share of a global batch, with its own images' indices
    shares = [
        list(
            augment.ViewBatches(
                images, 4, views, seed=1, epoch=2, rank=r, world_size=2, with_indices=True
            )
        )  # fmt: skip
        for r in range(2)
    ]
    for batch, (_, _, index) in enumerate(indexed):
        assert torch.equal(torch.cat([shares[0][batch][2], shares[1][batch][2]]), index)


@pytest.mark.slow
def test_a_run_learns_the_images_temperatures_and_resumes_exactly(fake_root, tmp_path, monkeypatch):
    config = tiny(fake_root, tmp_path / "whole", temperature="isogclr", momentum=0.9)
    results = train.train(config)
    assert results["temperature"]["name"] == "isogclr"
    lines = untimed_metrics(tmp_path / "whole")
    assert all("tau_mean" in line and "tau_std" in line for line in lines)
    state = torch.load(tmp_path / "whole" / "checkpoint.pt", weights_only=True)
    temperatures = state["temperature"]
    assert set(temperatures) == set(STATE) and temperatures["tau"].shape == (200,)
    trained = temperatures["u"] > 0  # the images of the 2 x 5 batches of 40 (drop-last)
    assert trained.all() and (temperatures["tau"] != 0.1).all()
    assert lines[-1]["tau_mean"] == pytest.approx(temperatures["tau"].double().mean().item())

    # stopped after epoch 1 (its checkpoint written), then rerun: the same run, bit for bit,
    # the images' state included
    resumed = dataclasses.replace(config, out=str(tmp_path / "resumed"))
    interrupted_then_resumed(resumed, monkeypatch)
    other = torch.load(tmp_path / "resumed" / "checkpoint.pt", weights_only=True)
    for name in STATE:
        assert torch.equal(other["temperature"][name], temperatures[name]), name
    for key in state["model"]:
        assert torch.equal(other["model"][key], state["model"][key]), key
    assert untimed_metrics(tmp_path / "resumed") == lines


def test_a_checkpoint_without_the_images_state_does_not_fit(tmp_path):
    from dyntemp.distributed import Context

    config = TrainConfig(
        out=str(tmp_path / "run"), model="small", temperature="isogclr", amp="off",
        projector_hidden_dim=16, projector_dim=8, batch_size=8,
    )  # fmt: skip
    images = torch.randint(0, 256, (40, 3, 32, 32), dtype=torch.uint8)
    context = Context(0, 1, 0, torch.device("cpu"))
    run = step.start_run(config, context, images)
    assert run.rule.images == 40
    state = run.state("fingerprint")
    assert set(state["temperature"]) == set(STATE)
    state["temperature"] = {}
    with pytest.raises(runs.RunFolderError, match="does not fit this run"):
        step.start_run(config, context, images).restore(state, "fingerprint", tmp_path)


def test_a_step_reads_no_value_on_the_host():
    """On a GPU the loss and its step on the state never wait for the device."""
    from host_reads import host_reads

    rule = ISogCLR().bind(12)
    for seed in range(2):  # a first visit, then one with u stored
        z1, z2 = batch(n=5, seed=seed, dtype=torch.float32)
        with host_reads() as reads:
            isogclr_loss(z1, z2, torch.tensor([2, 9, 4, 11, 0]), rule).backward()
        assert reads == []
