"""Datasets as uint8 tensors: CIFAR-10/100, STL-10, any ImageFolder tree, long-tailed CIFAR.

``load_dataset(name, root=None, split="train")`` returns an ``ImageDataset`` whose
``images`` (uint8, N x 3 x H x W) can live on the GPU whole; augmentation happens there, in
batches (``dyntemp.augment``). Decoding tens of thousands of image files is slow, so the
decoded tensor is cached next to the data and reused while the files are unchanged.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import tempfile
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)
STL10_MEAN = (0.4467, 0.4398, 0.4066)
STL10_STD = (0.2603, 0.2566, 0.2713)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

NAMES = ("cifar10", "cifar100", "cifar10-lt", "cifar100-lt", "stl10", "imagefolder")
SPLITS = {
    "cifar10": ("train", "test"),
    "cifar100": ("train", "test"),
    "cifar10-lt": ("train", "test"),
    "cifar100-lt": ("train", "test"),
    "stl10": ("train", "test", "unlabeled", "train+unlabeled"),
}
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
CACHE_FOLDER = ".dyntemp-cache"  # made inside the data folder, else in the user's cache
_CACHE_FORMAT = 1

_STATS = {
    "cifar10": (CIFAR10_MEAN, CIFAR10_STD),
    "cifar100": (CIFAR100_MEAN, CIFAR100_STD),
    "stl10": (STL10_MEAN, STL10_STD),
    "imagefolder": (IMAGENET_MEAN, IMAGENET_STD),
}

_CIFAR = {  # torchvision's on-disk layout
    "cifar10": {
        "folder": "cifar-10-batches-py",
        "train": [f"data_batch_{i}" for i in range(1, 6)],
        "test": ["test_batch"],
        "meta": ("batches.meta", "label_names"),
        "labels": "labels",
        "classes": 10,
    },
    "cifar100": {
        "folder": "cifar-100-python",
        "train": ["train"],
        "test": ["test"],
        "meta": ("meta", "fine_label_names"),
        "labels": "fine_labels",
        "classes": 100,
    },
}
_STL10_FOLDER = "stl10_binary"
_STL10_FILES = {
    "train": ("train_X.bin", "train_y.bin"),
    "test": ("test_X.bin", "test_y.bin"),
    "unlabeled": ("unlabeled_X.bin", None),
}


@dataclass
class ImageDataset:
    """Images (uint8, N x 3 x H x W), labels (int64, N; -1 where unlabelled), class names."""

    images: torch.Tensor
    labels: torch.Tensor
    classes: list[str]
    name: str
    _fingerprint: str | None = field(default=None, repr=False)

    def __len__(self) -> int:
        return len(self.labels)

    def __repr__(self) -> str:
        shape = "x".join(str(d) for d in self.images.shape[1:])
        return (
            f"ImageDataset({self.name!r}, {len(self)} images of {shape}, "
            f"{len(self.classes)} classes)"
        )

    @property
    def fingerprint(self) -> str:
        """sha256 (hex) of the image bytes then the label bytes (int64, little-endian)."""
        if self._fingerprint is None:
            self._fingerprint = fingerprint(self.images, self.labels)
        return self._fingerprint

    def select(self, index: torch.Tensor, name: str | None = None) -> ImageDataset:
        """The images at ``index`` (in that order), as a new dataset."""
        return ImageDataset(
            self.images[index], self.labels[index], list(self.classes), name or self.name
        )


def fingerprint(images: torch.Tensor, labels: torch.Tensor) -> str:
    """sha256 hex digest of the images' bytes followed by the labels' (int64) bytes."""
    digest = hashlib.sha256()
    digest.update(images.detach().cpu().contiguous().numpy().data)
    digest.update(labels.detach().cpu().to(torch.int64).contiguous().numpy().astype("<i8").data)
    return digest.hexdigest()


def dataset_stats(name: str) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
    """Per-channel (mean, std) of a dataset's training images in [0, 1].

    The long-tailed variants use their full dataset's statistics; ``imagefolder`` ImageNet's.
    """
    base = name.removesuffix("-lt")
    if base not in _STATS:
        raise ValueError(f"unknown dataset {name!r}; known: {', '.join(NAMES)}")
    return _STATS[base]


def default_root() -> Path:
    """``DYNTEMP_DATA`` if set, else ``./data``."""
    return Path(os.environ.get("DYNTEMP_DATA") or "data").expanduser()


def load_dataset(
    name: str,
    root: str | os.PathLike | None = None,
    split: str = "train",
    download: bool = False,
    *,
    subset: int | None = None,
    imbalance: float | None = None,
    size: int | None = None,
    cache: bool = True,
) -> ImageDataset:
    """Load a dataset as uint8 tensors.

    - ``cifar10``, ``cifar100``: torchvision's pickles (``cifar-10-batches-py/``,
      ``cifar-100-python/``) or an ImageFolder tree ``root/<split>/<class>/*``; splits
      ``train``, ``test``; ``download=True`` fetches them with torchvision.
    - ``cifar10-lt``, ``cifar100-lt``: the long-tailed training split, class c keeping its
      first ``floor(n_max * imbalance ** (c / (C - 1)))`` images (``imbalance`` defaults to
      0.01); the test split stays balanced.
    - ``stl10``: splits ``train``, ``test``, ``unlabeled``, ``train+unlabeled`` (label -1
      for unlabelled images) from ``stl10_binary/``; ``download=True`` through torchvision.
    - ``imagefolder``: any ``root/<split>/<class>/*`` tree; images of another size than
      ``size`` are resized (shorter side) and centre-cropped to ``size x size``.

    ``subset=n`` keeps a class-balanced deterministic selection of n images: the first
    ``n // C`` of each class in the dataset's order, one more for the first ``n % C``
    classes. ``root`` defaults to ``DYNTEMP_DATA``, then ``./data``. Decoded image files are
    cached (``cache=False`` turns that off) and the cache is rebuilt when the files change.
    """
    if name not in NAMES:
        raise ValueError(f"unknown dataset {name!r}; known: {', '.join(NAMES)}")
    root = Path(root).expanduser() if root is not None else default_root()
    if name in SPLITS and split not in SPLITS[name]:
        raise ValueError(f"{name} has no split {split!r}; its splits: {', '.join(SPLITS[name])}")
    if imbalance is not None and not name.endswith("-lt"):
        raise ValueError(f"imbalance applies to cifar10-lt and cifar100-lt, not {name}")
    if imbalance is not None and not 0 < imbalance <= 1:
        raise ValueError(f"imbalance is a ratio in (0, 1], got {imbalance}")
    if size is not None and name != "imagefolder":
        raise ValueError(f"size applies to imagefolder, not {name}")

    if name == "imagefolder":
        dataset = load_image_folder(root, split, size=size, cache=cache, name=name)
    elif name == "stl10":
        dataset = _load_stl10(root, split, download)
    else:
        base = name.removesuffix("-lt")
        dataset = _load_cifar(base, root, split, download, cache)
        if name.endswith("-lt"):
            dataset.name = name
            if split == "train":
                dataset = long_tailed(dataset, 0.01 if imbalance is None else imbalance)
    if subset is not None:
        dataset = balanced_subset(dataset, subset)
    return dataset


def long_tailed(dataset: ImageDataset, imbalance: float) -> ImageDataset:
    """Exponential profile: class c keeps its first ``floor(n_max * r ** (c / (C - 1)))``."""
    if not 0 < imbalance <= 1:
        raise ValueError(f"imbalance is a ratio in (0, 1], got {imbalance}")
    num_classes = len(dataset.classes)
    n_max = int(torch.bincount(dataset.labels, minlength=num_classes).max())
    keep = []
    for c in range(num_classes):
        count = long_tailed_count(n_max, imbalance, c, num_classes)
        keep.append(torch.nonzero(dataset.labels == c).flatten()[:count])
    index = torch.sort(torch.cat(keep)).values
    return dataset.select(index)


def long_tailed_count(n_max: int, imbalance: float, c: int, num_classes: int) -> int:
    """Images kept in class ``c`` of a long-tailed split (the LDAM / BBN convention)."""
    return int(n_max * imbalance ** (c / (num_classes - 1)))


def balanced_subset(dataset: ImageDataset, n: int) -> ImageDataset:
    """The first images of each label group, ``n`` in all, as even as can be; order kept."""
    groups = torch.unique(dataset.labels)  # sorted; -1 (unlabelled) is a group of its own
    if not 0 < n <= len(dataset):
        raise ValueError(f"subset must be in 1..{len(dataset)}, got {n}")
    keep = []
    for g, label in enumerate(groups.tolist()):
        quota = n // len(groups) + (g < n % len(groups))
        members = torch.nonzero(dataset.labels == label).flatten()
        if len(members) < quota:
            raise ValueError(
                f"subset={n} needs {quota} images of class {label}, "
                f"{dataset.name} has {len(members)}"
            )
        keep.append(members[:quota])
    return dataset.select(torch.sort(torch.cat(keep)).values)


# -- CIFAR ------------------------------------------------------------------------------------


def _load_cifar(name: str, root: Path, split: str, download: bool, cache: bool) -> ImageDataset:
    layout = _CIFAR[name]
    folder = root / layout["folder"]
    if not folder.is_dir() and (root / split).is_dir():
        dataset = load_image_folder(root, split, cache=cache, name=name)
        if len(dataset.classes) != layout["classes"]:
            raise ValueError(
                f"{root / split} has {len(dataset.classes)} class folders, "
                f"{name} has {layout['classes']}"
            )
        return dataset
    if not folder.is_dir() and download:
        import torchvision

        dataset_class = (
            torchvision.datasets.CIFAR10 if name == "cifar10" else (torchvision.datasets.CIFAR100)
        )
        dataset_class(str(root), train=split == "train", download=True)
    files = [folder / f for f in layout[split]] + [folder / layout["meta"][0]]
    missing = [f for f in files if not f.is_file()]
    if missing:
        raise FileNotFoundError(
            f"{name} {split} not found under {root}: looked for "
            f"{', '.join(str(f) for f in files)} (torchvision's format) and for "
            f"{root / split}/<class>/* (image folders). Pass download=True to fetch it "
            f"(needs the internet), or set root / DYNTEMP_DATA to a folder that has it."
        )
    images, labels = [], []
    for path in files[:-1]:
        entry = _read_pickle(path)
        try:
            images.append(np.asarray(entry["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
            labels.append(np.asarray(entry[layout["labels"]], dtype=np.int64))
        except (KeyError, ValueError) as error:
            raise ValueError(f"{path} is not a {name} batch: {error!r}") from None
    classes = list(_read_pickle(files[-1])[layout["meta"][1]])
    return ImageDataset(
        torch.from_numpy(np.concatenate(images)),
        torch.from_numpy(np.concatenate(labels)),
        classes,
        name,
    )


def _read_pickle(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            return pickle.load(f, encoding="latin1")
    except (OSError, pickle.UnpicklingError, EOFError, ValueError) as error:
        raise ValueError(f"cannot read {path}: {error}") from None


# -- STL-10 -----------------------------------------------------------------------------------


def _load_stl10(root: Path, split: str, download: bool) -> ImageDataset:
    folder = root / _STL10_FOLDER
    parts = split.split("+")
    needed = [folder / "class_names.txt"] + [
        folder / f for part in parts for f in _STL10_FILES[part] if f is not None
    ]
    if download and not all(f.is_file() for f in needed):
        import torchvision

        torchvision.datasets.STL10(str(root), split=split, download=True)
    missing = [f for f in needed if not f.is_file()]
    if missing:
        raise FileNotFoundError(
            f"stl10 {split} not found under {root}: looked for "
            f"{', '.join(str(f) for f in needed)} (torchvision's stl10_binary format). "
            f"Pass download=True to fetch it (needs the internet, 2.6 GB), or set root / "
            f"DYNTEMP_DATA to a folder that has it."
        )
    images, labels = [], []
    for part in parts:
        data_file, label_file = _STL10_FILES[part]
        x = np.fromfile(folder / data_file, dtype=np.uint8)
        if x.size % (3 * 96 * 96):
            raise ValueError(f"{folder / data_file} is not a whole number of 3x96x96 images")
        # Stored column-major per channel, as torchvision reads it.
        images.append(torch.from_numpy(x.reshape(-1, 3, 96, 96)).transpose(2, 3))
        if label_file is None:
            labels.append(torch.full((len(images[-1]),), -1, dtype=torch.int64))
        else:
            y = torch.from_numpy(np.fromfile(folder / label_file, dtype=np.uint8))
            if len(y) != len(images[-1]):
                raise ValueError(
                    f"{folder / label_file} has {len(y)} labels for {len(images[-1])} images"
                )
            labels.append(y.to(torch.int64) - 1)
    classes = [line for line in (folder / "class_names.txt").read_text().splitlines() if line]
    return ImageDataset(torch.cat(images).contiguous(), torch.cat(labels), classes, "stl10")


# -- image folders, with the decode cache -----------------------------------------------------


def load_image_folder(
    root: Path,
    split: str,
    *,
    size: int | None = None,
    cache: bool = True,
    name: str = "imagefolder",
) -> ImageDataset:
    """Decode ``root/<split>/<class>/*`` (classes sorted by name, files by name)."""
    top = root / split
    if not top.is_dir():
        if not root.is_dir():
            raise FileNotFoundError(f"{name}: no folder {root}; set root or DYNTEMP_DATA")
        found = sorted(p.name for p in root.iterdir() if p.is_dir() and p.name[0] != ".")
        raise ValueError(
            f"{name} has no split {split!r} under {root}; found: {', '.join(found) or 'no folders'}"
        )
    classes, files, labels, listing = _list_image_files(top)
    key = f"format {_CACHE_FORMAT}, size {size}, files {listing}"
    cache_name = f"{split}-{size or 'native'}.pt"
    if cache:
        cached = _read_cache(root, cache_name, key, classes, labels)
        if cached is not None:
            images, label_tensor, digest = cached
            return ImageDataset(images, label_tensor, classes, name, digest)
    images = _decode_all(files, size)
    label_tensor = torch.tensor(labels, dtype=torch.int64)
    dataset = ImageDataset(images, label_tensor, classes, name)
    if cache:
        _write_cache(root, cache_name, key, dataset)
    return dataset


def _list_image_files(top: Path) -> tuple[list[str], list[str], list[int], str]:
    """Class names, image paths and labels under ``top``, and the key of their versions.

    The key is a sha256 over the files' relative names, sizes and modification times: any
    added, removed, renamed or rewritten file changes it.
    """
    classes = sorted(e.name for e in os.scandir(top) if e.is_dir() and e.name[0] != ".")
    if not classes:
        raise ValueError(f"{top} has no class folders (expected {top}/<class>/<image>)")
    files, labels, versions = [], [], []
    for label, name in enumerate(classes):
        entries = sorted(
            (
                e
                for e in os.scandir(top / name)
                if os.path.splitext(e.name)[1].lower() in IMAGE_EXTENSIONS and e.is_file()
            ),
            key=lambda e: e.name,
        )
        if not entries:
            raise ValueError(f"{top / name} has no images ({', '.join(IMAGE_EXTENSIONS)})")
        for entry in entries:
            stat = entry.stat()
            files.append(entry.path)
            versions.append(f"{name}/{entry.name}\t{stat.st_size}\t{stat.st_mtime_ns}\n")
        labels.extend([label] * len(entries))
    key = hashlib.sha256("".join(versions).encode()).hexdigest()
    return classes, files, labels, key


def _cache_folders(root: Path) -> list[Path]:
    """Next to the data first; the user's cache folder where that is not writable."""
    user = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "dyntemp"
    place = hashlib.sha256(str(root.resolve()).encode()).hexdigest()[:16]
    return [root / CACHE_FOLDER, user / place]


def _read_cache(
    root: Path, file_name: str, key: str, classes: list[str], labels: list[int]
) -> tuple[torch.Tensor, torch.Tensor, str] | None:
    """The cached (images, labels, fingerprint) if a cache matches ``key`` and the listing."""
    for folder in _cache_folders(root):
        path = folder / file_name
        if not path.is_file():
            continue
        try:
            entry = torch.load(path, map_location="cpu", weights_only=True)
            images, cached_labels = entry["images"], entry["labels"]
            valid = (
                entry["format"] == _CACHE_FORMAT
                and entry["key"] == key
                and entry["classes"] == classes
                and images.dtype == torch.uint8
                and images.dim() == 4
                and images.shape[:2] == (len(labels), 3)
                and torch.equal(cached_labels, torch.tensor(labels, dtype=torch.int64))
                and len(entry["fingerprint"]) == 64
            )
        except Exception:  # a corrupt cache is rebuilt, never trusted
            valid = False
        if valid:
            return images, cached_labels, entry["fingerprint"]
    return None


def _write_cache(root: Path, file_name: str, key: str, dataset: ImageDataset) -> None:
    entry = {
        "format": _CACHE_FORMAT,
        "key": key,
        "classes": dataset.classes,
        "images": dataset.images,
        "labels": dataset.labels,
        "fingerprint": dataset.fingerprint,
    }
    for folder in _cache_folders(root):
        try:
            folder.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=folder, suffix=".tmp", delete=False) as f:
                temporary = Path(f.name)
            try:
                torch.save(entry, temporary)
                temporary.chmod(0o644)
                os.replace(temporary, folder / file_name)
            finally:
                temporary.unlink(missing_ok=True)
            return
        except OSError:
            continue
    warnings.warn(f"could not write a decode cache for {root}", stacklevel=3)


def _decode_all(files: Sequence[str], size: int | None) -> torch.Tensor:
    """Decode image files to one uint8 tensor (N x 3 x H x W), JPEGs in parallel batches.

    Files are read in one thread (small reads gain nothing from threads); JPEGs are decoded
    by torchvision's libjpeg-turbo, a share per core (PIL gives the same pixels, about five
    times slower); other formats and anything torchvision refuses go through PIL.
    """
    raw = [_read_bytes(path) for path in files]
    jpeg = [i for i, data in enumerate(raw) if data[:3] == b"\xff\xd8\xff"]
    decoded: list[torch.Tensor | None] = [None] * len(files)
    workers = min(16, os.cpu_count() or 1)
    chunks = [jpeg[i::workers] for i in range(workers)]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for chunk, images in zip(
            chunks, pool.map(lambda c: _decode_jpegs(raw, c), chunks), strict=True
        ):
            for i, image in zip(chunk, images, strict=True):
                decoded[i] = image
    for i, image in enumerate(decoded):
        if image is None:
            decoded[i] = _decode_one(files[i], raw[i])
    shapes = {}
    for i, image in enumerate(decoded):
        shapes.setdefault(tuple(image.shape[-2:]), i)
    if size is not None:
        decoded = [_resize_center(image, size) for image in decoded]
    elif len(shapes) > 1:
        (a, i), (b, j) = list(shapes.items())[:2]
        raise ValueError(
            f"images differ in size: {files[i]} is {a[0]}x{a[1]}, {files[j]} is "
            f"{b[0]}x{b[1]}; pass size=N to resize them to N x N"
        )
    return torch.stack(decoded)


def _read_bytes(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as error:
        raise ValueError(f"cannot read image {path}: {error}") from None


def _decode_jpegs(raw: Sequence[bytes], index: Sequence[int]) -> list[torch.Tensor | None]:
    """JPEG decoding with torchvision's libjpeg-turbo (the same pixels as PIL, faster).

    None for a file torchvision cannot decode (or without torchvision's decoders): PIL then
    tries it, and names it if it cannot read it either.
    """
    try:
        from torchvision.io import ImageReadMode, decode_jpeg
    except ImportError:
        return [None] * len(index)
    decoded: list[torch.Tensor | None] = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # deprecated in favour of torchcodec
        for i in index:
            try:
                data = torch.frombuffer(bytearray(raw[i]), dtype=torch.uint8)
                decoded.append(decode_jpeg(data, mode=ImageReadMode.RGB))
            except Exception:  # any failure falls back to PIL
                decoded.append(None)
    return decoded


def _decode_one(path: str, data: bytes) -> torch.Tensor:
    import io

    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as image:
            array = np.asarray(image.convert("RGB"))
    except (UnidentifiedImageError, OSError, ValueError) as error:
        raise ValueError(f"cannot read image {path}: {error}") from None
    return torch.from_numpy(array.copy()).permute(2, 0, 1).contiguous()


def _resize_center(image: torch.Tensor, size: int) -> torch.Tensor:
    """Shorter side to ``size`` (bilinear, antialiased), then the central ``size x size``."""
    if tuple(image.shape[-2:]) == (size, size):
        return image
    from torchvision.transforms.v2 import functional as TF

    return TF.center_crop(TF.resize(image, size, antialias=True), [size, size])
