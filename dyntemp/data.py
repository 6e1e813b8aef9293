"""Datasets as uint8 tensors: CIFAR-10/100, STL-10, any ImageFolder tree, long-tailed CIFAR.

``load_dataset(name, root=None, split="train")`` returns an ``ImageDataset`` whose
``images`` (uint8, N x 3 x H x W) can live on the GPU whole; augmentation happens there, in
batches (``dyntemp.augment``). Decoding tens of thousands of image files is slow, so the
decoded tensor is cached next to the data and reused while the files and the cache are
unchanged. Pickles are read with an unpickler that cannot run code, and every mistake in
the arguments or the files is a one-line ValueError (or FileNotFoundError) naming the file.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import tempfile
import time
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from dyntemp import checks

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
_CACHE_FORMAT = 2

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
    checks.choice("dataset", name, NAMES)
    return _STATS[name.removesuffix("-lt")]


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
    subset_name: str = "subset",
    imbalance: float | None = None,
    imbalance_name: str = "imbalance",
    image_size: int | None = None,
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
    - ``imagefolder``: any ``root/<split>/<class>/*`` tree.

    ``image_size=n``: images of another size are resized (shorter side to n, bilinear,
    antialiased) and centre-cropped to n x n, for every dataset; image folders whose images
    differ in size need it. ``subset=n`` keeps a class-balanced deterministic selection of n
    images: the first ``n // C`` of each class in the dataset's order, one more for the first
    ``n % C`` classes. ``subset_name`` and ``imbalance_name`` are what the error messages call
    ``subset`` and ``imbalance`` (a command line passes its flags). ``root`` defaults to
    ``DYNTEMP_DATA``, then ``./data``. Decoded image files are cached (``cache=False`` turns
    that off), and the cache is rebuilt when the files or the cache itself change
    (``load_image_folder``).

    Every mistake in the arguments or the files raises ValueError (FileNotFoundError for
    missing files) with a one-line message naming the file or the argument.
    """
    checks.choice("dataset", name, NAMES)
    root = Path(root).expanduser() if root is not None else default_root()
    if name in SPLITS and split not in SPLITS[name]:
        raise ValueError(f"{name} has no split {split!r}; its splits: {', '.join(SPLITS[name])}")
    if imbalance is not None:
        check_imbalance(imbalance, dataset=name, name=imbalance_name)
    if image_size is not None:
        check_image_size(image_size)
    if subset is not None:
        checks.whole(subset_name, subset, low=1)

    if name == "imagefolder":
        dataset = load_image_folder(root, split, size=image_size, cache=cache, name=name)
    elif name == "stl10":
        dataset = _load_stl10(root, split, download)
    else:
        base = name.removesuffix("-lt")
        dataset = _load_cifar(base, root, split, download, cache, image_size)
        if name.endswith("-lt"):
            dataset.name = name
            if split == "train":
                ratio = 0.01 if imbalance is None else imbalance
                dataset = long_tailed(dataset, ratio, name=imbalance_name)
    if image_size is not None and tuple(dataset.images.shape[-2:]) != (image_size, image_size):
        dataset = ImageDataset(
            _resize_center(dataset.images, image_size),
            dataset.labels,
            dataset.classes,
            dataset.name,
        )
    if subset is not None:
        dataset = _balanced_subset(dataset, subset, subset_name, f"{name} {split}")
    return dataset


#: The least and the most ``image_size`` (a side in pixels).
IMAGE_SIZES = (8, 4096)


def check_image_size(size: object, *, name: str = "image_size") -> int:
    """A side to resize images to, a whole number in ``IMAGE_SIZES``; ``name`` is what the
    error calls it.

    >>> check_image_size(3)
    Traceback (most recent call last):
    ValueError: image_size must be at least 8, got 3
    """
    return checks.whole(name, size, low=IMAGE_SIZES[0], high=IMAGE_SIZES[1])


def check_imbalance(
    imbalance: object, dataset: str | None = None, *, name: str = "imbalance"
) -> float:
    """An imbalance ratio in (0, 1], of a long-tailed ``dataset`` when one is named; ``name``
    is what the errors call it.

    >>> check_imbalance(0.1, "cifar10-lt")
    0.1
    >>> check_imbalance(0.1, "cifar10")
    Traceback (most recent call last):
    ValueError: imbalance applies to cifar10-lt and cifar100-lt, not cifar10
    """
    if dataset is not None and not dataset.endswith("-lt"):
        raise ValueError(f"{name} applies to cifar10-lt and cifar100-lt, not {dataset}")
    return checks.number(name, imbalance, above=0, high=1)


