"""The options of a training run and their allowed values, importable without Keras.

The command line reads the choices from here at startup, before any framework is loaded.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from .. import system
from ..errors import UsageError

RESNET_DEPTHS = (18, 34, 50, 101, 152)
MODEL_NAMES = ("alexnet", "smallnet", *(f"resnet{d}" for d in RESNET_DEPTHS),
               *(f"preresnet{d}" for d in RESNET_DEPTHS))
OPTIMIZERS = ("sgd", "adam", "rmsprop")
SCHEDULES = ("constant", "step", "plateau", "cosine")
AUGMENTS = ("none", "flip", "affine")
PRECISIONS = ("auto", "mixed", "float32")
# Keras seeds numpy's legacy generator, which takes 32-bit seeds.
SEED_MAX = 2**32 - 1
# The smallest image side each model takes (its strides leave nothing below it); the ResNets
# pool globally, and take any size down to a few pixels.
MIN_SIDES = {"alexnet": 63, "smallnet": 46}


def same_figure(a: float, b: float) -> bool:
    """Whether two epochs' figures of one metric are a tie: equal but for float32 rounding
    (a saturated AUC reads 1.0, 0.99999994 or 1.0000001 from one epoch to the next), within
    four units in the last place of a float32 near 1."""
    return math.isclose(a, b, rel_tol=2.0**-21, abs_tol=2.0**-24)


def default_workers() -> int:
    """Input threads: one per core up to 8, and at least 2 (one batch loads while one trains)."""
    return max(2, min(8, system.usable_cpus()))


@dataclass
class TrainConfig:
    """Every option of a training run; saved in config.json and read back by ``--resume``.

    ``weight_decay`` and ``width`` of None mean the model's published values; ``crop`` of None
    trains on whole images; ``image_size`` is used only for split folders (decoded on the fly).
    ``rotation``, ``shift``, ``shear`` and ``zoom`` are the ranges of ``augment="affine"``, with
    the meanings of Keras's ImageDataGenerator (degrees, fraction of the size, degrees, zoom
    factors in [1 - zoom, 1 + zoom]). ``step`` schedules use
    ``lr * step_factor ** (epoch // step_every)``; ``plateau`` divides the rate by 10 after
    ``plateau_patience`` epochs without a better validation metric.
    """

    model: str = "resnet18"
    epochs: int = 10
    batch_size: int = 64
    optimizer: str = "sgd"
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float | None = None
    schedule: str = "constant"
    step_every: int = 10
    step_factor: float = 0.5
    plateau_patience: int = 3
    crop: int | None = None
    augment: str = "none"
    rotation: float = 10.0
    shift: float = 0.1
    shear: float = 5.0
    zoom: float = 0.1
    early_stop: int | None = None
    seed: int = 0
    limit_per_class: int | None = None
    width: float | None = None
    image_size: int = 256
    workers: int = dataclasses.field(default_factory=default_workers)
    precision: str = "auto"
    jit: bool = True
    gpus: str = "1"

    def check(self) -> TrainConfig:
        """Raise UsageError naming the first option out of range; return self."""
        checks = (
            (self.model in MODEL_NAMES,
             f"--model {self.model!r} is not one of {', '.join(MODEL_NAMES)}"),
            (self.epochs >= 1, f"--epochs must be at least 1, got {self.epochs}"),
            (self.batch_size >= 1, f"--batch-size must be at least 1, got {self.batch_size}"),
            (self.optimizer in OPTIMIZERS,
             f"--optimizer {self.optimizer!r} is not one of {', '.join(OPTIMIZERS)}"),
            (math.isfinite(self.lr) and self.lr > 0,
             f"--lr must be a positive number, got {self.lr}"),
            # Below 1 for sgd and rmsprop is checked where the optimizer is made: a run saved
            # before that check resumes with its own optimizer state.
            (self.momentum >= 0, f"--momentum must be 0 or more, got {self.momentum}"),
            (self.weight_decay is None or (math.isfinite(self.weight_decay)
                                           and self.weight_decay >= 0),
             f"--weight-decay must be a finite number, 0 or more, got {self.weight_decay}"),
            (self.schedule in SCHEDULES,
             f"--schedule {self.schedule!r} is not one of {', '.join(SCHEDULES)}"),
            (self.step_every >= 1, f"--step-every must be at least 1, got {self.step_every}"),
            (0 < self.step_factor <= 1,
             f"--step-factor must be in (0, 1], got {self.step_factor}"),
            (self.plateau_patience >= 1,
             f"--plateau-patience must be at least 1, got {self.plateau_patience}"),
            (self.crop is None or self.crop >= 8, f"--crop must be at least 8, got {self.crop}"),
            (self.augment in AUGMENTS,
             f"--augment {self.augment!r} is not one of {', '.join(AUGMENTS)}"),
            (0 <= self.rotation <= 180,
             f"--rotation must be 0 to 180 degrees, got {self.rotation}"),
            (0 <= self.shift < 1, f"--shift must be a fraction in [0, 1), got {self.shift}"),
            (0 <= self.shear < 90, f"--shear must be 0 to 90 degrees (90 excluded), got "
                                   f"{self.shear}"),
            (0 <= self.zoom < 1, f"--zoom must be in [0, 1), got {self.zoom}"),
            (self.early_stop is None or self.early_stop >= 1,
             f"--early-stop must be at least 1, got {self.early_stop}"),
            (0 <= self.seed <= SEED_MAX, f"--seed must be from 0 to {SEED_MAX}, got {self.seed}"),
            (self.limit_per_class is None or self.limit_per_class >= 1,
             f"--limit-per-class must be at least 1, got {self.limit_per_class}"),
            (self.width is None or self.width > 0, f"--width must be positive, got {self.width}"),
            (self.image_size >= 8, f"--image-size must be at least 8, got {self.image_size}"),
            (self.workers >= 1, f"--workers must be at least 1, got {self.workers}"),
            (self.precision in PRECISIONS,
             f"--precision {self.precision!r} is not one of {', '.join(PRECISIONS)}"),
            (self.gpus == "all" or (str(self.gpus).isdigit() and int(self.gpus) >= 1),
             f"--gpus must be 'all' or a positive count, got {self.gpus!r}"),
        )
        for ok, message in checks:
            if not ok:
                raise UsageError(message)
        return self

    def to_dict(self) -> dict:
        """The options as a JSON-ready dict."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> TrainConfig:
        """Options from a dict (keys this version does not know are ignored)."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})
