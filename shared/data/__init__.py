"""Data loaders and federated partitioners: built-in digits, MedMNIST, image folders, text tables."""

from shared.data.images import (
    BUILTIN_NAMES,
    IMAGE_EXTENSIONS,
    ImageDataset,
    load_digits_builtin,
    load_image_folder,
    load_image_source,
    load_medmnist,
)
from shared.data.partition import (
    PARTITION_SCHEMES,
    label_histogram,
    partition,
    partition_dirichlet,
    partition_iid,
    partition_quantity,
)
from shared.data.text import TextDataset, load_text_table

__all__ = [
    "BUILTIN_NAMES",
    "IMAGE_EXTENSIONS",
    "PARTITION_SCHEMES",
    "ImageDataset",
    "TextDataset",
    "label_histogram",
    "load_digits_builtin",
    "load_image_folder",
    "load_image_source",
    "load_medmnist",
    "load_text_table",
    "partition",
    "partition_dirichlet",
    "partition_iid",
    "partition_quantity",
]
