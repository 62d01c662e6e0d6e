"""Evaluation of generated images: FID (TF Inception-v3 weights), Fréchet distance / KID / PRDC in
the feature space of a small Fashion-MNIST classifier, class-agreement accuracy, and bootstrap
confidence intervals. `python -m sgkernels eval --help` is the command line; docs/eval.md the
guide. Submodules are imported on use (the Inception network and the classifier load lazily)."""
from .bootstrap import bootstrap
from .evaluate import METRICS, evaluate
from .frechet import FrechetReference, frechet_distance, gaussian_stats
from .images import ImageSet, load_images, load_reference
from .kid import kid
from .prdc import PRDCResampler, prdc

__all__ = ["METRICS", "FrechetReference", "ImageSet", "PRDCResampler", "bootstrap", "evaluate",
           "frechet_distance", "gaussian_stats", "kid", "load_images", "load_reference", "prdc"]
