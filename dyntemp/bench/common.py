"""What the benchmarks share: CUDA's sync check, the training images, torchvision's per-image
pipeline, and writing a results file with its provenance (waiting for the device and timing
steps: ``dyntemp.timing``)."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from dyntemp import runs
from dyntemp.data import CIFAR10_MEAN, CIFAR10_STD, load_dataset

RESULTS_FILE = runs.RESULTS_FILE  # the name of every results file


def host_syncs(fn: Callable[[], object]) -> str:
    """``"none"`` if ``fn()`` makes the host wait for the GPU, else what CUDA's sync debug
    mode reported. Run ``fn`` once before: first calls make one-off copies."""
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        fn()
        return "none"
    except RuntimeError as error:
        return f"yes: {error}"
    finally:
        torch.cuda.set_sync_debug_mode("default")
        torch.cuda.synchronize()


def training_images(root: str | None, count: int) -> tuple[torch.Tensor, str]:
    """The first ``count`` CIFAR-10 training images from ``root``, or random ones where no
    root is given (speed does not depend on content), and where they came from."""
    if root is not None:
        dataset = load_dataset("cifar10", root, "train")
        return dataset.images[:count], f"CIFAR-10 from {root}"
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (count, 3, 32, 32), dtype=torch.uint8, generator=generator)
    return images, "random 32x32 images (speed does not depend on content)"


def per_image_pipeline(
    size: int,
    mean: Sequence[float] = CIFAR10_MEAN,
    std: Sequence[float] = CIFAR10_STD,
) -> Callable:
    """torchvision's SimCLR transform of one PIL image, as the paper's code and lightly
    build it: ``RandomResizedCrop(size, scale=(0.08, 1))``, ``RandomHorizontalFlip()``,
    ``RandomApply([ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8)``, ``RandomGrayscale(0.2)``,
    ``ToTensor()``, ``Normalize(mean, std)``."""
    from torchvision import transforms as T

    return T.Compose(
        [
            T.RandomResizedCrop(size, scale=(0.08, 1.0)),
            T.RandomHorizontalFlip(),
            T.RandomApply([T.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8),
            T.RandomGrayscale(p=0.2),
            T.ToTensor(),
            T.Normalize(list(mean), list(std)),
        ]
    )


def write_results(
    out: str | Path | None, benchmark: str, provenance: dict[str, Any], **sections: Any
) -> Path | None:
    """Write ``out/results.json``: ``{"benchmark": ..., **sections, "provenance": ...}``,
    atomically.

    Nothing is written when ``out`` is None; returns the file's path, and says where it is.
    A folder that holds a training run, or a ``results.json`` that is not an earlier result
    of the same benchmark, is refused (ValueError): a benchmark replaces only its own result.
    """
    if out is None:
        return None
    folder = Path(out)
    path = folder / RESULTS_FILE
    if (folder / runs.CONFIG_FILE).exists() or (folder / runs.CHECKPOINT_FILE).exists():
        raise ValueError(f"{folder} holds a training run; write the benchmark elsewhere")
    if path.exists():
        try:
            earlier = json.loads(path.read_text()).get("benchmark")
        except (OSError, ValueError, AttributeError):
            earlier = None
        if earlier != benchmark:
            raise ValueError(f"{path} is not a result of bench {benchmark}; write it elsewhere")
    folder.mkdir(parents=True, exist_ok=True)
    payload = {"benchmark": benchmark, **sections, "provenance": provenance}
    runs.atomic_write_json(path, payload)
    print(f"wrote {path}")
    return path