def long_tailed(
    dataset: ImageDataset, imbalance: float, *, name: str = "imbalance"
) -> ImageDataset:
    """Exponential profile: class c keeps its first ``floor(n_max * r ** (c / (C - 1)))``;
    ``name`` is what the errors call ``imbalance``."""
    check_imbalance(imbalance, name=name)
    num_classes = len(dataset.classes)
    n_max = int(torch.bincount(dataset.labels, minlength=num_classes).max())
    keep = []
    for c in range(num_classes):
        count = long_tailed_count(n_max, imbalance, c, num_classes)
        if count == 0:
            raise ValueError(
                f"{name} {imbalance} leaves class {dataset.classes[c]!r} of "
                f"{dataset.name} with no images (its largest class has {n_max}; "
                f"at least {1 / n_max:.3g} keeps one)"
            )
        keep.append(torch.nonzero(dataset.labels == c).flatten()[:count])
    index = torch.sort(torch.cat(keep)).values
    return dataset.select(index)


def long_tailed_count(n_max: int, imbalance: float, c: int, num_classes: int) -> int:
    """Images kept in class ``c`` of a long-tailed split (the LDAM / BBN convention)."""
    return int(n_max * imbalance ** (c / (num_classes - 1)))


def balanced_subset(dataset: ImageDataset, n: int, *, subset_name: str = "subset") -> ImageDataset:
    """The first images of each label group, ``n`` in all, as even as can be; order kept.

    ``subset_name`` is what the error messages call ``n`` (a command line's flag, say).
    """
    checks.whole(subset_name, n, low=1)
    return _balanced_subset(dataset, n, subset_name, dataset.name)


def _balanced_subset(dataset: ImageDataset, n: int, subset_name: str, where: str) -> ImageDataset:
    if n > len(dataset):
        raise ValueError(
            f"{subset_name} must be at most {len(dataset)}, the images in {where}, got {n}"
        )
    groups = torch.unique(dataset.labels)  # sorted; -1 (unlabelled) is a group of its own
    keep = []
    for g, label in enumerate(groups.tolist()):
        quota = n // len(groups) + (g < n % len(groups))
        members = torch.nonzero(dataset.labels == label).flatten()
        if len(members) < quota:
            group = dataset.classes[label] if 0 <= label < len(dataset.classes) else "unlabelled"
            raise ValueError(
                f"{subset_name} {n} needs {quota} images of each of {len(groups)} classes, "
                f"and {where} has {len(members)} of class {group!r}"
            )
        keep.append(members[:quota])
    return dataset.select(torch.sort(torch.cat(keep)).values)


#: The seed of the validation split: one split for every run, whatever the run's seed.
VALIDATION_SEED = 20_231_201


def validation_split(
    dataset: ImageDataset, n: int, *, name: str = "validation"
) -> tuple[ImageDataset, ImageDataset]:
    """``(rest, held_out)``: a class-balanced random ``n`` images held out, and the others.

    Each class gives ``n // C`` images (one more for the first ``n % C`` classes), drawn by
    a generator seeded with ``VALIDATION_SEED``, so the split is the same for every run and
    machine; both parts keep the dataset's order. ``name`` is what errors call ``n``.

    >>> images = torch.arange(20, dtype=torch.uint8).view(20, 1, 1, 1).expand(20, 3, 2, 2)
    >>> toy = ImageDataset(images.contiguous(), torch.arange(20) % 2, ["a", "b"], "toy")
    >>> rest, held_out = validation_split(toy, 4)
    >>> len(rest), len(held_out), held_out.labels.tolist()
    (16, 4, [0, 1, 0, 1])
    """
    checks.whole(name, n, low=1)
    if n >= len(dataset):
        raise ValueError(f"{name} must be below {len(dataset)}, the images of {dataset.name}")
    generator = torch.Generator().manual_seed(VALIDATION_SEED)
    classes = torch.unique(dataset.labels)
    chosen = []
    for g, label in enumerate(classes.tolist()):
        quota = n // len(classes) + (g < n % len(classes))
        members = torch.nonzero(dataset.labels == label).flatten()
        if quota >= len(members):
            raise ValueError(
                f"{name} {n} needs {quota} images of each of {len(classes)} classes, and "
                f"{dataset.name} has {len(members)} of class {label}: too few to train on"
            )
        chosen.append(members[torch.randperm(len(members), generator=generator)[:quota]])
    held = torch.zeros(len(dataset), dtype=torch.bool)
    held[torch.cat(chosen)] = True
    index = torch.arange(len(dataset))
    return dataset.select(index[~held]), dataset.select(index[held])


