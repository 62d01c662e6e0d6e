"""Flow-matching training loop: AdamW, optional grad clipping, bf16 autocast on CUDA, EMA,
atomic checkpoints with exact resume, data-parallel ranks, logs and sample grids.

One step at global step s (0-based), on each of k ranks:
    positions = s * B + rank * B/k + [0, B/k)            (draws.rank_positions)
    x, c = data[order(positions)]; draws = f(seed, positions)
    y, text = condition(c, draws.drop, positions)        (conditioning.py: labels or captions)
    loss = objective.batch_loss(...); backward (DDP averages gradients over ranks)
    clip ||g|| to grad_clip (if > 0); lr_s = lr * min(1, (s + 1) / warmup); AdamW step; EMA update
Everything random is a function of (seed, positions), so the update sequence depends only on the
arguments in args.RESUME_KEYS, the initial weights and the step: a resumed run continues exactly.
Class-conditional presets train on labelled data, text-conditioned (T2I) presets on caption data
(data.CAPTION_DATASETS), through the same loop.

Output folder: args.json, log.jsonl, log.csv, loss.png, samples/<step>.png,
checkpoints/<step>.pt and checkpoints/latest.pt.
"""
import json
import math
import time
from contextlib import nullcontext
from pathlib import Path

import torch
from torch import nn

from sgkernels.model.tokens import to_device

from . import distributed as D
from .args import RESUME_KEYS, TrainArgs
from .checkpoint import link_atomic, load_checkpoint, rng_state, save_atomic, set_rng_state
from .conditioning import CaptionCondition, LabelCondition, feature_cache
from .data import CAPTION_DATASETS, load_dataset
from .draws import GlobalOrder, draw_samples, rank_positions
from .ema import EMA
from .grid import generate, save_grid
from .logger import TrainLog, plot_loss
from .objective import batch_loss, num_route_draws


def _model_from_config(config_dict: dict) -> nn.Module:
    from sgkernels.model import ModelConfig, RoutedDiT

    return RoutedDiT(ModelConfig.from_dict(config_dict))


def build_model(args: TrainArgs) -> nn.Module:
    """RoutedDiT from the preset, or with the finetune checkpoint's config."""
    if args.finetune:
        return _model_from_config(load_checkpoint(args.finetune)["args"]["model_config"])
    from sgkernels import presets
    from sgkernels.model import RoutedDiT

    return RoutedDiT(apply_overrides(presets.get(args.model), args.model_set))


def apply_overrides(config, items):
    """config.replace(field=value) for "field=value" items; values parse as JSON, else str."""
    changes = {}
    for item in items:
        key, _, text = item.partition("=")
        if key not in config.to_dict():
            raise ValueError(f"model_set: {key!r} is not a ModelConfig field")
        try:
            changes[key] = json.loads(text)
        except json.JSONDecodeError:
            changes[key] = text
    if "routes" in changes:
        changes["routes"] = tuple(tuple(r) for r in changes["routes"])
    return config.replace(**changes)


def lr_at(args: TrainArgs, step: int) -> float:
    scale = min(1.0, (step + 1) / args.warmup) if args.warmup else 1.0
    return args.effective_lr * scale


def _check_resume(saved: dict, args: TrainArgs, config_dict: dict) -> None:
    now = args.to_dict() | {"lr": args.effective_lr}
    then = dict(saved["train"]) | {"lr": saved["train"]["effective_lr"]}
    diff = [k for k in RESUME_KEYS if then.get(k) != now.get(k)]
    if saved["model_config"] != config_dict:
        diff.append("model_config")
    if diff:
        raise ValueError(f"resume: arguments differ from the checkpoint's: {diff}; an exact resume "
                         "needs them unchanged (use --finetune to start a new run from weights)")


