"""Evaluation of learned representations.

Features come from the backbone in eval mode without gradients. On them:

- ``knn_accuracy``: the weighted kNN classifier of InstDisc (Wu et al. 2018; k = 200,
  temperature 0.1: cosine similarity, each neighbour votes ``exp(sim / t)``) or a plain
  majority vote, computed in chunks of test samples so memory stays bounded;
- ``linear_probe``: multinomial logistic regression on frozen, precomputed features, trained
  full-batch with L-BFGS on the features' device (deterministic);
- the geometry of the embedding: ``alignment`` and ``uniformity`` (Wang and Isola 2020),
  ``tolerance`` (Wang and Liu 2021), ``inter_class_uniformity`` and
  ``similarity_histograms`` of positive pairs, same-class and other-class negatives.

The geometric metrics L2-normalise their inputs first: they are defined on the hypersphere.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dyntemp.augment import SimCLRAugment

# ----------------------------------------------------------------------------- features


def _at_least_float32(x: Tensor) -> Tensor:
    """``x`` in float64 if it is float64, else in float32 (half precision is not enough)."""
    return x if x.dtype == torch.float64 else x.float()


@torch.no_grad()
def extract_features(
    backbone: nn.Module,
    images: Tensor,
    transform: Callable[[Tensor], Tensor],
    *,
    batch_size: int = 512,
    device: torch.device | str | None = None,
) -> Tensor:
    """Backbone features (N, D), float32, of uint8 ``images`` (N, 3, H, W).

    Features for evaluation are always computed in float32, without autocast, even inside
    an autocast region: the kNN accuracy during training and a later evaluation of the same
    checkpoint see the same features, on any GPU.

    ``transform`` maps a uint8 batch to the network's float input: ``augment.unaugmented``
    for evaluation, or any other callable (``augment.apply`` with parameters for features of
    views). A ``SimCLRAugment`` itself is refused: called, it would augment. The backbone
    runs in eval mode, and its mode is restored afterwards. ``device`` defaults to the
    backbone's. ``images`` may already be on ``device`` (a dataset kept there for training):
    then each batch is a slice of them, not a copy; images elsewhere are copied batch by
    batch (host to device without waiting).
    """
    if isinstance(transform, SimCLRAugment):
        raise TypeError(
            "extract_features got a SimCLRAugment, which augments: pass augment.unaugmented "
            "for evaluation features"
        )
    if device is None:
        device = next(backbone.parameters()).device
    device = torch.device(device)
    channels_last = device.type == "cuda"
    was_training = backbone.training
    backbone.eval()
    chunks = []
    try:
        for start in range(0, len(images), batch_size):
            batch = _on_device(images[start : start + batch_size], device)
            batch = transform(batch)
            if channels_last:
                batch = batch.contiguous(memory_format=torch.channels_last)
            with torch.autocast(device.type, enabled=False):
                chunks.append(backbone(batch).float())
    finally:
        backbone.train(was_training)
    if not chunks:
        raise ValueError("no images to extract features from")
    return torch.cat(chunks)


def _on_device(batch: Tensor, device: torch.device) -> Tensor:
    """``batch`` on ``device``: itself if it is there, else a copy (non-blocking from the
    host only: a copy to the host must be complete before the host reads it)."""
    if batch.device == device:
        return batch
    return batch.to(device, non_blocking=batch.device.type == "cpu")


@torch.no_grad()
def extract_view_features(
    backbone: nn.Module,
    images: Tensor,
    augment,
    *,
    seed: int = 0,
    batch_size: int = 512,
    device: torch.device | str | None = None,
) -> tuple[Tensor, Tensor]:
    """Features (float32, as ``extract_features``) of two augmented views of every image.

    ``augment`` is a ``SimCLRAugment``; the per-sample parameters of all N images are drawn
    once (first view, then second view) from a CPU generator seeded with ``seed`` and then
    moved to ``device``. So the views depend only on ``seed``: not on ``batch_size``, and
    not on the device (a CUDA generator would draw other numbers): the same checkpoint gets
    the same views on a GPU and on a CPU, up to float rounding.
    """
    if device is None:
        device = next(backbone.parameters()).device
    device = torch.device(device)
    generator = torch.Generator().manual_seed(seed)  # on the CPU: the same draws everywhere
    views = []
    for _ in range(2):
        params = augment.sample(len(images), generator, device)
        position = {"start": 0}

        def apply(batch: Tensor, params=params, position=position) -> Tensor:
            start = position["start"]
            position["start"] = start + len(batch)
            return augment.apply(batch, params[start : start + len(batch)])

        views.append(
            extract_features(backbone, images, apply, batch_size=batch_size, device=device)
        )
    return views[0], views[1]


# ----------------------------------------------------------------------------- classifiers


@torch.no_grad()
def knn_predict(
    train_features: Tensor,
    train_labels: Tensor,
    test_features: Tensor,
    *,
    k: int = 200,
    temperature: float = 0.1,
    weighted: bool = True,
    num_classes: int | None = None,
    chunk_size: int = 1024,
) -> Tensor:
    """Predicted labels of ``test_features`` by kNN on cosine similarity to ``train_features``.

    Weighted (InstDisc): each of the k nearest neighbours adds ``exp(sim / temperature)`` to
    its class's score. Majority: each adds 1. The highest score wins; a tie goes to the
    smaller class index. ``k`` is capped at the number of training samples.
    """
    if k < 1:
        raise ValueError(f"k must be positive, got {k}")
    train = F.normalize(_at_least_float32(train_features), dim=1)
    test = F.normalize(test_features.to(train.device, train.dtype), dim=1)
    labels = train_labels.to(train.device)
    if num_classes is None:
        num_classes = int(labels.max()) + 1
    k = min(k, len(train))
    predictions = []
    for start in range(0, len(test), chunk_size):
        similarity = test[start : start + chunk_size] @ train.T
        top_similarity, top_index = similarity.topk(k, dim=1)
        votes = (
            (top_similarity / temperature).exp() if weighted else torch.ones_like(top_similarity)
        )
        scores = votes.new_zeros(len(votes), num_classes)
        scores.scatter_add_(1, labels[top_index], votes)
        predictions.append(scores.argmax(dim=1))
    return torch.cat(predictions)


def knn_accuracy(
    train_features: Tensor,
    train_labels: Tensor,
    test_features: Tensor,
    test_labels: Tensor,
    *,
    k: int = 200,
    temperature: float = 0.1,
    weighted: bool = True,
    chunk_size: int = 1024,
) -> float:
    """Top-1 accuracy (percent) of the kNN classifier of ``knn_predict``."""
    num_classes = int(max(train_labels.max(), test_labels.max())) + 1
    predicted = knn_predict(
        train_features,
        train_labels,
        test_features,
        k=k,
        temperature=temperature,
        weighted=weighted,
        num_classes=num_classes,
        chunk_size=chunk_size,
    )
    return _percent(predicted, test_labels)


def _percent(predicted: Tensor, labels: Tensor) -> float:
    """Percentage of correct predictions, from exact integer counts."""
    correct = int((predicted.cpu() == labels.cpu()).sum())
    return 100.0 * correct / len(labels)


def linear_probe(
    train_features: Tensor,
    train_labels: Tensor,
    test_features: Tensor,
    test_labels: Tensor,
    *,
    weight_decay: float = 1e-4,
    max_iter: int = 500,
    standardize: bool = True,
) -> dict[str, float]:
    """Train a linear classifier on frozen features; top-1 accuracies (percent).

    Minimises the mean cross-entropy plus ``weight_decay / 2 * ||W||^2`` (bias not decayed),
    full-batch with L-BFGS (strong Wolfe line search) on the features' device, from zero
    weights: the result is deterministic. With ``standardize`` the features are first
    shifted and scaled per dimension by the training set's mean and standard deviation.
    Returns ``train_top1``, ``test_top1`` and the final training ``loss``.
    """
    x_train = _at_least_float32(train_features)
    x_test = test_features.to(x_train.device, x_train.dtype)
    y_train = train_labels.to(x_train.device)
    y_test = test_labels.to(x_train.device)
    if standardize:
        mean = x_train.mean(0)
        std = x_train.std(0).clamp_min(1e-6)
        x_train = (x_train - mean) / std
        x_test = (x_test - mean) / std
    num_classes = int(max(y_train.max(), y_test.max())) + 1
    weight = x_train.new_zeros(x_train.shape[1], num_classes, requires_grad=True)
    bias = x_train.new_zeros(num_classes, requires_grad=True)
    optimizer = torch.optim.LBFGS(
        [weight, bias],
        lr=1.0,
        max_iter=max_iter,
        tolerance_grad=1e-6,
        tolerance_change=1e-9,
        history_size=20,
        line_search_fn="strong_wolfe",
    )

    def penalised_loss() -> Tensor:
        loss = F.cross_entropy(x_train @ weight + bias, y_train)
        return loss + 0.5 * weight_decay * weight.square().sum()

    def objective() -> Tensor:
        optimizer.zero_grad()
        loss = penalised_loss()
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(objective)
    with torch.no_grad():
        loss = penalised_loss()
        train_top1 = _percent((x_train @ weight + bias).argmax(1), y_train)
        test_top1 = _percent((x_test @ weight + bias).argmax(1), y_test)
    return {"train_top1": train_top1, "test_top1": test_top1, "loss": loss.item()}


# ----------------------------------------------------------------------------- geometry


def alignment(z1: Tensor, z2: Tensor, alpha: float = 2.0) -> float:
    """Alignment ``E ||f(x) - f(x+)||^alpha`` over the rows of two views' features."""
    z1, z2 = F.normalize(_at_least_float32(z1), dim=1), F.normalize(_at_least_float32(z2), dim=1)
    return (z1 - z2).norm(dim=1).pow(alpha).mean().item()


