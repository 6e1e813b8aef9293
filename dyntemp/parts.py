"""The parts of a run, built from its ``TrainConfig``: the data splits, the model, the views
and the kNN score (the arithmetic is ``dyntemp.precision``'s). The training loop
(``dyntemp.train``), the evaluation of a finished run (``dyntemp.run_metrics``), the study
and the benchmarks all build them here, so that each builds the same thing.

The splits: the training images (less the validation images, when the config holds some
out), the validation images (``--validation n``: a class-balanced n of the training images,
the same for every run, that the network never trains on) and the test images. With a
validation split, the kNN during training scores the validation images against the
training images, and the test set is scored once, at the end, so that no choice made by
looking at the curves is a choice made on the test set.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from dyntemp import data, evaluate, models
from dyntemp.augment import SimCLRAugment
from dyntemp.config import TrainConfig, flag


@dataclass
class Splits:
    """The images of a run: what it trains on, what chooses (or None), what it is scored on."""

    train: data.ImageDataset
    validation: data.ImageDataset | None
    test: data.ImageDataset


def load_splits(config: TrainConfig) -> Splits:
    """The training set (imbalance, validation held out, then subset), the validation set
    and the test set (test_subset) of ``config``."""

    def split(name: str, subset: int | None, field: str, **options: Any) -> data.ImageDataset:
        return data.load_dataset(
            config.dataset,
            config.data_root,
            name,
            config.download,
            subset=subset,
            subset_name=flag(field),
            image_size=config.image_size,
            **options,
        )

    imbalance = {}
    if config.imbalance is not None:
        imbalance = {"imbalance": config.imbalance, "imbalance_name": flag("imbalance")}
    validation = None
    if config.validation is None:
        train_set = split("train", config.subset, "subset", **imbalance)
    else:
        full = split("train", None, "subset", **imbalance)
        train_set, validation = data.validation_split(
            full, config.validation, name=flag("validation")
        )
        if config.subset is not None:
            train_set = data.balanced_subset(train_set, config.subset, subset_name=flag("subset"))
    return Splits(train_set, validation, split("test", config.test_subset, "test_subset"))


def load_data(config: TrainConfig) -> tuple[data.ImageDataset, data.ImageDataset]:
    """The training set (validation images held out) and the test set of ``config``."""
    splits = load_splits(config)
    return splits.train, splits.test


def build_model(config: TrainConfig) -> models.SimCLRModel:
    """Backbone and projector as the config says (initialised from the global RNG)."""
    backbone = models.build(config.model, stem=config.stem)
    projector = models.Projector(
        backbone.feature_dim, config.projector_hidden_dim, config.projector_dim
    )
    return models.SimCLRModel(backbone, projector)


def build_augment(config: TrainConfig, image_size: int) -> SimCLRAugment:
    """The SimCLR views of ``config`` for images of ``image_size``, normalised with the
    dataset's statistics."""
    mean, std = data.dataset_stats(config.dataset)
    return SimCLRAugment(
        size=image_size, scale=(config.crop_scale_min, 1.0), blur_p=config.blur, mean=mean, std=std
    )


def knn_scores(
    backbone: nn.Module,
    bank: data.ImageDataset,
    queries: list[data.ImageDataset],
    augment: SimCLRAugment,
    config: TrainConfig,
    device: torch.device,
    *,
    bank_images: torch.Tensor | None = None,
) -> list[float]:
    """Weighted kNN top-1 (percent) of each query set against the ``bank``'s features (the
    training images), with the config's k and temperature; the bank is embedded once.
    ``bank_images``: the bank's images where they already are on the device (training's).

    Features are extracted in float32, as ``python -m dyntemp eval`` does, so the two agree.
    """
    bank_features, *query_features = (
        evaluate.extract_features(backbone, images, augment.unaugmented, device=device)
        for images in (
            bank.images if bank_images is None else bank_images,
            *(query.images for query in queries),
        )
    )
    return [
        evaluate.knn_accuracy(
            bank_features,
            bank.labels,
            features,
            query.labels,
            k=config.knn_k,
            temperature=config.knn_temperature,
        )
        for features, query in zip(query_features, queries, strict=True)
    ]
