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
        with pytest.raises(ValueError, match=r"^imbalance must be in \(0, 1\], got 1.5$"):
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
    with pytest.raises(
        ValueError, match=r"differ in size.*image_size=N \(--image-size N\) to resize"
    ):
        load_dataset("imagefolder", root=tmp_path)
    dataset = load_dataset("imagefolder", root=tmp_path, image_size=8)
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

    def counting(files, raw, size):
        calls.append(len(files))
        return decode(files, raw, size)

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


@pytest.mark.parametrize("damage", ["garbage", "truncated", "wrong labels", "flipped pixels"])
def test_corrupt_cache_is_rebuilt(tmp_path, monkeypatch, cache_home, damage):
    write_image_folder(tmp_path)
    first = load_dataset("imagefolder", root=tmp_path)
    path = tmp_path / data.CACHE_FOLDER / "train-native.pt"
    if damage == "garbage":
        path.write_bytes(b"not a cache")
    elif damage == "truncated":
        path.write_bytes(path.read_bytes()[:500])
    elif damage == "wrong labels":
        entry = torch.load(path, weights_only=True)
        entry["labels"] = torch.zeros_like(entry["labels"])
        torch.save(entry, path)
    else:  # 8 bytes of pixels flipped inside the file, which still loads
        blob = bytearray(path.read_bytes())
        start = blob.find(first.images.numpy().tobytes()[:64])
        assert start > 0
        blob[start + 100 : start + 108] = bytes(255 - b for b in blob[start + 100 : start + 108])
        path.write_bytes(bytes(blob))
        assert not torch.equal(torch.load(path, weights_only=True)["images"], first.images)
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
    with pytest.raises(ValueError, match="choose one of cifar10"):
        data.dataset_stats("mnist")


# -- errors -------------------------------------------------------------------------------------


def test_unknown_name_lists_the_known_ones():
    with pytest.raises(
        ValueError, match="unknown dataset 'mnist'; choose one of cifar10, cifar100"
    ):
        load_dataset("mnist")


def test_missing_files_say_what_was_looked_for_and_how_to_get_it(tmp_path):
    with pytest.raises(FileNotFoundError) as error:
        load_dataset("cifar10", root=tmp_path)
    message = str(error.value)
    assert str(tmp_path / "cifar-10-batches-py" / "data_batch_1") in message
    assert str(tmp_path / "train") in message and "--download" in message
    assert "--data-root" in message and "download=True" in message  # the CLI's and Python's
    with pytest.raises(FileNotFoundError, match="stl10_binary.*--download"):
        load_dataset("stl10", root=tmp_path)
    with pytest.raises(FileNotFoundError, match="no folder.*--data-root"):
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
    bad.write_bytes(b"")
    with pytest.raises(ValueError, match=f"cannot read {bad}: it is empty or cut short"):
        load_dataset("cifar10", root=tmp_path, split="test")


# -- files that must not be trusted --------------------------------------------------------------