# -- CIFAR ------------------------------------------------------------------------------------


def _load_cifar(
    name: str, root: Path, split: str, download: bool, cache: bool, size: int | None
) -> ImageDataset:
    layout = _CIFAR[name]
    folder = root / layout["folder"]
    if not folder.is_dir() and (root / split).is_dir():
        dataset = load_image_folder(root, split, size=size, cache=cache, name=name)
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
        _download(
            name, root, lambda: dataset_class(str(root), train=split == "train", download=True)
        )
    files = [folder / f for f in layout[split]] + [folder / layout["meta"][0]]
    missing = [f for f in files if not f.is_file()]
    if missing:
        raise FileNotFoundError(
            f"{name} {split} not found under {root}: looked for "
            f"{', '.join(str(f) for f in files)} (torchvision's format) and for "
            f"{root / split}/<class>/* (image folders). Pass download=True (--download) "
            f"to fetch it (needs the internet), or set the root (--data-root) or DYNTEMP_DATA "
            f"to a folder that has it."
        )
    images, labels = [], []
    for path in files[:-1]:
        entry = _read_pickle(path)
        x, y = _cifar_batch(entry, path, name, layout["labels"], layout["classes"])
        images.append(x)
        labels.append(y)
    meta_file, meta_key = files[-1], layout["meta"][1]
    classes = _read_pickle(meta_file).get(meta_key)
    if (
        not isinstance(classes, list | tuple)
        or len(classes) != layout["classes"]
        or not all(isinstance(c, str) for c in classes)
    ):
        raise ValueError(
            f"{meta_file} is not a {name} meta file: its {meta_key!r} is not a list of "
            f"{layout['classes']} class names"
        )
    return ImageDataset(
        torch.from_numpy(np.concatenate(images)),
        torch.from_numpy(np.concatenate(labels)),
        list(classes),
        name,
    )


def _cifar_batch(
    entry: dict, path: Path, name: str, label_key: str, num_classes: int
) -> tuple[np.ndarray, np.ndarray]:
    """A batch's images (N x 3 x 32 x 32) and labels, checked against each other."""
    for key in ("data", label_key):
        if key not in entry:
            raise ValueError(f"{path} is not a {name} batch: it has no {key!r}")
    try:
        data = np.asarray(entry["data"])
        if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
            raise ValueError(f"its data is {data.dtype} {data.shape}, not uint8 N x 3072")
        labels = np.asarray(entry[label_key])
        if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
            raise ValueError(f"its {label_key!r} are not a list of whole numbers")
        if len(labels) != len(data):
            raise ValueError(f"it has {len(data)} images and {len(labels)} labels")
        if len(labels) and not 0 <= labels.min() <= labels.max() < num_classes:
            raise ValueError(
                f"its labels run from {labels.min()} to {labels.max()}, not 0..{num_classes - 1}"
            )
    except (TypeError, ValueError, OverflowError) as error:
        raise ValueError(f"{path} is not a {name} batch: {_one_line(error)}") from None
    return data.reshape(-1, 3, 32, 32), labels.astype(np.int64)


