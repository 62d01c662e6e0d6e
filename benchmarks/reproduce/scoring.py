"""Scoring generated sets against Fashion-MNIST test images with sgkernels.eval.

Sweep criterion: the classifier-feature Fréchet distance (cfd), no bootstrap. Final metrics:
cfd, KID and precision/recall/density/coverage in the classifier's space, class agreement, with
bootstrap intervals (normal intervals around the full-set value, docs/eval.md); Inception FID
separately, on the first `num_fid` samples of the headline methods.

The full run uses the cached evaluation classifier (`sgkernels.eval.classifier`, trained once
on the 60k training images) and the 10k test images as reference. `--quick` uses a stand-in
classifier (1 epoch on 2,000 training images, cached in the run folder) and 500 test images, so
that a smoke run needs no 20-minute classifier training; its numbers only check the plumbing.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from sgkernels.eval import ImageSet, evaluate, load_reference
from sgkernels.eval.cache import feature_stats
from sgkernels.eval.classifier import ClassifierFeatures, FashionCNN, train_classifier
from sgkernels.runtime.files import save_atomic

FINAL_METRICS = "cfd,kid,prdc,acc"
FID_REPLICATES = 20      # bootstrap cap for FID: a 2048-d Fréchet distance costs ~1.5 s per core
QUICK_TRAIN, QUICK_REF = 2000, 500


def _quick_classifier(out: Path) -> ClassifierFeatures:
    path = Path(out) / "quick_classifier.pt"
    model = FashionCNN()
    if path.exists():
        model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    else:
        train = load_reference("fashion-mnist-train").head(QUICK_TRAIN)
        model = train_classifier(train.images, train.labels, epochs=1, seed=0)
        save_atomic(model.state_dict(), path)
    return ClassifierFeatures(model=model)


class DigestCached:
    """A feature extractor whose outputs are cached per image set (keyed by the extractor and
    the pixels, sgkernels.eval.cache): the FID stage and the paired comparison share one pass."""

    def __init__(self, extractor):
        self.extractor, self.name, self.key = extractor, extractor.name, extractor.key

    def __call__(self, images: np.ndarray) -> np.ndarray:
        digest = ImageSet(images, None, self.name).digest()
        return feature_stats(self.extractor, images, digest)["features"]


class Scorer:
    """Holds the classifier, the Inception network (loaded on first use) and the reference set;
    scores uint8 image sets."""

    def __init__(self, out: Path, quick: bool, device: str, log=print):
        self.log, self.device, self.quick = log, device, quick
        reference = load_reference("fashion-mnist-test")
        self.reference = reference.head(QUICK_REF) if quick else reference
        self.classifier = _quick_classifier(out) if quick else ClassifierFeatures(log=log)
        self._inception = None

    @property
    def inception(self) -> DigestCached:
        """Inception features, cached per image set; FileNotFoundError without the weights."""
        if self._inception is None:
            from sgkernels.eval.inception import InceptionFeatures
            self._inception = DigestCached(InceptionFeatures(device=self.device))
        return self._inception

    def _evaluate(self, images, labels, name, metrics, bootstrap, **extra) -> dict:
        return evaluate(ImageSet(images, labels, name), self.reference, metrics=metrics,
                        bootstrap=bootstrap, classifier=self.classifier, device=self.device,
                        log=lambda *_: None, **extra)

    def sweep(self, images: np.ndarray, labels: np.ndarray, name: str) -> dict:
        """{"cfd", "acc"} values (no intervals)."""
        result = self._evaluate(images, labels, name, "cfd,acc", 0)
        return {m: v["value"] for m, v in result["metrics"].items()}

    def final(self, images: np.ndarray, labels: np.ndarray, name: str, bootstrap: int) -> dict:
        """evaluate()'s {"metrics": {...}, "info": {...}} for FINAL_METRICS with intervals;
        KID subsets of at most 1000 (fewer when N is smaller)."""
        return self._evaluate(images, labels, name, FINAL_METRICS, bootstrap,
                              kid_subsets=20 if self.quick else 100)

    def fid(self, images: np.ndarray, labels: np.ndarray, name: str, bootstrap: int) -> dict:
        """Inception FID with an interval (at most FID_REPLICATES replicates); raises
        FileNotFoundError without the weights."""
        return self._evaluate(images, labels, name, "fid", min(bootstrap, FID_REPLICATES),
                              inception=self.inception)
