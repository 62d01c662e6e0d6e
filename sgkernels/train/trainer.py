"""Flow-matching training loop: AdamW, optional grad clipping, bf16 autocast on CUDA, EMA,
atomic checkpoints with exact resume, data-parallel ranks, logs and sample grids.

One step at global step s (0-based), on each of k ranks:
    positions = s * B + rank * B/k + [0, B/k)            (draws.rank_positions)
    x, c = data[order(positions)]; draws = f(seed, positions)
    y, text = condition(c, draws.drop, positions)        (conditioning.py: labels or captions)
    loss = objective.batch_loss(...); backward (DDP averages gradients over ranks)
    clip ||g|| to grad_clip (if > 0); lr_s = lr * min(1, (s + 1) / warmup); AdamW step; EMA update
AdamW is the fused implementation (one kernel per parameter group and device; it takes the
found_inf flag with which --on-nonfinite skip skips an update without a host sync).
Everything random is a function of (seed, positions), so the update sequence depends only on the
arguments in args.RESUME_KEYS, the initial weights and the step: a resumed run continues exactly.
Class-conditional presets train on labelled data, text-conditioned (T2I) presets on caption data
(data.CAPTION_DATASETS), through the same loop.

Output folder: args.json, log.jsonl, log.csv, loss.png, samples/<step>.png,
checkpoints/<step>.pt and checkpoints/latest.pt (--parallel fsdp: sharded checkpoint directories
checkpoints/<step>/ and checkpoints/latest, sharded_checkpoint.py).

Parallelism: --parallel ddp replicates the model and all-reduces gradients (DDP, buckets as views
of the gradients); --parallel fsdp shards parameters, gradients, AdamW states and EMA (fsdp.py),
also in one process without torchrun. Either way the ranks split the global batch, so a k-rank
step equals the 1-process step. --activation-checkpointing blocks recomputes each block in
backward (same gradients). --compile compiles each block (RoutedDiT.compile_blocks: dynamic token
counts, one graph per block kind), after the EMA copy is made (the EMA model stays eager) and,
under FSDP, before the blocks are sharded.

Faults (faults.py): a non-finite loss or gradient stops the run with FloatingPointError naming the
step, before any checkpoint of the bad state (or skips the update: --on-nonfinite skip);
SIGTERM / SIGINT stop all ranks at the next step boundary with a checkpoint; a failed checkpoint
write (full disk) raises OSError naming the file and leaves the previous checkpoint intact.
"""
import json
import time
from contextlib import nullcontext
from pathlib import Path

import torch
from torch import nn

from sgkernels.data import CAPTION_DATASETS, load_dataset
from sgkernels.model.checkpoint import check_state_dict, make_checkpoint, read_checkpoint
from sgkernels.model.tokens import to_device
from sgkernels.runtime.files import (link_atomic, os_error, reason, remove_stale_temps,
                                     save_atomic, write_text_atomic)
from sgkernels.runtime.images import save_grid

from . import distributed as D
from . import fsdp
from . import sharded_checkpoint as sharded
from .args import RESUME_KEYS, TrainArgs
from .checkpoint import rng_state, set_rng_state
from .conditioning import CaptionCondition, LabelCondition, feature_cache
from .draws import GlobalOrder, draw_samples, rank_positions
from .ema import EMA
from .faults import NonFiniteGuard, StopSignals, nonfinite_message, signal_name
from .grid import generate
from .logger import TrainLog, plot_loss
from .objective import batch_loss, num_route_draws


def _model_from_config(config_dict: dict) -> nn.Module:
    from sgkernels.model import ModelConfig, RoutedDiT

    return RoutedDiT(ModelConfig.from_dict(config_dict))


