"""Evaluation: each metric on constructed cases with known answers and independent references."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.linear_model import LogisticRegression
from sklearn.neighbors import KNeighborsClassifier
from torch import nn

from dyntemp import evaluate


def simplex(n: int) -> torch.Tensor:
    """n unit vectors in R^n with pairwise dot product -1 / (n - 1): a regular simplex."""
    centred = torch.eye(n, dtype=torch.float64) - 1.0 / n
    return F.normalize(centred, dim=1)


def clusters(num_classes: int, per_class: int, dim: int, spread: float, noise_seed: int = 0):
    """Gaussian clusters around centres fixed by (num_classes, dim); noise_seed draws the points."""
    centres = torch.randn(num_classes, dim, generator=torch.Generator().manual_seed(dim)) * 3
    labels = torch.arange(num_classes).repeat_interleave(per_class)
    generator = torch.Generator().manual_seed(noise_seed)
    points = centres[labels] + spread * torch.randn(len(labels), dim, generator=generator)
    return points, labels


# ----------------------------------------------------------------------------- features


class Probe(nn.Module):
    """A backbone with BatchNorm, so train and eval mode give different outputs."""

    def __init__(self) -> None:
        super().__init__()
        self.norm = nn.BatchNorm2d(3)
        self.norm.running_mean.fill_(0.3)
        self.feature_dim = 3 * 4 * 4

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x).flatten(1)


def to_float(images: torch.Tensor) -> torch.Tensor:
    return images.float() / 255


def test_extract_features_runs_in_eval_mode_and_restores_the_mode():
    images = torch.randint(0, 256, (10, 3, 4, 4), dtype=torch.uint8)
    backbone = Probe().train()
    features = evaluate.extract_features(backbone, images, to_float, batch_size=3)
    assert backbone.training
    expected = backbone.eval()(to_float(images)).flatten(1)
    torch.testing.assert_close(features, expected)


def test_extract_features_refuses_an_augmentation_instead_of_augmenting():
    from dyntemp.augment import SimCLRAugment

    images = torch.randint(0, 256, (5, 3, 4, 4), dtype=torch.uint8)
    with pytest.raises(TypeError, match="unaugmented"):
        evaluate.extract_features(Probe(), images, SimCLRAugment(size=4))
    features = evaluate.extract_features(Probe(), images, SimCLRAugment(size=4).unaugmented)
    assert features.shape == (5, 48)


def test_extract_view_features_do_not_depend_on_batch_size():
    class NoiseAugment:
        """Per-sample parameters: one additive offset per image."""

        def sample(self, n, generator, device):
            return torch.rand(n, generator=generator, device=device)

        def apply(self, images, params):
            return to_float(images) + params[:, None, None, None]

    images = torch.randint(0, 256, (9, 3, 4, 4), dtype=torch.uint8)
    one = evaluate.extract_view_features(Probe(), images, NoiseAugment(), seed=3, batch_size=9)
    two = evaluate.extract_view_features(Probe(), images, NoiseAugment(), seed=3, batch_size=2)
    for a, b in zip(one, two, strict=True):
        torch.testing.assert_close(a, b)
    assert not torch.allclose(one[0], one[1])


def test_features_are_float32_without_autocast_even_inside_an_autocast_region():
    torch.manual_seed(0)
    backbone = nn.Sequential(nn.Flatten(), nn.Linear(48, 16))
    images = torch.randint(0, 256, (6, 3, 4, 4), dtype=torch.uint8)
    plain = evaluate.extract_features(backbone, images, to_float)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        inside = evaluate.extract_features(backbone, images, to_float)
        rounded = backbone(to_float(images))  # what autocast would have given
    assert rounded.dtype == torch.bfloat16 and not torch.equal(rounded.float(), plain)
    assert inside.dtype == torch.float32 and torch.equal(inside, plain)


def test_images_already_on_the_device_are_sliced_not_copied():
    images = torch.randint(0, 256, (7, 3, 4, 4), dtype=torch.uint8)
    seen = []

    def transform(batch):
        seen.append(batch.data_ptr())
        return to_float(batch)

    evaluate.extract_features(Probe(), images, transform, batch_size=3, device="cpu")
    stride = images[1].data_ptr() - images[0].data_ptr()
    assert seen == [images.data_ptr() + start * stride for start in (0, 3, 6)]


def test_view_parameters_come_from_a_seeded_cpu_generator_whatever_the_device():
    from dyntemp.augment import SimCLRAugment

    calls = []

    class Recording(SimCLRAugment):
        def sample(self, n, generator=None, device=None):
            calls.append((generator.device, torch.device(device)))
            return super().sample(n, generator, device)

    aug = Recording(size=8, normalize=False)
    images = torch.randint(0, 256, (5, 3, 8, 8), dtype=torch.uint8)
    backbone = nn.Flatten()
    view1, view2 = evaluate.extract_view_features(backbone, images, aug, seed=4, device="cpu")
    assert calls == [(torch.device("cpu"), torch.device("cpu"))] * 2
    generator = torch.Generator().manual_seed(4)
    first = aug.apply(images, SimCLRAugment.sample(aug, 5, generator))
    second = aug.apply(images, SimCLRAugment.sample(aug, 5, generator))
    torch.testing.assert_close(view1, first.flatten(1))
    torch.testing.assert_close(view2, second.flatten(1))


# ----------------------------------------------------------------------------- kNN


def test_knn_on_separable_clusters_is_perfect():
    train, train_labels = clusters(4, 30, 8, spread=0.1, noise_seed=0)
    test, test_labels = clusters(4, 10, 8, spread=0.1, noise_seed=1)
    for weighted in (True, False):
        accuracy = evaluate.knn_accuracy(
            train, train_labels, test, test_labels, k=20, weighted=weighted
        )
        assert accuracy == 100.0


def test_weighted_and_majority_votes_differ_as_computed_by_hand():
    # The query (1, 0) has one class-1 neighbour at similarity 1 and two class-0 neighbours
    # at similarity 0.5: by weight exp(1/0.1) > 2 exp(0.5/0.1) class 1 wins; by count, class 0.
    train = torch.tensor([[1.0, 0.0], [0.5, math.sqrt(0.75)], [0.5, -math.sqrt(0.75)]])
    labels = torch.tensor([1, 0, 0])
    query = torch.tensor([[2.0, 0.0]])
    weighted = evaluate.knn_predict(train, labels, query, k=3, temperature=0.1)
    majority = evaluate.knn_predict(train, labels, query, k=3, weighted=False)
    assert weighted.tolist() == [1] and majority.tolist() == [0]
    # With temperature 1: exp(1) = 2.72 < 2 exp(0.5) = 3.30, so class 0 wins.
    assert evaluate.knn_predict(train, labels, query, k=3, temperature=1.0).tolist() == [0]


@pytest.mark.parametrize("weighted", [True, False])
def test_knn_matches_scikit_learn(weighted):
    generator = torch.Generator().manual_seed(1)
    train = torch.randn(200, 6, generator=generator, dtype=torch.float64)
    labels = torch.randint(0, 3, (200,), generator=generator)
    test = torch.randn(50, 6, generator=generator, dtype=torch.float64)
    k, t = 7, 0.1

    def vote(distance):
        return np.exp((1.0 - distance) / t)  # cosine distance = 1 - similarity

    reference = KNeighborsClassifier(
        n_neighbors=k, metric="cosine", algorithm="brute", weights=vote if weighted else "uniform"
    ).fit(train.numpy(), labels.numpy())
    ours = evaluate.knn_predict(
        train, labels, test, k=k, temperature=t, weighted=weighted, chunk_size=16
    )
    assert ours.tolist() == reference.predict(test.numpy()).tolist()


def test_knn_does_not_depend_on_chunk_size():
    train, train_labels = clusters(5, 20, 4, spread=2.0, noise_seed=2)
    test, _ = clusters(5, 8, 4, spread=2.0, noise_seed=3)
    whole = evaluate.knn_predict(train, train_labels, test, k=15, chunk_size=1000)
    chunked = evaluate.knn_predict(train, train_labels, test, k=15, chunk_size=3)
    assert torch.equal(whole, chunked)


# ----------------------------------------------------------------------------- linear probe


def test_linear_probe_matches_scikit_learn_logistic_regression():
    features, labels = clusters(3, 40, 5, spread=3.0, noise_seed=4)
    test, test_labels = clusters(3, 20, 5, spread=3.0, noise_seed=5)
    weight_decay = 1e-2
    ours = evaluate.linear_probe(
        features, labels, test, test_labels, weight_decay=weight_decay, standardize=False
    )
    # scikit-learn minimises 0.5 ||W||^2 + C sum_i loss_i: the same problem for C = 1 / (N wd).
    reference = LogisticRegression(
        C=1.0 / (len(features) * weight_decay), tol=1e-10, max_iter=10_000
    )
    reference.fit(features.numpy(), labels.numpy())
    expected_test = 100.0 * (reference.predict(test.numpy()) == test_labels.numpy()).mean()
    expected_train = 100.0 * (reference.predict(features.numpy()) == labels.numpy()).mean()
    assert ours["test_top1"] == pytest.approx(expected_test)
    assert ours["train_top1"] == pytest.approx(expected_train)
    logits = features.double().numpy() @ reference.coef_.T + reference.intercept_
    log_probabilities = logits - np.logaddexp.reduce(logits, axis=1, keepdims=True)
    cross_entropy = -log_probabilities[np.arange(len(labels)), labels.numpy()].mean()
    minimum = cross_entropy + 0.5 * weight_decay * np.square(reference.coef_).sum()
    assert ours["loss"] == pytest.approx(minimum, rel=1e-5)
    assert 50.0 < ours["test_top1"] < 100.0  # the case is neither trivial nor hopeless


def test_linear_probe_separates_separable_clusters():
    train, train_labels = clusters(10, 20, 16, spread=0.2, noise_seed=6)
    test, test_labels = clusters(10, 5, 16, spread=0.2, noise_seed=7)
    result = evaluate.linear_probe(train, train_labels, test, test_labels)
    assert result["train_top1"] == 100.0 and result["test_top1"] == 100.0


# ----------------------------------------------------------------------------- geometry


def test_alignment_known_values():
    z = torch.randn(6, 4)
    assert evaluate.alignment(z, 3 * z) == pytest.approx(0.0, abs=1e-6)
    e1, e2 = torch.eye(3)[:1], torch.eye(3)[1:2]
    assert evaluate.alignment(e1, e2) == pytest.approx(2.0)  # ||e1 - e2||^2
    assert evaluate.alignment(e1, e2, alpha=1) == pytest.approx(math.sqrt(2))
    assert evaluate.alignment(e1, -e1) == pytest.approx(4.0)


@pytest.mark.parametrize("n", [2, 3, 10])
def test_uniformity_of_a_regular_simplex(n):
    # Every pair of vertices is at squared distance 2 - 2 (-1 / (n - 1)) = 2n / (n - 1).
    expected = -2.0 * 2 * n / (n - 1)
    assert evaluate.uniformity(simplex(n)) == pytest.approx(expected)
    assert evaluate.uniformity(simplex(n), t=0.5) == pytest.approx(expected / 4)


def test_uniformity_matches_pdist_in_chunks():
    z = F.normalize(torch.randn(37, 5, dtype=torch.float64), dim=1)
    expected = torch.pdist(z).pow(2).mul(-2).exp().mean().log().item()
    assert evaluate.uniformity(z, chunk_size=8) == pytest.approx(expected)


def test_tolerance_by_brute_force_over_pairs():
    generator = torch.Generator().manual_seed(7)
    for num_classes in (2, 3, 7):
        z = F.normalize(torch.randn(30, 4, generator=generator, dtype=torch.float64), dim=1)
        labels = torch.randint(0, num_classes, (30,), generator=generator)
        values = [
            float(z[i] @ z[j])
            for i, j in itertools.permutations(range(30), 2)
            if labels[i] == labels[j]
        ]
        assert evaluate.tolerance(z, labels) == pytest.approx(sum(values) / len(values))


@pytest.mark.parametrize("num_classes", [2, 10, 100])
def test_tolerance_of_collapsed_classes_is_one_for_any_number_of_classes(num_classes):
    points = simplex(num_classes)
    labels = torch.arange(num_classes).repeat_interleave(3)
    assert evaluate.tolerance(points[labels], labels) == pytest.approx(1.0)


def test_inter_class_uniformity_uses_normalised_centroids():
    points = simplex(4)
    labels = torch.tensor([0, 0, 1, 2, 2, 2, 3])  # unequal class sizes change nothing
    noisy = points[labels] * torch.tensor([1.0, 2.0, 1.0, 3.0, 1.0, 1.0, 5.0])[:, None]
    expected = evaluate.uniformity(points)
    assert evaluate.inter_class_uniformity(noisy, labels) == pytest.approx(expected)


def test_similarity_histograms_against_numpy():
    generator = torch.Generator().manual_seed(8)
    z1 = torch.randn(23, 3, generator=generator)
    z2 = z1 + 0.3 * torch.randn(23, 3, generator=generator)
    labels = torch.randint(0, 3, (23,), generator=generator)
    result = evaluate.similarity_histograms(z1, z2, labels, bins=10, chunk_size=5)
    n1, n2 = F.normalize(z1, dim=1).numpy(), F.normalize(z2, dim=1).numpy()
    edges = np.linspace(-1, 1, 11)
    positive = np.histogram((n1 * n2).sum(1), bins=edges)[0]
    same, other = [], []
    for i, j in itertools.combinations(range(23), 2):
        (same if labels[i] == labels[j] else other).append(float(n1[i] @ n1[j]))
    np.testing.assert_array_equal(result["positive"].numpy(), positive)
    np.testing.assert_array_equal(result["same_class"].numpy(), np.histogram(same, edges)[0])
    np.testing.assert_array_equal(result["other_class"].numpy(), np.histogram(other, edges)[0])
    np.testing.assert_allclose(result["edges"].numpy(), edges, atol=1e-6)


def test_similarity_histograms_of_identical_views():
    z = simplex(5).float()
    labels = torch.tensor([0, 0, 1, 1, 1])
    result = evaluate.similarity_histograms(z, z, labels, bins=4)
    # Positives have similarity 1 (last bin); all other pairs -1/4 (second bin).
    assert result["positive"].tolist() == [0, 0, 0, 5]
    assert result["same_class"].tolist() == [0, 4, 0, 0]  # 1 + 3 pairs
    assert result["other_class"].tolist() == [0, 6, 0, 0]  # 2 x 3 pairs
