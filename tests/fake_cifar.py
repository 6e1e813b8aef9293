"""A tiny CIFAR-10 in torchvision's pickle layout, for tests of the trainer and command line.

Each class has its own colour and stripe direction plus noise, so even a barely trained
network separates the classes; the images are generated from a seed, never downloaded.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np

CLASSES = [f"class{c}" for c in range(10)]


def _images(per_class: int, seed: int) -> tuple[np.ndarray, list[int]]:
    rng = np.random.default_rng(seed)
    palette = np.random.default_rng(123).uniform(40, 215, size=(10, 3))
    rows, columns = np.mgrid[0:32, 0:32]
    images, labels = [], []
    for c in range(10):
        angle = np.pi * c / 10
        stripes = 40 * np.sin((np.cos(angle) * rows + np.sin(angle) * columns) / 2.0)
        for _ in range(per_class):
            noise = rng.normal(0, 20, size=(3, 32, 32))
            image = palette[c][:, None, None] + stripes[None] + noise
            images.append(np.clip(image, 0, 255).astype(np.uint8))
            labels.append(c)
    order = rng.permutation(len(labels))
    return np.stack(images)[order].reshape(len(labels), -1), [labels[i] for i in order]


def write_fake_cifar10(root: Path, train_per_class: int = 20, test_per_class: int = 10) -> Path:
    """Write ``root/cifar-10-batches-py`` (5 training batches, a test batch, the meta file)."""
    folder = Path(root) / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    data, labels = _images(train_per_class, seed=0)
    for i, part in enumerate(np.array_split(np.arange(len(labels)), 5), start=1):
        batch = {"data": data[part], "labels": [labels[j] for j in part]}
        (folder / f"data_batch_{i}").write_bytes(pickle.dumps(batch))
    data, labels = _images(test_per_class, seed=1)
    (folder / "test_batch").write_bytes(pickle.dumps({"data": data, "labels": labels}))
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": CLASSES}))
    return Path(root)