class _CifarUnpickler(pickle.Unpickler):
    """An unpickler that builds only what torchvision's CIFAR files hold.

    That is dicts, lists, str, bytes, numbers and numpy arrays. Anything else a pickle names
    (a function to call, a class to build) is refused before it is looked up, so a planted
    file cannot run code.
    """

    _ALLOWED = {
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        *(
            (f"numpy.{core}.{module}", name)
            for core in ("core", "_core")  # numpy 1 names, numpy 2 names
            for module, name in (
                ("multiarray", "_reconstruct"),
                ("multiarray", "scalar"),
                ("numeric", "_frombuffer"),  # pickle protocol 5
            )
        ),
    }

    def find_class(self, module: str, name: str):
        if (module, name) == ("_codecs", "encode"):  # how protocols 0-2 write bytes
            return _latin1_encode
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(
                f"it asks for {module}.{name}, and a CIFAR batch holds only numpy arrays, "
                "lists, str, bytes and numbers (refused: unpickling it could run code)"
            )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # numpy.core in numpy 2
            return super().find_class(module, name)


def _latin1_encode(text: str, encoding: str = "utf-8") -> bytes:
    if encoding != "latin1":
        raise pickle.UnpicklingError(f"it encodes bytes as {encoding!r}, not latin1")
    return text.encode("latin1")


def _read_pickle(path: Path) -> dict:
    """A CIFAR batch or meta file, as a dict (no code in it can run: ``_CifarUnpickler``)."""
    try:
        with open(path, "rb") as f:
            entry = _CifarUnpickler(f, encoding="latin1").load()
    except MemoryError:
        raise ValueError(f"cannot read {path}: it describes arrays too large for memory") from None
    except EOFError:
        raise ValueError(f"cannot read {path}: it is empty or cut short") from None
    except Exception as error:  # whatever a damaged or hostile file makes the unpickler do
        raise ValueError(f"cannot read {path}: {_one_line(error)}") from None
    if not isinstance(entry, dict):
        raise ValueError(
            f"{path} is not a CIFAR file: it holds a {type(entry).__name__}, not a dict"
        )
    return entry


def _one_line(error: BaseException) -> str:
    """An exception's message on one line (its type where it has no message)."""
    return " ".join(str(error).split()) or type(error).__name__


# -- STL-10 -----------------------------------------------------------------------------------


def _load_stl10(root: Path, split: str, download: bool) -> ImageDataset:
    folder = root / _STL10_FOLDER
    parts = split.split("+")
    needed = [folder / "class_names.txt"] + [
        folder / f for part in parts for f in _STL10_FILES[part] if f is not None
    ]
    if download and not all(f.is_file() for f in needed):
        import torchvision

        _download(
            "stl10", root, lambda: torchvision.datasets.STL10(str(root), split=split, download=True)
        )
    missing = [f for f in needed if not f.is_file()]
    if missing:
        raise FileNotFoundError(
            f"stl10 {split} not found under {root}: looked for "
            f"{', '.join(str(f) for f in needed)} (torchvision's stl10_binary format). "
            f"Pass download=True (--download) to fetch it (needs the internet, 2.6 GB), or set "
            f"the root (--data-root) or DYNTEMP_DATA to a folder that has it."
        )
    images, labels = [], []
    for part in parts:
        data_file, label_file = _STL10_FILES[part]
        x = _read_uint8(folder / data_file)
        if x.size % (3 * 96 * 96) or not x.size:
            raise ValueError(f"{folder / data_file} is not a whole number of 3x96x96 images")
        # Stored column-major per channel, as torchvision reads it.
        images.append(torch.from_numpy(x.reshape(-1, 3, 96, 96)).transpose(2, 3))
        if label_file is None:
            labels.append(torch.full((len(images[-1]),), -1, dtype=torch.int64))
        else:
            y = torch.from_numpy(_read_uint8(folder / label_file))
            if len(y) != len(images[-1]):
                raise ValueError(
                    f"{folder / label_file} has {len(y)} labels for {len(images[-1])} images"
                )
            if len(y) and not 1 <= int(y.min()) <= int(y.max()) <= 10:
                raise ValueError(
                    f"{folder / label_file} has labels {int(y.min())}..{int(y.max())}, not 1..10"
                )
            labels.append(y.to(torch.int64) - 1)
    names_file = folder / "class_names.txt"
    try:
        classes = [line for line in names_file.read_text().splitlines() if line]
    except (OSError, UnicodeDecodeError) as error:
        raise ValueError(f"cannot read {names_file}: {_one_line(error)}") from None
    if len(classes) != 10:
        raise ValueError(f"{names_file} names {len(classes)} classes, stl10 has 10")
    return ImageDataset(torch.cat(images).contiguous(), torch.cat(labels), classes, "stl10")