def build_model(args: TrainArgs) -> nn.Module:
    """RoutedDiT from the preset, or with the finetune checkpoint's config."""
    if args.finetune:
        return _model_from_config(read_checkpoint(args.finetune)["args"]["model_config"])
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
            state = read_checkpoint(args.finetune)[args.finetune_weights]
            check_state_dict(model, state, args.finetune, args.finetune_weights)
            model.load_state_dict(state)
        self.config = model.config
        self.config_dict = self.config.to_dict()
        self.model = model.to(self.info.device).train()
        self.model.set_activation_checkpointing(args.activation_checkpointing)
        self.fsdp = args.parallel == "fsdp"
        self.own_group = False
        if self.fsdp:
            self.own_group = fsdp.single_process_group(self.info.device)
            bf16 = self.info.device.type == "cuda" and args.amp
            self._compile()
            fsdp.shard(self.model, bf16)
            self.ema = fsdp.ShardedEMA(self.model, args.ema_decay, args.ema_warmup)
        else:
            self.ema = EMA(self.model, args.ema_decay, args.ema_warmup)   # copies eager blocks
            self._compile()
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=args.effective_lr,
                                     betas=args.betas, weight_decay=args.weight_decay, fused=True)
        self.step = 0
        self.last_ckpt = None         # (path, step) of the newest complete checkpoint
        skipped = 0
        self.vae = None
        if args.vae:
            from .vae import load_vae

            self.vae = load_vae(args.vae, self.info.device)
        self._load_data()
        if args.resume:
            skipped = self._resume()
        self.guard = NonFiniteGuard(args.on_nonfinite, self.info, self.step, skipped)
        self.ddp = self.model
        if self.info.enabled and not self.fsdp:
            ids = [self.info.device.index] if self.info.device.type == "cuda" else None
            # a dense forward of a MaskDiT model leaves its mask token without a gradient
            unused = self.config.maskdit and args.routing == "off"
            self.ddp = nn.parallel.DistributedDataParallel(self.model, device_ids=ids,
                                                           find_unused_parameters=unused,
                                                           gradient_as_bucket_view=True)

    # -- set-up ---------------------------------------------------------------------------
    def _compile(self) -> None:
        if self.args.compile:
            self.model.compile_blocks()

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
            raise ValueError(f"data: samples of shape {tuple(self.data.shape)} do not fit the "
                             f"model input [{cfg.in_channels}, {cfg.input_size}, "
                             f"{cfg.input_size}]")
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

    def _resume(self) -> int:
        """Continue from the newest checkpoint of OUT/checkpoints: latest.pt (single file) or
        the sharded `latest` (FSDP runs); an FSDP run also continues a single-file one. Returns
        the skipped-step count it holds."""
        single = self.ckpt_dir / "latest.pt"
        shards = sharded.latest(self.ckpt_dir)
        # on CPU: RNG states stay CPU tensors; load_state_dict moves weights to the device
        ckpt = read_checkpoint(single, map_location="cpu") if single.exists() else None
        use_shards = shards is not None and (
            ckpt is None or int(sharded.read_meta(shards)["step"]) > int(ckpt["step"]))
        if use_shards and not self.fsdp:
            raise ValueError(f"resume: the newest checkpoint of {self.out} is sharded ({shards}, "
                             f"written with --parallel fsdp): resume with --parallel fsdp, or "
                             f"make a single file with python -m sgkernels export {shards}")
        if use_shards:
            meta = sharded.read_meta(shards)
            _check_resume(meta["args"], self.args, self.config_dict)
            sharded.load(shards, self.model, self.opt, self.ema)
            args, self.step, path = meta["args"], int(meta["step"]), shards
        else:
            if ckpt is None:
                ckpt = read_checkpoint(single)       # raises the missing-checkpoint error
            _check_resume(ckpt["args"], self.args, self.config_dict)
            if self.fsdp:
                sharded.load_full(ckpt, self.model, self.opt, self.ema)
            else:
                self.model.load_state_dict(ckpt["model"])
                self.ema.load_state_dict(ckpt["ema"])
                self.opt.load_state_dict(ckpt["opt"])
            args, self.step, path = ckpt["args"], int(ckpt["step"]), single
        self.last_ckpt = (path, self.step)
        set_rng_state(args["rng"])
        return int(args.get("skipped_steps", 0))

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
        self.update(loss.detach())
        return loss.detach()

    def update(self, loss: torch.Tensor) -> None:
        """After backward: grad norm (and clipping), the non-finite guard, AdamW, EMA, step + 1.
        Reads nothing back to the host (faults.py): the norm is the one clipping computes,
        skip mode passes found_inf to fused AdamW and the EMA as a device tensor."""
        args = self.args
        params = [p for p in self.model.parameters() if p.grad is not None]
        norm = nn.utils.get_total_norm([p.grad for p in params], error_if_nonfinite=False)
        if args.grad_clip > 0:  # = clip_grad_norm_, which is these two calls
            nn.utils.clip_grads_with_norm_(params, args.grad_clip, norm)
        if hasattr(norm, "full_tensor"):     # FSDP: the norm over every rank's shards
            norm = norm.full_tensor()
        found_inf = self.guard.record(loss, norm)
        for group in self.opt.param_groups:
            group["lr"] = lr_at(args, self.step)
        if found_inf is None:
            self.opt.step()
        else:
            self.opt.found_inf = found_inf   # read by fused AdamW (as torch.amp.GradScaler does)
            try:
                self.opt.step()
            finally:
                del self.opt.found_inf
        self.ema.update(self.model, self.step, skip=found_inf)
        self.step += 1

    # -- outputs ----------------------------------------------------------------------------
    def _checkpoint_args(self) -> dict:
        train = self.args.to_dict() | {"effective_lr": self.args.effective_lr}
        args = {"model_config": self.config_dict, "train": train, "rng": rng_state(),
                "world_size": self.info.world_size, "skipped_steps": self.guard.skipped_total}
        if self.condition.meta is not None:       # the encoder settings sampling must reuse
            args["text"] = self.condition.meta
        return args

    def save_checkpoint(self) -> Path | None:
        """Rank 0 writes checkpoints/<step>.pt and points latest.pt at it (FSDP: every rank
        writes its shards of checkpoints/<step>/). A failed write (full disk, ...) raises
        OSError naming the file; the previous checkpoint stays intact."""
        path = self.ckpt_dir / f"{self.step:07d}{'' if self.fsdp else '.pt'}"
        if not self.info.is_main and not self.fsdp:
            self.last_ckpt = (path, self.step)
            return None
        try:
            if self.fsdp:
                sharded.save(self.ckpt_dir, self.step, self.model, self.opt, self.ema,
                             self._checkpoint_args())
            else:
                ckpt = make_checkpoint(model=self.model.state_dict(), ema=self.ema.state_dict(),
                                       opt=self.opt.state_dict(), step=self.step,
                                       args=self._checkpoint_args())
                save_atomic(ckpt, path)
                link_atomic(path, self.ckpt_dir / "latest.pt")
        except OSError as e:
            before = (f"the previous checkpoint {self.last_ckpt[0]} (step {self.last_ckpt[1]}) "
                      "is intact" if self.last_ckpt else "no earlier checkpoint of this run exists")
            raise os_error(e, f"checkpoint of step {self.step} not written to {path}: "
                           f"{reason(e)}; {before} and no temporary file is left; free space "
                           "and continue with --resume") from e
        self.last_ckpt = (path, self.step)
        return path

    def _ema_model(self) -> nn.Module | None:
        """The EMA model to sample from on rank 0 (FSDP: gathered from every rank's shards)."""
        if not self.fsdp:
            return self.ema.model if self.info.is_main else None
        state = self.ema.full_state_dict()        # a collective: every rank takes part
        if not self.info.is_main:
            return None
        model = _model_from_config(self.config_dict)
        model.load_state_dict(state)
        return model.to(self.info.device).eval()

    def save_samples(self) -> Path | None:
        ema = self._ema_model()
        if ema is None:
            return None
        args, cfg = self.args, self.config
        shape = (cfg.in_channels, cfg.input_size, cfg.input_size)
        text = self.condition.grid_text(args.sample_count, self.info.device)
        images = generate(ema, shape, cfg.num_classes, args.sample_count,
                          args.sample_steps, args.seed + 12345, self.info.device, text)
        if self.vae is not None:
            from .vae import decode

            images = decode(self.vae, images, args.latent_scale)
        upscale = max(1, 64 // images.shape[-1])
        return save_grid(images, self.out / "samples" / f"{self.step:07d}.png",
                         ncol=min(cfg.num_classes or 8, 10), upscale=upscale)

    def run(self) -> dict:
        """Train to args.steps; returns {"step", "loss" (of the last log row), "wall_s",
        "skipped" (non-finite steps skipped), "stopped" (None, or the signal that stopped the run
        at a step boundary, e.g. "SIGTERM"), "checkpoint" (the newest checkpoint or None)}."""
        args, info = self.args, self.info
        if info.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            remove_stale_temps(self.ckpt_dir)   # left by a writer killed mid-write
            text = json.dumps({"train": args.to_dict(), "model_config": self.config_dict,
                               "world_size": info.world_size}, indent=2)
            write_text_atomic(self.out / "args.json", text)
        if self.fsdp:
            sharded.remove_partial(self.ckpt_dir)  # shards of a write killed midway
        log = TrainLog(self.out, args.steps, self.step, info.is_main, args.progress)
        t0, last, stopped = time.perf_counter(), float("nan"), None
        try:
            with StopSignals() as signals:
                while self.step < args.steps:
                    self.train_step()
                    log.step()
                    stopped, over_time = self._stop_requests(signals, t0)
                    end = self.step == args.steps or over_time or stopped is not None
                    row = end or (args.log_every and self.step % args.log_every == 0)
                    ckpt = end or (args.ckpt_every and self.step % args.ckpt_every == 0)
                    grid = stopped is None and (
                        end or (args.sample_every and self.step % args.sample_every == 0))
                    if row or ckpt or grid:      # sync points: read the non-finite guard
                        window = self._check_window(flush=bool(row))
                    if row:
                        last = D.mean_scalar(window.mean_loss, info)
                        log.row(self.step, last, lr_at(args, self.step - 1), args.batch,
                                self.guard.skipped_total)
                        if window.bad:
                            log.message(f"skipped step{'s' * (len(window.bad) > 1)} "
                                        f"{', '.join(map(str, window.bad))}: non-finite loss or "
                                        f"gradient ({self.guard.skipped_total} skipped so far)")
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
        if info.is_main and log.jsonl.exists() and args.steps > 0 and stopped is None:
            plot_loss(log.jsonl, self.out / "loss.png")
        return {"step": self.step, "loss": last, "wall_s": time.perf_counter() - t0,
                "skipped": self.guard.skipped_total, "stopped": stopped,
                "checkpoint": self.last_ckpt[0] if self.last_ckpt else None}

    def _check_window(self, flush: bool):
        """Read the guard's window; stop mode: FloatingPointError at a non-finite step."""
        window = self.guard.read(flush)
        if window.first is not None:
            raise FloatingPointError(nonfinite_message(*window.first, self.last_ckpt))
        return window

    def _stop_requests(self, signals: StopSignals, t0: float) -> tuple[str | None, bool]:
        """(signal name or None, time limit reached), the same on every rank: one host
        all_reduce per step under DDP (faults.py), none in a single process."""
        over = bool(self.args.time_limit) and time.perf_counter() - t0 > 60.0 * self.args.time_limit
        signum, over = D.max_ints([signals.signum, over], self.info)
        return (signal_name(signum) if signum else None), bool(over)

    def close(self) -> None:
        if self.own_group:
            fsdp.destroy_single_process_group()
        D.cleanup(self.info)


def train(args: TrainArgs, model: nn.Module | None = None) -> dict:
    trainer = Trainer(args, model)
    try:
        return trainer.run()
    finally:
        trainer.close()