class Trainer:
    """Owns model, EMA, optimiser, data and output folder of one run; `run()` trains."""

    def __init__(self, args: TrainArgs, model: nn.Module | None = None):
        self.args = args
        self.info = D.setup(args.device)
        self.out = Path(args.out)
        torch.manual_seed(args.seed)
        model = build_model(args) if model is None else model
        if args.finetune:
            model.load_state_dict(load_checkpoint(args.finetune)[args.finetune_weights])
        self.config = model.config
        self.config_dict = self.config.to_dict()
        self.model = model.to(self.info.device).train()
        self.ema = EMA(self.model, args.ema_decay, args.ema_warmup)
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=args.effective_lr,
                                     betas=args.betas, weight_decay=args.weight_decay)
        self.step = 0
        self.vae = None
        if args.vae:
            from .vae import load_vae

            self.vae = load_vae(args.vae, self.info.device)
        self._load_data()
        if args.resume:
            self._resume()
        self.ddp = self.model
        if self.info.enabled:
            ids = [self.info.device.index] if self.info.device.type == "cuda" else None
            # a dense forward of a MaskDiT model leaves its mask token without a gradient
            unused = self.config.maskdit and args.routing == "off"
            self.ddp = nn.parallel.DistributedDataParallel(self.model, device_ids=ids,
                                                           find_unused_parameters=unused)

    # -- set-up ---------------------------------------------------------------------------
    def _load_data(self) -> None:
        args, cfg = self.args, self.config
        factor = 1 if self.vae is None else 2 ** (len(self.vae.config.block_out_channels) - 1)
        size = args.image_size or cfg.input_size * factor
        channels = 3 if self.vae is not None else cfg.in_channels
        self.data = load_dataset(args.data, size, args.data_path, channels, args.latent_scale)
        captioned = args.data in CAPTION_DATASETS
        if captioned != cfg.text_conditioned:
            raise ValueError(f"data: {args.data!r} is {'' if captioned else 'not '}captioned, the "
                             f"model is {'' if cfg.text_conditioned else 'not '}text-conditioned "
                             f"(caption data: {', '.join(CAPTION_DATASETS)})")
        if self.data.num_classes > cfg.num_classes:
            raise ValueError(f"data: {args.data!r} has {self.data.num_classes} classes, the model "
                             f"{cfg.num_classes}")
        if self.vae is None and tuple(self.data.shape) != (cfg.in_channels, cfg.input_size,
                                                           cfg.input_size):
            raise ValueError(f"data: samples of shape {tuple(self.data.shape)} do not fit the model "
                             f"input [{cfg.in_channels}, {cfg.input_size}, {cfg.input_size}]")
        self.order = GlobalOrder(len(self.data), args.seed)
        self.condition = (CaptionCondition(self.data, self._feature_cache(), args.seed)
                          if captioned else LabelCondition())

    def _feature_cache(self):
        """Rank 0 builds OUT/text_features.pt (if needed) before the other ranks read it."""
        from sgkernels.text import DEFAULT_ENCODER

        encoder, captions = self.args.encoder or DEFAULT_ENCODER, self.data.all_captions()
        cache = None
        if self.info.is_main:
            cache = feature_cache(self.out, encoder, self.config, captions, self.info.device)
        D.barrier(self.info)
        if cache is None:
            cache = feature_cache(self.out, encoder, self.config, captions, self.info.device)
        return cache

    @property
    def ckpt_dir(self) -> Path:
        return self.out / "checkpoints"

    def _resume(self) -> None:
        # on CPU: RNG states must stay CPU tensors; load_state_dict moves weights to the device
        ckpt = load_checkpoint(self.ckpt_dir / "latest.pt", map_location="cpu")
        _check_resume(ckpt["args"], self.args, self.config_dict)
        self.model.load_state_dict(ckpt["model"])
        self.ema.load_state_dict(ckpt["ema"])
        self.opt.load_state_dict(ckpt["opt"])
        self.step = int(ckpt["step"])
        set_rng_state(ckpt["args"]["rng"])

    # -- one step ---------------------------------------------------------------------------
    def batch(self, step: int):
        """This rank's (x, y, text, draws) at `step`, on the device (y or text None).

        Built on the host and copied with tokens.to_device (pinned, non_blocking on CUDA), so
        preparing the next batch does not wait for the GPU to finish the previous step."""
        args, cfg, dev = self.args, self.config, self.info.device
        positions = rank_positions(step, args.batch, self.info.rank, self.info.world_size)
        x, c = self.data.get(self.order(positions))
        x = to_device(x, dev)
        if self.vae is not None:
            from .vae import encode

            x = encode(self.vae, x, args.latent_scale, args.seed, positions)
        draws = draw_samples(args.seed, positions, x.shape[1:], num_route_draws(cfg),
                             cfg.num_tokens, args.t_sampling, args.label_dropout, args.t_loc,
                             args.t_scale)
        y, text = self.condition(c, draws.drop, positions, dev)
        return x, y, text, draws.to(dev)

    def train_step(self) -> torch.Tensor:
        """One optimizer step; returns the detached loss (not read back: the caller decides
        when to sync, e.g. the logger every log_every steps)."""
        args, dev = self.args, self.info.device
        x, y, text, draws = self.batch(self.step)
        amp = (torch.autocast("cuda", dtype=torch.bfloat16)
               if dev.type == "cuda" and args.amp else nullcontext())
        with amp:
            loss = batch_loss(self.ddp, self.config, x, y, draws, args.routing, args.maskdit_lambda,
                              text)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        if args.grad_clip > 0:
            nn.utils.clip_grad_norm_(self.model.parameters(), args.grad_clip)
        for group in self.opt.param_groups:
            group["lr"] = lr_at(args, self.step)
        self.opt.step()
        self.ema.update(self.model, self.step)
        self.step += 1
        return loss.detach()

    # -- outputs ----------------------------------------------------------------------------
    def save_checkpoint(self) -> Path | None:
        if not self.info.is_main:
            return None
        train = self.args.to_dict() | {"effective_lr": self.args.effective_lr}
        ckpt = {"model": self.model.state_dict(), "ema": self.ema.state_dict(),
                "opt": self.opt.state_dict(), "step": self.step,
                "args": {"model_config": self.config_dict, "train": train, "rng": rng_state(),
                         "world_size": self.info.world_size}}
        if self.condition.meta is not None:       # the encoder settings sampling must reuse
            ckpt["args"]["text"] = self.condition.meta
        path = save_atomic(ckpt, self.ckpt_dir / f"{self.step:07d}.pt")
        link_atomic(path, self.ckpt_dir / "latest.pt")
        return path

    def save_samples(self) -> Path | None:
        if not self.info.is_main:
            return None
        args, cfg = self.args, self.config
        shape = (cfg.in_channels, cfg.input_size, cfg.input_size)
        text = self.condition.grid_text(args.sample_count, self.info.device)
        images = generate(self.ema.model, shape, cfg.num_classes, args.sample_count,
                          args.sample_steps, args.seed + 12345, self.info.device, text)
        if self.vae is not None:
            from .vae import decode

            images = decode(self.vae, images, args.latent_scale)
        upscale = max(1, 64 // images.shape[-1])
        return save_grid(images, self.out / "samples" / f"{self.step:07d}.png",
                         ncol=min(cfg.num_classes or 8, 10), upscale=upscale)

    def run(self) -> dict:
        """Train to args.steps; returns {"step", "loss", "wall_s"} (loss of the last log row)."""
        args, info = self.args, self.info
        if info.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            (self.out / "args.json").write_text(json.dumps(
                {"train": args.to_dict(), "model_config": self.config_dict,
                 "world_size": info.world_size}, indent=2))
        log = TrainLog(self.out, args.steps, self.step, info.is_main, args.progress)
        t0, window, last = time.perf_counter(), [], float("nan")
        try:
            while self.step < args.steps:
                window.append(self.train_step())
                log.step()
                end = self.step == args.steps or self._out_of_time(t0)
                if end or (args.log_every and self.step % args.log_every == 0):
                    last = D.mean_scalar(torch.stack(window).mean().item(), info)
                    if not math.isfinite(last):
                        raise FloatingPointError(f"loss is {last} at step {self.step}")
                    log.row(self.step, last, lr_at(args, self.step - 1), args.batch)
                    window = []
                ckpt = end or (args.ckpt_every and self.step % args.ckpt_every == 0)
                grid = end or (args.sample_every and self.step % args.sample_every == 0)
                if ckpt:
                    self.save_checkpoint()
                if grid:
                    self.save_samples()
                if ckpt or grid:  # other ranks wait for rank 0's writes
                    D.barrier(info)
                if end:
                    break
        finally:
            log.close()
        if info.is_main and log.jsonl.exists() and args.steps > 0:
            plot_loss(log.jsonl, self.out / "loss.png")
        return {"step": self.step, "loss": last, "wall_s": time.perf_counter() - t0}

    def _out_of_time(self, t0: float) -> bool:
        if not self.args.time_limit:
            return False
        over = time.perf_counter() - t0 > 60.0 * self.args.time_limit
        return D.any_rank(over, self.info)

    def close(self) -> None:
        D.cleanup(self.info)


def train(args: TrainArgs, model: nn.Module | None = None) -> dict:
    trainer = Trainer(args, model)
    try:
        return trainer.run()
    finally:
        trainer.close()