def _read_uint8(path: Path) -> np.ndarray:
    try:
        return np.fromfile(path, dtype=np.uint8)
    except OSError as error:
        raise ValueError(f"cannot read {path}: {_one_line(error)}") from None


def _download(name: str, root: Path, fetch) -> None:
    """Run torchvision's download; its failures (no network, a bad checksum) in one line."""
    try:
        fetch()
    except (OSError, RuntimeError) as error:
        raise ValueError(f"the download of {name} into {root} failed: {_one_line(error)}") from None


# -- image folders, with the decode cache -----------------------------------------------------


def load_image_folder(
    root: Path,
    split: str,
    *,
    size: int | None = None,
    cache: bool = True,
    name: str = "imagefolder",
) -> ImageDataset:
    """Decode ``root/<split>/<class>/*`` (classes sorted by name, files by name).

    The decoded tensor is cached (``<root>/.dyntemp-cache/``, else the user's cache folder)
    and reused only while it can be trusted:

    - the files' names, sizes, modification and change times and inode numbers match the
      ones the cache was built from (a file rewritten in place, even with its size and
      modification time put back, has a new change time, which no program can set back;
      one replaced by another file has a new inode);
    - the files changed less than two seconds before the cache was built, whose change time
      a later rewrite could repeat on a coarse clock, still have the bytes they had (their
      sha256 is stored; git calls such files racily clean);
    - the cached images and labels still have the sha256 ``fingerprint`` stored with them,
      so a damaged cache file is never used.

    Anything else rebuilds it. Hashing every file's bytes on each load would catch more (a
    rewrite that keeps the change time: a clock set back, or Windows, where that time is the
    creation time) but reads every file, which is what the cache is there to avoid. On the
    CIFAR-10 training split (50,000 JPEGs, one thread, a 2-core AMD EPYC, files in the page
    cache) reading and hashing them all took 0.55 s, a whole checked cached load 0.40 s (the
    fingerprint check 0.08 s of it), the load without a cache 1.7 s; files not in the page
    cache make the reading slower still.
    """
    top = root / split
    if not top.is_dir():
        if not root.is_dir():
            raise FileNotFoundError(
                f"{name}: no folder {root}; set the root (--data-root) or DYNTEMP_DATA to the "
                f"data folder"
            )
        found = sorted(p.name for p in root.iterdir() if p.is_dir() and p.name[0] != ".")
        raise ValueError(
            f"{name} has no split {split!r} under {root}; found: {', '.join(found) or 'no folders'}"
        )
    listing = _list_image_files(top)
    key = f"format {_CACHE_FORMAT}, size {size}, files {listing.key}"
    cache_name = f"{split}-{size or 'native'}.pt"
    if cache:
        cached = _read_cache(root, cache_name, key, listing)
        if cached is not None:
            images, label_tensor, digest = cached
            return ImageDataset(images, label_tensor, listing.classes, name, digest)
    raw = [_read_bytes(path) for path in listing.files]
    images = _decode_all(listing.files, raw, size)
    label_tensor = torch.tensor(listing.labels, dtype=torch.int64)
    dataset = ImageDataset(images, label_tensor, listing.classes, name)
    if cache:
        recent = {listing.names[i]: hashlib.sha256(raw[i]).hexdigest() for i in listing.recent}
        _write_cache(root, cache_name, key, dataset, recent)
    return dataset


_RECENT_NS = 2_000_000_000  # files changed this close to a listing are hashed (racily clean)


@dataclass
class _Listing:
    """The image files under a split folder, and the key of their versions."""

    top: Path
    classes: list[str]
    names: list[str]  # <class>/<file>
    files: list[str]
    labels: list[int]
    key: str  # sha256 over the names, sizes, modification and change times, inodes
    recent: list[int]  # the files changed within _RECENT_NS of the listing


