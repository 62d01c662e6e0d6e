"""Dataset readers shared by training and evaluation: Fashion-MNIST, sklearn digits, image
folders, precomputed latents (images.py), caption datasets for text-to-image training
(captions.py), and `load_dataset` by name (registry.py). This package sits below
sgkernels.train and sgkernels.eval and imports neither (sgkernels/layers.py)."""
from .captions import (LEVELS, FashionMNISTCaptions, JsonlCaptions, fashion_mnist_captions,
                       image_attributes, pick_captions)
from .images import (FASHION_MNIST_CLASSES, FASHION_MNIST_DIR, IMAGE_SUFFIXES, ImageFolder,
                     TensorData, digits, fashion_mnist, fit_size, latents, load_image, read_idx)
from .registry import CAPTION_DATASETS, DATASETS, load_dataset

__all__ = ["CAPTION_DATASETS", "DATASETS", "FASHION_MNIST_CLASSES", "FASHION_MNIST_DIR",
           "IMAGE_SUFFIXES", "LEVELS", "FashionMNISTCaptions", "ImageFolder", "JsonlCaptions",
           "TensorData", "digits", "fashion_mnist", "fashion_mnist_captions", "fit_size",
           "image_attributes", "latents", "load_dataset", "load_image", "pick_captions",
           "read_idx"]
