"""Data loaders and federated partitioners: built-in digits, MedMNIST, image folders, DICOM
folders with a labels CSV, text tables."""

from fedaug.data.images import (
    BUILTIN_NAMES,
    IMAGE_EXTENSIONS,
    ImageDataset,
    UnreadableImageError,
    load_dicom_folder,
    load_digits_builtin,
    load_image_folder,
    load_image_source,
    load_medmnist,
    read_image,
)
from fedaug.data.partition import (
    PARTITION_SCHEMES,
    label_histogram,
    partition,
    partition_dirichlet,
    partition_iid,
    partition_quantity,
)
from fedaug.data.text import (
    TextDataset,
    TextTable,
    encode_labels,
    load_text_table,
    read_text_table,
)

__all__ = [
    "BUILTIN_NAMES",
    "IMAGE_EXTENSIONS",
    "PARTITION_SCHEMES",
    "ImageDataset",
    "TextDataset",
    "TextTable",
    "UnreadableImageError",
    "encode_labels",
    "label_histogram",
    "load_digits_builtin",
    "load_dicom_folder",
    "load_image_folder",
    "load_image_source",
    "load_medmnist",
    "load_text_table",
    "partition",
    "partition_dirichlet",
    "partition_iid",
    "partition_quantity",
    "read_image",
    "read_text_table",
]
