"""Data loaders and federated partitioners: built-in digits, MedMNIST, image folders, text tables."""

from fedaug.data.images import (
    BUILTIN_NAMES,
    IMAGE_EXTENSIONS,
    ImageDataset,
    load_digits_builtin,
    load_image_folder,
    load_image_source,
    load_medmnist,
)
from fedaug.data.partition import (
    PARTITION_SCHEMES,
    label_histogram,
    partition,
    partition_dirichlet,
    partition_iid,
    partition_quantity,
)
from fedaug.data.text import TextDataset, load_text_table

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
