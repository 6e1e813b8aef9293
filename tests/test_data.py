"""Datasets as uint8 tensors: the real CIFAR-10, and small trees of every format made here."""

from __future__ import annotations

import hashlib
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

from dyntemp import data
from dyntemp.data import load_dataset

CIFAR10_CLASSES = [
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
]
# CIFAR-10-LT with imbalance 0.01 as published (Cao et al., LDAM-DRW): 12,406 images.
CIFAR10_LT_COUNTS = [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]


# -- small datasets written in each on-disk format ---------------------------------------------


def write_cifar_pickles(
    root: Path, name: str, per_class: int, num_classes: int, seed: int = 0
) -> dict[str, np.ndarray]:
    """torchvision's CIFAR pickles with random images; returns the arrays written."""
    rng = np.random.default_rng(seed)
    if name == "cifar10":
        folder, train_files, test_files = (
            root / "cifar-10-batches-py",
            [f"data_batch_{i}" for i in range(1, 6)],
            ["test_batch"],
        )
        label_key, meta_file, meta_key = "labels", "batches.meta", "label_names"
    else:
        folder, train_files, test_files = root / "cifar-100-python", ["train"], ["test"]
        label_key, meta_file, meta_key = "fine_labels", "meta", "fine_label_names"
    folder.mkdir(parents=True)
    written = {}
    for split, files in (("train", train_files), ("test", test_files)):
        labels = rng.permutation(np.repeat(np.arange(num_classes), per_class))
        images = rng.integers(0, 256, (len(labels), 3072), dtype=np.uint8)
        written[split], written[split + "_labels"] = images, labels
        for part, (x, y) in enumerate(
            zip(np.array_split(images, len(files)), np.array_split(labels, len(files)), strict=True)
        ):
            entry = {
                "batch_label": f"batch {part}",
                "data": x,
                label_key: y.tolist(),
                "filenames": [f"{i}.png" for i in range(len(y))],
            }
            if name == "cifar100":
                entry["coarse_labels"] = (y // 5).tolist()
            with open(folder / files[part], "wb") as f:
                pickle.dump(entry, f)
    classes = [f"class_{c:03d}" for c in range(num_classes)]
    with open(folder / meta_file, "wb") as f:
        pickle.dump({meta_key: classes}, f)
    return written


def write_stl10(root: Path, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    folder = root / "stl10_binary"
    folder.mkdir(parents=True)
    for prefix, n in (("train", 6), ("test", 4), ("unlabeled", 5)):
        rng.integers(0, 256, n * 3 * 96 * 96, dtype=np.uint8).tofile(folder / f"{prefix}_X.bin")
        if prefix != "unlabeled":
            rng.integers(1, 11, n, dtype=np.uint8).tofile(folder / f"{prefix}_y.bin")
    (folder / "class_names.txt").write_text("\n".join(f"name{c}" for c in range(10)) + "\n")


def write_image_folder(
    root: Path,
    split: str = "train",
    sizes=((8, 8),),
    per_class: int = 3,
    classes=("zebra", "apple", "mango"),
    seed: int = 0,
) -> dict[str, list]:
    """PNG images (lossless), class folders in unsorted creation order."""
    rng = np.random.default_rng(seed)
    written = {}
    for name in classes:
        (root / split / name).mkdir(parents=True)
        written[name] = []
        for i in range(per_class):
            h, w = sizes[i % len(sizes)]
            array = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
            Image.fromarray(array).save(root / split / name / f"{i:03d}.png")
            written[name].append(array)
    return written


@pytest.fixture
def cache_home(tmp_path, monkeypatch) -> Path:
    """The user cache folder, inside the test's temporary folder."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "user-cache"))
    return tmp_path / "user-cache"


def trust_torchvision_checksums(monkeypatch) -> None:
    """Let torchvision read our small files, which have no published checksums."""
    monkeypatch.setattr(torchvision.datasets.cifar, "check_integrity", lambda *a, **k: True)
    for dataset in (torchvision.datasets.CIFAR10, torchvision.datasets.STL10):
        monkeypatch.setattr(dataset, "_check_integrity", lambda self: True)


# -- the real CIFAR-10 --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cifar10_train(cifar10_root) -> data.ImageDataset:
    return load_dataset("cifar10", root=cifar10_root)


@pytest.mark.data
def test_real_cifar10_has_the_published_sizes_and_classes(cifar10_root, cifar10_train):
    train = cifar10_train
    test = load_dataset("cifar10", root=cifar10_root, split="test")
    assert train.images.shape == (50_000, 3, 32, 32) and train.images.dtype == torch.uint8
    assert test.images.shape == (10_000, 3, 32, 32)
    assert train.labels.dtype == torch.int64
    assert torch.bincount(train.labels).tolist() == [5000] * 10
    assert torch.bincount(test.labels).tolist() == [1000] * 10
    assert train.classes == test.classes == CIFAR10_CLASSES
    # The channel statistics measured on this JPEG copy (shared data README).
    mean = train.images.sum(dim=(0, 2, 3), dtype=torch.int64) / (50_000 * 32 * 32 * 255)
    assert mean.tolist() == pytest.approx([0.4913, 0.4821, 0.4465], abs=2e-4)


@pytest.mark.data
def test_real_cifar10_pixels_and_labels_match_pil_on_the_files(cifar10_root, cifar10_train):
    train = cifar10_train
    for k in (0, 4999, 5000, 23456, 49999):
        label = k // 5000
        files = sorted((Path(cifar10_root) / "train" / CIFAR10_CLASSES[label]).iterdir())
        expected = np.array(Image.open(files[k % 5000]).convert("RGB"))
        assert train.labels[k] == label
        assert torch.equal(train.images[k].permute(1, 2, 0), torch.from_numpy(expected))


@pytest.mark.data
def test_real_cifar10_long_tailed_counts(cifar10_root, cifar10_train):
    lt = load_dataset("cifar10-lt", root=cifar10_root)
    assert torch.bincount(lt.labels).tolist() == CIFAR10_LT_COUNTS
    assert lt.name == "cifar10-lt" and lt.classes == CIFAR10_CLASSES
    full = cifar10_train
    first_birds = torch.nonzero(full.labels == 2).flatten()[:1796]
    assert torch.equal(lt.images[lt.labels == 2], full.images[first_birds])
    test = load_dataset("cifar10-lt", root=cifar10_root, split="test")
    assert torch.bincount(test.labels).tolist() == [1000] * 10


# -- torchvision's formats ----------------------------------------------------------------------


@pytest.mark.parametrize("name, classes", [("cifar10", 10), ("cifar100", 100)])
def test_cifar_pickles_match_torchvision_reader(tmp_path, monkeypatch, name, classes):
    written = write_cifar_pickles(tmp_path, name, per_class=3, num_classes=classes)
    trust_torchvision_checksums(monkeypatch)
    reference_class = (
        torchvision.datasets.CIFAR10 if name == "cifar10" else torchvision.datasets.CIFAR100
    )
    for split in ("train", "test"):
        ours = load_dataset(name, root=tmp_path, split=split)
        reference = reference_class(str(tmp_path), train=split == "train")
        assert ours.images.shape == (3 * classes, 3, 32, 32)
        assert torch.equal(ours.images.permute(0, 2, 3, 1), torch.from_numpy(reference.data))
        assert ours.labels.tolist() == list(reference.targets)
        assert ours.classes == reference.classes == [f"class_{c:03d}" for c in range(classes)]
        assert torch.equal(ours.images.reshape(len(ours), -1), torch.from_numpy(written[split]))


@pytest.mark.parametrize("split", ["train", "test", "unlabeled", "train+unlabeled"])
def test_stl10_binary_matches_torchvision_reader(tmp_path, monkeypatch, split):
    write_stl10(tmp_path)
    trust_torchvision_checksums(monkeypatch)
    ours = load_dataset("stl10", root=tmp_path, split=split)
    reference = torchvision.datasets.STL10(str(tmp_path), split=split)
    assert ours.images.shape[1:] == (3, 96, 96) and ours.images.is_contiguous()
    assert torch.equal(ours.images, torch.from_numpy(reference.data))
    assert ours.labels.tolist() == reference.labels.tolist()
    assert ours.classes == reference.classes == [f"name{c}" for c in range(10)]


def test_long_tailed_counts_follow_the_exponential_profile(tmp_path):
    write_cifar_pickles(tmp_path, "cifar100", per_class=20, num_classes=100)
    lt = load_dataset("cifar100-lt", root=tmp_path, imbalance=0.1)
    counts = torch.bincount(lt.labels, minlength=100).tolist()
    # floor(20 * 0.1 ** (c / 99)), worked out by hand for a few classes:
    # c=0: 20; c=33: 20 * 10**(-1/3) = 9.28; c=66: 20 * 10**(-2/3) = 4.31; c=99: 2.
    assert (counts[0], counts[33], counts[66], counts[99]) == (20, 9, 4, 2)
    assert all(a >= b for a, b in zip(counts, counts[1:], strict=False))
    full = load_dataset("cifar100", root=tmp_path)
    for c in (0, 50, 99):  # the first n_c images of each class, in the dataset's order
        first = torch.nonzero(full.labels == c).flatten()[: counts[c]]
        assert torch.equal(lt.images[lt.labels == c], full.images[first])
    balanced = load_dataset("cifar100-lt", root=tmp_path, split="test")
    assert torch.bincount(balanced.labels).tolist() == [20] * 100


def test_imbalance_default_and_range(tmp_path):
    write_cifar_pickles(tmp_path, "cifar10", per_class=200, num_classes=10)
    counts = torch.bincount(load_dataset("cifar10-lt", root=tmp_path).labels).tolist()
    assert counts[0] == 200 and counts[-1] == 2  # 200 * 0.01
    for split in ("train", "test"):
        with pytest.raises(ValueError, match="imbalance is a ratio"):
            load_dataset("cifar10-lt", root=tmp_path, split=split, imbalance=1.5)
    with pytest.raises(ValueError, match="imbalance applies"):
        load_dataset("cifar10", root=tmp_path, imbalance=0.1)


# -- image folders and the decode cache ---------------------------------------------------------


def test_image_folder_reads_classes_sorted_and_pixels_exactly(tmp_path, cache_home):
    written = write_image_folder(tmp_path, sizes=((8, 8),))
    dataset = load_dataset("imagefolder", root=tmp_path)
    assert dataset.classes == ["apple", "mango", "zebra"]
    assert dataset.labels.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    expected = [a for name in dataset.classes for a in written[name]]
    assert torch.equal(dataset.images.permute(0, 2, 3, 1), torch.from_numpy(np.stack(expected)))


def test_image_folder_resizes_images_of_other_sizes(tmp_path, cache_home):
    write_image_folder(tmp_path, sizes=((8, 8), (12, 16), (20, 10)))
    with pytest.raises(ValueError, match="differ in size.*size="):
        load_dataset("imagefolder", root=tmp_path)
    dataset = load_dataset("imagefolder", root=tmp_path, size=8)
    assert dataset.images.shape == (9, 3, 8, 8)
    original = np.array(Image.open(tmp_path / "train" / "apple" / "000.png"))
    assert torch.equal(dataset.images[0].permute(1, 2, 0), torch.from_numpy(original))


def test_jpeg_decoding_matches_pil(tmp_path, cache_home):
    rng = np.random.default_rng(1)
    folder = tmp_path / "train" / "only"
    folder.mkdir(parents=True)
    for i in range(5):
        smooth = np.cumsum(rng.integers(0, 9, (32, 32, 3)), axis=1).clip(0, 255)
        Image.fromarray(smooth.astype(np.uint8)).save(folder / f"{i}.jpg", quality=75)
    Image.fromarray(np.full((32, 32), 77, np.uint8), mode="L").save(folder / "gray.jpg")
    dataset = load_dataset("imagefolder", root=tmp_path)
    for k, path in enumerate(sorted(folder.iterdir())):
        expected = np.array(Image.open(path).convert("RGB"))
        assert torch.equal(dataset.images[k].permute(1, 2, 0), torch.from_numpy(expected))


def _count_decodes(monkeypatch) -> list[int]:
    calls = []
    decode = data._decode_all

    def counting(files, size):
        calls.append(len(files))
        return decode(files, size)

    monkeypatch.setattr(data, "_decode_all", counting)
    return calls


def test_cache_is_used_then_rebuilt_when_a_file_changes(tmp_path, monkeypatch, cache_home):
    write_image_folder(tmp_path)
    calls = _count_decodes(monkeypatch)
    first = load_dataset("imagefolder", root=tmp_path)
    assert (tmp_path / data.CACHE_FOLDER / "train-native.pt").is_file()
    second = load_dataset("imagefolder", root=tmp_path)
    assert calls == [9]  # the second load came from the cache
    assert torch.equal(first.images, second.images) and first.fingerprint == second.fingerprint
    path = tmp_path / "train" / "mango" / "001.png"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(path)
    os.utime(path, ns=(1, 1))  # a different time, whatever the file system's resolution
    third = load_dataset("imagefolder", root=tmp_path)
    assert calls == [9, 9]
    assert third.images[4].sum() == 0 and third.fingerprint != first.fingerprint
    (tmp_path / "train" / "mango" / "002.png").unlink()
    assert len(load_dataset("imagefolder", root=tmp_path)) == 8 and calls == [9, 9, 8]
    assert load_dataset("imagefolder", root=tmp_path, cache=False).images.shape[0] == 8


@pytest.mark.parametrize("damage", ["garbage", "truncated", "wrong labels"])
def test_corrupt_cache_is_rebuilt(tmp_path, monkeypatch, cache_home, damage):
    write_image_folder(tmp_path)
    first = load_dataset("imagefolder", root=tmp_path)
    path = tmp_path / data.CACHE_FOLDER / "train-native.pt"
    if damage == "garbage":
        path.write_bytes(b"not a cache")
    elif damage == "truncated":
        path.write_bytes(path.read_bytes()[:500])
    else:
        entry = torch.load(path, weights_only=True)
        entry["labels"] = torch.zeros_like(entry["labels"])
        torch.save(entry, path)
    calls = _count_decodes(monkeypatch)
    again = load_dataset("imagefolder", root=tmp_path)
    assert calls == [9]
    assert torch.equal(again.images, first.images)
    assert torch.equal(again.labels, first.labels)
    assert load_dataset("imagefolder", root=tmp_path).fingerprint == first.fingerprint
    assert calls == [9]  # the rebuilt cache is good


def test_cache_goes_to_the_user_folder_when_the_data_folder_is_not_writable(
    tmp_path, monkeypatch, cache_home
):
    write_image_folder(tmp_path)
    (tmp_path / data.CACHE_FOLDER).write_text("a file where the cache folder would go")
    calls = _count_decodes(monkeypatch)
    load_dataset("imagefolder", root=tmp_path)
    load_dataset("imagefolder", root=tmp_path)
    assert calls == [9]
    assert len(list(cache_home.glob("dyntemp/*/train-native.pt"))) == 1


def test_cifar10_from_image_folders_needs_ten_classes(tmp_path, cache_home):
    write_image_folder(tmp_path, classes=("a", "b"))
    with pytest.raises(ValueError, match="2 class folders, cifar10 has 10"):
        load_dataset("cifar10", root=tmp_path)


# -- fingerprint, subset, root ----------------------------------------------------------------


def test_fingerprint_is_sha256_of_image_then_label_bytes(tmp_path, cache_home):
    write_image_folder(tmp_path)
    dataset = load_dataset("imagefolder", root=tmp_path)
    expected = hashlib.sha256(
        dataset.images.numpy().tobytes() + dataset.labels.numpy().astype("<i8").tobytes()
    ).hexdigest()
    assert dataset.fingerprint == expected
    changed = data.ImageDataset(dataset.images.clone(), dataset.labels, dataset.classes, "x")
    changed.images[0, 0, 0, 0] ^= 1
    assert changed.fingerprint != expected


def test_subset_is_class_balanced_deterministic_and_ordered(tmp_path):
    write_cifar_pickles(tmp_path, "cifar10", per_class=20, num_classes=10)
    full = load_dataset("cifar10", root=tmp_path)
    part = load_dataset("cifar10", root=tmp_path, subset=43)
    assert torch.bincount(part.labels).tolist() == [5, 5, 5, 4, 4, 4, 4, 4, 4, 4]
    assert part.fingerprint == load_dataset("cifar10", root=tmp_path, subset=43).fingerprint
    expected = sorted(
        i for c in range(10) for i in torch.nonzero(full.labels == c).flatten()[: 5 if c < 3 else 4]
    )
    assert torch.equal(part.images, full.images[torch.tensor(expected)])
    with pytest.raises(ValueError, match="subset"):
        load_dataset("cifar10", root=tmp_path, subset=201)


def test_root_defaults_to_environment_then_data_folder(tmp_path, monkeypatch):
    write_cifar_pickles(tmp_path / "from-env", "cifar10", per_class=1, num_classes=10)
    monkeypatch.setenv("DYNTEMP_DATA", str(tmp_path / "from-env"))
    assert len(load_dataset("cifar10", split="test")) == 10
    monkeypatch.delenv("DYNTEMP_DATA")
    monkeypatch.chdir(tmp_path)
    write_cifar_pickles(tmp_path / "data", "cifar10", per_class=2, num_classes=10)
    assert len(load_dataset("cifar10", split="test")) == 20


def test_dataset_stats():
    assert data.dataset_stats("cifar10") == (data.CIFAR10_MEAN, data.CIFAR10_STD)
    assert data.dataset_stats("cifar100-lt") == (data.CIFAR100_MEAN, data.CIFAR100_STD)
    with pytest.raises(ValueError, match="known: cifar10"):
        data.dataset_stats("mnist")


# -- errors -------------------------------------------------------------------------------------


def test_unknown_name_lists_the_known_ones():
    with pytest.raises(ValueError, match="unknown dataset 'mnist'; known: cifar10, cifar100"):
        load_dataset("mnist")


def test_missing_files_say_what_was_looked_for_and_how_to_get_it(tmp_path):
    with pytest.raises(FileNotFoundError) as error:
        load_dataset("cifar10", root=tmp_path)
    message = str(error.value)
    assert str(tmp_path / "cifar-10-batches-py" / "data_batch_1") in message
    assert str(tmp_path / "train") in message and "download=True" in message
    with pytest.raises(FileNotFoundError, match="stl10_binary.*download=True"):
        load_dataset("stl10", root=tmp_path)
    with pytest.raises(FileNotFoundError, match="no folder"):
        load_dataset("imagefolder", root=tmp_path / "nowhere")


def test_wrong_split(tmp_path, cache_home):
    with pytest.raises(ValueError, match="no split 'val'; its splits: train, test"):
        load_dataset("cifar10", root=tmp_path, split="val")
    write_image_folder(tmp_path)
    with pytest.raises(ValueError, match="no split 'val'.*found: train"):
        load_dataset("imagefolder", root=tmp_path, split="val")


def test_unreadable_image_is_named(tmp_path, cache_home):
    write_image_folder(tmp_path)
    bad = tmp_path / "train" / "mango" / "001.png"
    bad.write_bytes(b"\x89PNG broken")
    with pytest.raises(ValueError, match=f"cannot read image {bad}"):
        load_dataset("imagefolder", root=tmp_path)
    jpeg = tmp_path / "train" / "apple" / "000.png"
    jpeg.write_bytes(b"\xff\xd8\xff\xe0 truncated jpeg")
    with pytest.raises(ValueError, match=f"cannot read image {jpeg}"):
        load_dataset("imagefolder", root=tmp_path)


def test_unreadable_pickle_is_named(tmp_path):
    write_cifar_pickles(tmp_path, "cifar10", per_class=1, num_classes=10)
    bad = tmp_path / "cifar-10-batches-py" / "test_batch"
    bad.write_bytes(b"garbage")
    with pytest.raises(ValueError, match=f"cannot read {bad}"):
        load_dataset("cifar10", root=tmp_path, split="test")
