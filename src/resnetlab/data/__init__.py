"""Data: Fashion-MNIST's IDX files and class folders opened one way (``open_dataset``), and the device-resident loader."""

from .download import download_fashion_mnist
from .fashion_mnist import CLASS_NAMES, load_fashion_mnist, load_split, resolve_data_dir, split_train_val
from .idx import read_idx
from .imageset import DataError, ImageSet
from .loader import Augment, DeviceLoader
from .open import Splits, dataset_kind, open_dataset

__all__ = [
    "Augment", "CLASS_NAMES", "DataError", "DeviceLoader", "ImageSet", "Splits", "dataset_kind", "download_fashion_mnist",
    "load_fashion_mnist", "load_split", "open_dataset", "read_idx", "resolve_data_dir", "split_train_val",
]
