"""Data: datasets, image folders, standard files, transforms, ImageNet preprocessing, batching."""

from cnnkit.data.batches import Batches, batches, num_batches
from cnnkit.data.dataset import ArrayDataset, Dataset, Subset, labels_of, split, subset, to_arrays
from cnnkit.data.digits import digits
from cnnkit.data.files import cifar10, cifar100, mnist, read_idx
from cnnkit.data.imagenet import imagenet_classes
from cnnkit.data.images import IMAGE_EXTENSIONS, ImageFolder, load_image
from cnnkit.data.transforms import (
    CenterCrop,
    Compose,
    ImagenetPreprocess,
    Normalize,
    RandomCrop,
    RandomHorizontalFlip,
    Resize,
    ResizeShorter,
    apply_transform,
    imagenet_eval_transform,
    imagenet_preprocess,
    resize,
)

__all__ = [
    "ArrayDataset", "Batches", "CenterCrop", "Compose", "Dataset", "IMAGE_EXTENSIONS",
    "ImageFolder", "ImagenetPreprocess", "Normalize", "RandomCrop", "RandomHorizontalFlip",
    "Resize", "ResizeShorter", "Subset", "apply_transform", "batches", "cifar10", "cifar100",
    "digits", "imagenet_classes", "imagenet_eval_transform", "imagenet_preprocess", "labels_of", "load_image",
    "mnist", "num_batches", "read_idx", "resize", "split", "subset", "to_arrays",
]