def _pairwise_logmeanexp(z: Tensor, t: float, chunk_size: int) -> float:
    """``log`` of the mean of ``exp(-t ||z_i - z_j||^2)`` over all pairs i != j."""
    n = len(z)
    if n < 2:
        raise ValueError("uniformity needs at least two samples")
    pieces = []
    for start in range(0, n, chunk_size):
        block = z[start : start + chunk_size]
        squared_distance = (2.0 - 2.0 * block @ z.T).clamp_min(0.0)
        exponent = -t * squared_distance
        rows = torch.arange(len(block), device=z.device)
        exponent[rows, rows + start] = -math.inf  # the pair (i, i) is not a pair
        pieces.append(torch.logsumexp(exponent.flatten(), dim=0))
    return (torch.logsumexp(torch.stack(pieces), dim=0) - math.log(n * (n - 1))).item()


def uniformity(z: Tensor, t: float = 2.0, *, chunk_size: int = 2048) -> float:
    """Uniformity ``log E exp(-t ||f(x) - f(y)||^2)`` over distinct pairs (x, y).

    Lower is more uniform. Computed in chunks with log-sum-exp, so exact for large N.
    """
    return _pairwise_logmeanexp(F.normalize(_at_least_float32(z), dim=1), t, chunk_size)


def tolerance(z: Tensor, labels: Tensor) -> float:
    """Tolerance: mean of ``f(x) . f(y)`` over distinct pairs x != y of the same class.

    Normalised by the number of such pairs, ``sum_c n_c (n_c - 1)``, so it is 1 when every
    class collapses to one point, whatever the number of classes (Wang and Liu write the
    expectation over all pairs with an indicator; dividing by all pairs instead would scale
    the value by about 1 / C). Exact in O(N D): the sum over a class's pairs is
    ``||sum_i z_i||^2 - sum_i ||z_i||^2``.
    """
    z = F.normalize(_at_least_float32(z), dim=1)
    labels = labels.to(z.device)
    num_classes = int(labels.max()) + 1
    sums = z.new_zeros(num_classes, z.shape[1]).index_add_(0, labels, z)
    counts = torch.bincount(labels, minlength=num_classes).to(z.dtype)
    pair_sum = sums.square().sum() - z.square().sum()
    pairs = (counts * (counts - 1)).sum()
    if pairs == 0:
        raise ValueError("tolerance needs at least one class with two samples")
    return (pair_sum / pairs).item()