def _list_image_files(top: Path) -> _Listing:
    """Class names, image paths and labels under ``top``, and the key of their versions."""
    started = time.time_ns()
    classes = sorted(e.name for e in _scandir(top) if e.is_dir() and e.name[0] != ".")
    if not classes:
        raise ValueError(f"{top} has no class folders (expected {top}/<class>/<image>)")
    names, files, labels, versions, recent = [], [], [], [], []
    for label, name in enumerate(classes):
        entries = sorted(
            (
                e
                for e in _scandir(top / name)
                if os.path.splitext(e.name)[1].lower() in IMAGE_EXTENSIONS and e.is_file()
            ),
            key=lambda e: e.name,
        )
        if not entries:
            raise ValueError(f"{top / name} has no images ({', '.join(IMAGE_EXTENSIONS)})")
        for entry in entries:
            stat = entry.stat()  # (names hold no NUL: the fields cannot run into each other)
            versions.append(
                f"{name}/{entry.name}\0{stat.st_size}\0{stat.st_mtime_ns}\0"
                f"{stat.st_ctime_ns}\0{stat.st_ino}\0"
            )
            if max(stat.st_mtime_ns, stat.st_ctime_ns) >= started - _RECENT_NS:
                recent.append(len(files))
            names.append(f"{name}/{entry.name}")
            files.append(entry.path)
        labels.extend([label] * len(entries))
    key = hashlib.sha256("".join(versions).encode("utf-8", "surrogateescape")).hexdigest()
    return _Listing(top, classes, names, files, labels, key, recent)


def _scandir(folder: Path) -> list[os.DirEntry]:
    try:
        with os.scandir(folder) as entries:
            return list(entries)
    except OSError as error:
        raise ValueError(f"cannot list {folder}: {_one_line(error)}") from None


def _cache_folders(root: Path) -> list[Path]:
    """Next to the data first; the user's cache folder where that is not writable."""
    user = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "dyntemp"
    place = hashlib.sha256(str(root.resolve()).encode()).hexdigest()[:16]
    return [root / CACHE_FOLDER, user / place]


def _read_cache(
    root: Path, file_name: str, key: str, listing: _Listing
) -> tuple[torch.Tensor, torch.Tensor, str] | None:
    """The cached (images, labels, fingerprint) if a cache is to be trusted (load_image_folder)."""
    labels = torch.tensor(listing.labels, dtype=torch.int64)
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
                and entry["classes"] == listing.classes
                and images.dtype == torch.uint8
                and images.dim() == 4
                and images.shape[:2] == (len(labels), 3)
                and torch.equal(cached_labels, labels)
                and all(
                    hashlib.sha256(_read_bytes(str(listing.top / name))).hexdigest() == digest
                    for name, digest in entry["recent"].items()
                )
                and fingerprint(images, cached_labels) == entry["fingerprint"]
            )
        except Exception:  # a corrupt cache is rebuilt, never trusted
            valid = False
        if valid:
            return images, cached_labels, entry["fingerprint"]
    return None


def _write_cache(
    root: Path, file_name: str, key: str, dataset: ImageDataset, recent: dict[str, str]
) -> None:
    entry = {
        "format": _CACHE_FORMAT,
        "key": key,
        "classes": dataset.classes,
        "images": dataset.images,
        "labels": dataset.labels,
        "fingerprint": dataset.fingerprint,
        "recent": recent,
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


def _decode_all(files: Sequence[str], raw: Sequence[bytes], size: int | None) -> torch.Tensor:
    """Decode image files (their bytes ``raw``) to one uint8 tensor (N x 3 x H x W).

    JPEGs are decoded by torchvision's libjpeg-turbo, a share per core (PIL gives the same
    pixels, about five times slower); other formats and anything torchvision refuses go
    through PIL.
    """
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
            f"{b[0]}x{b[1]}; pass image_size=N (--image-size N) to resize them to N x N"
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
    except UnidentifiedImageError:  # its message names the BytesIO, not the file
        raise ValueError(
            f"cannot read image {path}: not in a format PIL knows, or damaged"
        ) from None
    except Exception as error:  # PIL raises OSError, SyntaxError, ValueError, its own...
        raise ValueError(f"cannot read image {path}: {_one_line(error)}") from None
    return torch.from_numpy(array.copy()).permute(2, 0, 1).contiguous()


def _resize_center(image: torch.Tensor, size: int) -> torch.Tensor:
    """Shorter side to ``size`` (bilinear, antialiased), then the central ``size x size``."""
    if tuple(image.shape[-2:]) == (size, size):
        return image
    from torchvision.transforms.v2 import functional as TF

    return TF.center_crop(TF.resize(image, size, antialias=True), [size, size])
