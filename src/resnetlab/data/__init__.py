"""Data: the IDX reader, Fashion-MNIST on disk, its download, and the device-resident loader."""

from .download import download_fashion_mnist
from .fashion_mnist import CLASS_NAMES, ImageSet, load_fashion_mnist, load_split, resolve_data_dir, split_train_val
from .idx import DataError, read_idx
from .loader import Augment, DeviceLoader

__all__ = [
    "Augment", "CLASS_NAMES", "DataError", "DeviceLoader", "ImageSet", "download_fashion_mnist",
    "load_fashion_mnist", "load_split", "read_idx", "resolve_data_dir", "split_train_val",
]