def class_centroids(z: Tensor, labels: Tensor) -> Tensor:
    """The mean of the L2-normalised features of each class present, L2-normalised."""
    z = F.normalize(_at_least_float32(z), dim=1)
    labels = labels.to(z.device)
    num_classes = int(labels.max()) + 1
    sums = z.new_zeros(num_classes, z.shape[1]).index_add_(0, labels, z)
    present = torch.bincount(labels, minlength=num_classes) > 0
    return F.normalize(sums[present], dim=1)


def inter_class_uniformity(z: Tensor, labels: Tensor, t: float = 2.0) -> float:
    """Uniformity (``t`` = 2) of the normalised class centroids; lower is more spread out."""
    return uniformity(class_centroids(z, labels), t)


@torch.no_grad()
def similarity_histograms(
    z1: Tensor,
    z2: Tensor,
    labels: Tensor,
    *,
    bins: int = 100,
    chunk_size: int = 2048,
) -> dict[str, Tensor]:
    """Histograms of cosine similarities on ``bins`` equal bins of [-1, 1].

    ``positive``: ``z1_i . z2_i`` (two views of one image, N values); ``same_class`` and
    ``other_class``: ``z1_i . z1_j`` for unordered pairs i < j of distinct images of the same
    or of different classes. Returns the counts (float tensors) and the bin ``edges``.
    """
    z1, z2 = F.normalize(_at_least_float32(z1), dim=1), F.normalize(_at_least_float32(z2), dim=1)
    labels = labels.to(z1.device)
    n = len(z1)

    def histogram(values: Tensor) -> Tensor:
        return torch.histc(values.clamp(-1.0, 1.0), bins=bins, min=-1.0, max=1.0).cpu()

    same = torch.zeros(bins)
    other = torch.zeros(bins)
    columns = torch.arange(n, device=z1.device)
    for start in range(0, n, chunk_size):
        block = z1[start : start + chunk_size]
        rows = torch.arange(start, start + len(block), device=z1.device)
        similarity = block @ z1.T
        upper = columns[None, :] > rows[:, None]
        same_class = labels[rows][:, None] == labels[None, :]
        same += histogram(similarity[upper & same_class])
        other += histogram(similarity[upper & ~same_class])
    return {
        "edges": torch.linspace(-1.0, 1.0, bins + 1),
        "positive": histogram((z1 * z2).sum(dim=1)),
        "same_class": same,
        "other_class": other,
    }
