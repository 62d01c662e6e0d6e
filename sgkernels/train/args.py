"""Training arguments (one dataclass; the CLI maps flags onto it one to one)."""
import dataclasses
from dataclasses import dataclass

from sgkernels.flow import MASKDIT_LAMBDA, T_SAMPLING

DEFAULT_LR, DEFAULT_FINETUNE_LR = 1e-4, 1e-5
# Arguments that change the sequence of updates: a resumed run must keep them.
RESUME_KEYS = ("batch", "seed", "data", "data_path", "image_size", "t_sampling", "t_loc",
               "t_scale", "label_dropout", "maskdit_lambda", "routing", "lr", "betas",
               "weight_decay", "grad_clip", "ema_decay", "ema_warmup", "warmup", "vae",
               "latent_scale", "encoder")


@dataclass
class TrainArgs:
    model: str | None = "FMNIST-S/2"   # preset name (ignored with finetune: config from the ckpt)
    model_set: tuple[str, ...] = ()      # "field=value" overrides of the preset's ModelConfig
    data: str = "fashion-mnist"          # sgkernels.data.DATASETS; captioned ones train T2I presets
    data_path: str | None = None
    image_size: int | None = None        # default: model input size (x the VAE's downsampling)
    steps: int = 1000
    batch: int = 64                      # global batch, split evenly over the ranks
    lr: float | None = None              # default 1e-4, 1e-5 when finetuning
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.0
    grad_clip: float = 0.0               # 0: off
    warmup: int = 0                      # linear lr warm-up steps
    ema_decay: float = 0.9999
    ema_warmup: bool = True              # decay min(ema_decay, (1 + s) / (10 + s))
    label_dropout: float = 0.1
    t_sampling: str = "uniform"
    t_loc: float = 0.0
    t_scale: float = 1.0
    maskdit_lambda: float = MASKDIT_LAMBDA
    routing: str = "on"                  # on: config routes / mask during training; off: dense
    finetune: str | None = None          # checkpoint to start from (weights only)
    finetune_weights: str = "ema"        # ema | model
    resume: bool = False
    out: str = "runs/train"
    ckpt_every: int = 1000
    sample_every: int = 1000
    log_every: int = 10
    sample_steps: int = 20
    sample_count: int = 40
    device: str | None = None            # auto: cuda if available
    amp: bool = True                     # bf16 autocast on CUDA
    seed: int = 0
    vae: str | None = None               # local diffusers AutoencoderKL folder (latent training)
    latent_scale: float = 0.18215
    progress: bool = True
    time_limit: float = 0.0              # minutes; 0: none. Stops early as if steps were reached
    encoder: str | None = None           # caption data: text encoder (default DEFAULT_ENCODER)
    on_nonfinite: str = "stop"           # stop: FloatingPointError; skip: skip the update
    parallel: str = "ddp"                # ddp | fsdp (fsdp.py: FSDP2, sharded checkpoints)
    activation_checkpointing: str = "none"   # none | blocks (recompute blocks in backward)
    compile: bool = False                # torch.compile each block (RoutedDiT.compile_blocks)

    def __post_init__(self):
        self.betas = tuple(float(b) for b in self.betas)
        self.model_set = tuple(self.model_set or ())
        checks = [
            ("steps", self.steps >= 0, "an int >= 0"), ("batch", self.batch >= 1, "an int >= 1"),
            ("t_sampling", self.t_sampling in T_SAMPLING, f"one of {T_SAMPLING}"),
            ("routing", self.routing in ("on", "off"), "'on' or 'off'"),
            ("finetune_weights", self.finetune_weights in ("ema", "model"), "'ema' or 'model'"),
            ("label_dropout", 0.0 <= self.label_dropout <= 1.0, "a value in [0, 1]"),
            ("ema_decay", 0.0 <= self.ema_decay <= 1.0, "a value in [0, 1]"),
            ("lr", self.lr is None or self.lr > 0, "a positive float"),
            ("betas", len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas),
             "two values in [0, 1)"),
            ("grad_clip", self.grad_clip >= 0, "a value >= 0 (0: off)"),
            ("maskdit_lambda", self.maskdit_lambda >= 0, "a value >= 0"),
            ("time_limit", self.time_limit >= 0, "minutes >= 0 (0: none)"),
            ("model_set", all("=" in kv for kv in self.model_set), "items 'field=value'"),
            ("on_nonfinite", self.on_nonfinite in ("stop", "skip"), "'stop' or 'skip'"),
            ("parallel", self.parallel in ("ddp", "fsdp"), "'ddp' or 'fsdp'"),
            ("activation_checkpointing", self.activation_checkpointing in ("none", "blocks"),
             "'none' or 'blocks'"),
        ]
        for every in ("ckpt_every", "sample_every", "log_every"):
            checks.append((every, getattr(self, every) >= 0, "an int >= 0 (0: only at the end)"))
        for name, ok, expected in checks:
            if not ok:
                raise ValueError(f"{name}: expected {expected}, got {getattr(self, name)!r}")
        if self.model is None and self.finetune is None:
            raise ValueError("model: a preset name is required unless --finetune gives a checkpoint")

    @property
    def effective_lr(self) -> float:
        if self.lr is not None:
            return self.lr
        return DEFAULT_FINETUNE_LR if self.finetune else DEFAULT_LR

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["betas"] = list(self.betas)
        d["model_set"] = list(self.model_set)
        return d