class _Planted:
    """Unpickled by the standard unpickler, this writes a file: what a hostile batch could do."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').write('ran')",))


@pytest.mark.parametrize("file_name", ["data_batch_1", "batches.meta"])
def test_a_planted_cifar_pickle_cannot_run_code(tmp_path, file_name):
    write_cifar_pickles(tmp_path, "cifar10", per_class=1, num_classes=10)
    marker = tmp_path / "code-ran"
    path = tmp_path / "cifar-10-batches-py" / file_name
    path.write_bytes(pickle.dumps({"data": _Planted(marker), "label_names": _Planted(marker)}))
    with pytest.raises(ValueError, match=f"cannot read {path}: it asks for builtins.exec") as error:
        load_dataset("cifar10", root=tmp_path)
    assert not marker.exists()
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("protocol", [0, 2, 4, 5])
def test_cifar_pickles_of_every_protocol_still_load(tmp_path, protocol):
    written = write_cifar_pickles(tmp_path, "cifar10", per_class=2, num_classes=10)
    folder = tmp_path / "cifar-10-batches-py"
    entry = pickle.loads((folder / "test_batch").read_bytes())
    entry["numpy label"] = np.int64(3)  # numbers as numpy writes them load too
    (folder / "test_batch").write_bytes(pickle.dumps(entry, protocol=protocol))
    test = load_dataset("cifar10", root=tmp_path, split="test")
    assert torch.equal(test.images.reshape(len(test), -1), torch.from_numpy(written["test"]))


@pytest.mark.parametrize(
    "entry, message",
    [
        (["not", "a", "dict"], "holds a list, not a dict"),
        ({"labels": [0]}, "has no 'data'"),
        ({"data": np.zeros((2, 3072), np.uint8), "labels": [0]}, "2 images and 1 labels"),
        ({"data": np.zeros((1, 3072), np.uint8), "labels": [10]}, "labels run from 10 to 10"),
        ({"data": np.zeros((1, 3072), np.float32), "labels": [0]}, "float32 .1, 3072., not uint8"),
        ({"data": np.zeros((1, 100), np.uint8), "labels": [0]}, r"uint8 \(1, 100\)"),
        ({"data": np.zeros((1, 3072), np.uint8), "labels": ["cat"]}, "not a list of whole"),
    ],
)
def test_a_cifar_batch_of_the_wrong_shape_is_named(tmp_path, entry, message):
    write_cifar_pickles(tmp_path, "cifar10", per_class=1, num_classes=10)
    path = tmp_path / "cifar-10-batches-py" / "test_batch"
    path.write_bytes(pickle.dumps(entry))
    with pytest.raises(ValueError, match=f"{path} .*{message}"):
        load_dataset("cifar10", root=tmp_path, split="test")


def test_a_cifar_meta_file_without_class_names_is_named(tmp_path):
    write_cifar_pickles(tmp_path, "cifar10", per_class=1, num_classes=10)
    path = tmp_path / "cifar-10-batches-py" / "batches.meta"
    path.write_bytes(pickle.dumps({"names": ["a"]}))
    with pytest.raises(ValueError, match=f"{path} is not a cifar10 meta file"):
        load_dataset("cifar10", root=tmp_path, split="test")


def test_a_rewritten_image_is_seen_even_with_size_and_time_put_back(
    tmp_path, monkeypatch, cache_home
):
    """Files changed just before the cache was built: their bytes are checked."""
    write_image_folder(tmp_path)
    first = load_dataset("imagefolder", root=tmp_path)
    path = tmp_path / "train" / "mango" / "001.png"
    before = path.stat()
    image = np.array(Image.open(path))
    Image.fromarray(255 - image).save(path)  # the same size: PNG of the inverted pixels
    assert path.stat().st_size == before.st_size
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    calls = _count_decodes(monkeypatch)
    again = load_dataset("imagefolder", root=tmp_path)
    assert calls == [9]
    assert torch.equal(again.images[4].permute(1, 2, 0), torch.from_numpy(255 - image))
    assert again.fingerprint != first.fingerprint


def test_an_old_file_replaced_with_size_and_time_put_back_is_seen(
    tmp_path, monkeypatch, cache_home
):
    """Files older than the cache: their stat is enough, and a cached load reads none."""
    monkeypatch.setattr(data, "_RECENT_NS", -(10**30))  # every file counts as old
    write_image_folder(tmp_path)
    load_dataset("imagefolder", root=tmp_path)
    read = data._read_bytes
    reads = []
    monkeypatch.setattr(data, "_read_bytes", lambda path: reads.append(path) or read(path))
    load_dataset("imagefolder", root=tmp_path)
    assert reads == []  # a cached load of unchanged old files reads no image
    path = tmp_path / "train" / "mango" / "001.png"
    before = path.stat()
    image = np.array(Image.open(path))
    Image.fromarray(255 - image).save(tmp_path / "new.png")
    os.utime(tmp_path / "new.png", ns=(before.st_atime_ns, before.st_mtime_ns))
    os.replace(tmp_path / "new.png", path)  # as rsync and tar do: a new inode
    calls = _count_decodes(monkeypatch)
    again = load_dataset("imagefolder", root=tmp_path)
    assert calls == [9]
    assert torch.equal(again.images[4].permute(1, 2, 0), torch.from_numpy(255 - image))


# -- image size -----------------------------------------------------------------------------------


def test_image_size_resizes_cifar_as_the_image_folder_loader_does(tmp_path, cache_home):
    written = write_cifar_pickles(tmp_path / "pickles", "cifar10", per_class=1, num_classes=10)
    test = load_dataset("cifar10", root=tmp_path / "pickles", split="test")
    for k, (image, label) in enumerate(zip(test.images, test.labels, strict=True)):
        folder = tmp_path / "folders" / "test" / f"class_{int(label):03d}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image.permute(1, 2, 0).numpy()).save(folder / f"{k:03d}.png")
    for size in (16, 48):
        pickles = load_dataset("cifar10", root=tmp_path / "pickles", split="test", image_size=size)
        folders = load_dataset("cifar10", root=tmp_path / "folders", split="test", image_size=size)
        assert pickles.images.shape == (10, 3, size, size)
        order = torch.argsort(pickles.labels, stable=True)
        assert torch.equal(pickles.images[order], folders.images)
    same = load_dataset("cifar10", root=tmp_path / "pickles", split="test", image_size=32)
    assert torch.equal(same.images.reshape(10, -1), torch.from_numpy(written["test"]))


def test_image_size_applies_to_stl10(tmp_path):
    write_stl10(tmp_path)
    assert load_dataset("stl10", root=tmp_path, image_size=32).images.shape == (6, 3, 32, 32)


@pytest.mark.parametrize(
    "value, message",
    [
        (0, "at least 8, got 0"),
        (7, "at least 8, got 7"),
        (8.0, "a whole number, got 8.0"),
        ("8", "a whole number, got '8'"),
        (10**6, "at most 4096"),
    ],
)
def test_image_size_must_be_a_whole_number_in_range(tmp_path, value, message):
    with pytest.raises(ValueError, match=f"^image_size must be {message}"):
        load_dataset("cifar10", root=tmp_path, image_size=value)
    with pytest.raises(ValueError, match=f"^--image-size must be {message}"):
        data.check_image_size(value, name="--image-size")


# -- messages a user can act on -------------------------------------------------------------------


@pytest.mark.parametrize(
    "value, message",
    [
        (10**20, "must be at most 100, the images in cifar10 test, got 100000000000000000000"),
        (1e20, "must be a whole number, got 1e"),
        (5.5, "must be a whole number, got 5.5"),
        (True, "must be a whole number, got True"),
        (0, "must be positive, got 0"),
    ],
)
def test_subset_messages_name_the_option_the_caller_gives(tmp_path, value, message):
    write_cifar_pickles(tmp_path, "cifar10", per_class=10, num_classes=10)
    with pytest.raises(ValueError, match=f"^--test-subset {message}"):
        load_dataset(
            "cifar10", root=tmp_path, split="test", subset=value, subset_name="--test-subset"
        )
    with pytest.raises(ValueError, match=f"^subset {message.split(',')[0]}"):
        load_dataset("cifar10", root=tmp_path, split="test", subset=value)


def test_subset_of_a_long_tailed_split_says_which_class_is_short(tmp_path):
    write_cifar_pickles(tmp_path, "cifar10", per_class=100, num_classes=10)
    with pytest.raises(
        ValueError,
        match="--subset 100 needs 10 images of each of 10 classes, "
        "and cifar10-lt train has 7 of class 'class_005'",
    ):
        load_dataset("cifar10-lt", root=tmp_path, subset=100, subset_name="--subset")


def test_an_imbalance_that_empties_a_class_is_refused(tmp_path):
    write_cifar_pickles(tmp_path, "cifar10", per_class=20, num_classes=10)
    with pytest.raises(
        ValueError, match="^imbalance 0.01 leaves class 'class_006' of cifar10-lt with no images"
    ):
        load_dataset("cifar10-lt", root=tmp_path)
    with pytest.raises(ValueError, match="^--imbalance 0.01 leaves class 'class_006'"):
        load_dataset("cifar10-lt", root=tmp_path, imbalance_name="--imbalance")
    with pytest.raises(ValueError, match="^imbalance must be a finite number, got '0.1'"):
        load_dataset("cifar10-lt", root=tmp_path, imbalance="0.1")
    with pytest.raises(ValueError, match="^--imbalance applies to cifar10-lt and cifar100-lt"):
        load_dataset("cifar10", root=tmp_path, imbalance=0.1, imbalance_name="--imbalance")


def test_an_unidentifiable_image_is_named_not_its_buffer(tmp_path, cache_home):
    write_image_folder(tmp_path)
    bad = tmp_path / "train" / "mango" / "001.png"
    bad.write_bytes(b"no image format at all")
    with pytest.raises(ValueError) as error:
        load_dataset("imagefolder", root=tmp_path)
    assert str(error.value) == f"cannot read image {bad}: not in a format PIL knows, or damaged"


def test_a_failed_download_is_one_line(tmp_path, monkeypatch):
    import urllib.error

    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", offline)
    with pytest.raises(
        ValueError, match=f"^the download of cifar10 into {tmp_path} failed: .*name"
    ):
        load_dataset("cifar10", root=tmp_path, download=True)


@pytest.mark.parametrize("damage", ["labels out of range", "class names"])
def test_stl10_files_of_the_wrong_shape_are_named(tmp_path, damage):
    write_stl10(tmp_path)
    folder = tmp_path / "stl10_binary"
    if damage == "labels out of range":
        np.array([0, 1, 2, 3, 4, 5], np.uint8).tofile(folder / "train_y.bin")
        match = f"{folder / 'train_y.bin'} has labels 0..5, not 1..10"
    else:
        (folder / "class_names.txt").write_text("one\ntwo\n")
        match = f"{folder / 'class_names.txt'} names 2 classes, stl10 has 10"
    with pytest.raises(ValueError, match=match):
        load_dataset("stl10", root=tmp_path)
