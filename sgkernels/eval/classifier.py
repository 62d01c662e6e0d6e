"""A small Fashion-MNIST CNN whose feature space gives the classifier metrics (CFD, KID, PRDC)
and whose predictions give class-agreement accuracy of conditional samples.

Architecture (28x28 grey, pixels p in 0..255 mapped to p/127.5 - 1):
    conv3x3(1->16) BN ReLU maxpool2 -> conv3x3(16->32) BN ReLU maxpool2 -> fc(1568->128) ReLU
    = the 128-d feature, -> fc(128->10) logits.
Training: Adam (lr 2e-3, cosine decay to 0, weight decay 1e-4 decoupled), batch 128, EPOCHS
epochs on the 60k training images, cross-entropy. Deterministic for a given seed: the
initialisation comes from torch's RNG seeded inside a forked RNG state, the shuffles from a
seeded torch.Generator (on one machine and thread count results are bitwise reproducible).
The trained weights are cached as <cache>/classifier/<ARCH>-seed<seed>.pt (never downloaded);
the first use trains them (a few minutes on a CPU) and records the test accuracy.
"""
from __future__ import annotations

import hashlib
import math
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from sgkernels.runtime.files import save_atomic

from .cache import cache_dir
from .images import check_images, fit_to, load_reference, to_gray

ARCH = "fmnist-cnn-v1"
EPOCHS = 5
SIZE = 28


class FashionCNN(nn.Module):
    def __init__(self, num_classes: int = 10, feature_dim: int = 128):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(1, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16)
        self.conv2, self.bn2 = nn.Conv2d(16, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32)
        self.fc = nn.Linear(32 * 7 * 7, feature_dim)
        self.head = nn.Linear(feature_dim, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 2)
        x = F.max_pool2d(F.relu(self.bn2(self.conv2(x))), 2)
        return F.relu(self.fc(x.flatten(1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def classifier_input(images: np.ndarray) -> torch.Tensor:
    """uint8 [N, H, W, C] -> float32 [N, 1, 28, 28] in [-1, 1] (grey, cropped/resized to 28)."""
    x = fit_to(to_gray(check_images(images)), SIZE)
    return torch.from_numpy(x).permute(0, 3, 1, 2).float().div_(127.5).sub_(1.0)


def train_classifier(images: np.ndarray, labels: np.ndarray, epochs: int = EPOCHS,
                     seed: int = 0, batch_size: int = 128, lr: float = 2e-3,
                     log=None) -> FashionCNN:
    """Train FashionCNN on uint8 images [N, H, W, C] with labels [N] (deterministic per seed)."""
    x, y = classifier_input(images), torch.as_tensor(np.asarray(labels), dtype=torch.long)
    if y.shape != (x.shape[0],) or int(y.min()) < 0 or int(y.max()) > 9:
        raise ValueError(f"labels: expected {x.shape[0]} class ids in 0..9, got shape "
                         f"{tuple(y.shape)}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = FashionCNN()
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    steps = epochs * math.ceil(x.shape[0] / batch_size)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: 0.5 * (1 + math.cos(math.pi * s / steps)))
    model.train()
    for epoch in range(epochs):
        perm = torch.randperm(x.shape[0], generator=gen)
        total = 0.0
        for s in range(0, x.shape[0], batch_size):
            idx = perm[s:s + batch_size]
            loss = F.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach()) * idx.shape[0]
        if log is not None:
            log(f"classifier epoch {epoch + 1}/{epochs}: loss {total / x.shape[0]:.4f}")
    return model.eval()


@torch.inference_mode()
def _batched(fn, x: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
    return torch.cat([fn(x[s:s + batch_size]) for s in range(0, x.shape[0], batch_size)])


def accuracy(model: FashionCNN, images: np.ndarray, labels: np.ndarray) -> float:
    pred = _batched(model, classifier_input(images)).argmax(1).numpy()
    return float((pred == np.asarray(labels)).mean())


def _weights_sha1(model: nn.Module) -> str:
    h = hashlib.sha1()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def load_classifier(seed: int = 0, log=print) -> tuple[FashionCNN, dict]:
    """The cached classifier (trained on Fashion-MNIST train on first use) and its record
    {"arch", "seed", "epochs", "test_accuracy", "train_seconds"}."""
    path = cache_dir("classifier") / f"{ARCH}-seed{seed}.pt"
    if path.exists():
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        model = FashionCNN()
        model.load_state_dict(ckpt["model"])
        return model.eval(), ckpt["info"]
    if log is not None:
        log(f"training the {ARCH} classifier on Fashion-MNIST train (seed {seed}); cached at "
            f"{path}")
    train, test = load_reference("fashion-mnist-train"), load_reference("fashion-mnist-test")
    start = time.perf_counter()
    model = train_classifier(train.images, train.labels, seed=seed, log=log)
    info = {"arch": ARCH, "seed": seed, "epochs": EPOCHS,
            "train_seconds": round(time.perf_counter() - start, 1),
            "test_accuracy": accuracy(model, test.images, test.labels)}
    if log is not None:
        log(f"classifier test accuracy {info['test_accuracy']:.4f} after "
            f"{info['train_seconds']} s")
    save_atomic({"model": model.state_dict(), "info": info}, path)
    return model, info


class ClassifierFeatures:
    """Callable uint8 [N, H, W, C] -> float32 [N, 128] features; `predict` gives class ids."""

    name = "classifier"

    def __init__(self, model: FashionCNN | None = None, seed: int = 0, log=print):
        if model is None:
            model, self.info = load_classifier(seed, log)
        else:
            self.info = {"arch": ARCH}
        self.model = model.eval()
        self.key = f"{ARCH}|{_weights_sha1(self.model)}"

    def __call__(self, images: np.ndarray) -> np.ndarray:
        return _batched(self.model.features, classifier_input(images)).numpy()

    def predict(self, images: np.ndarray) -> np.ndarray:
        return _batched(self.model, classifier_input(images)).argmax(1).numpy()
