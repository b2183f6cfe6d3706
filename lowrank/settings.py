"""Run settings: the one place that reads the course's environment variables.

Read in the first cell of every notebook; the README's "Profiles" table lists the sizes.

``LOWRANK_PROFILE`` picks the experiment sizes; ``LOWRANK_BACKBONE`` and ``LOWRANK_DATASET``
pick the model and data (``embedded`` by default: offline; e.g. ``distilbert-base-uncased``
and ``imdb`` with the hub); ``LOWRANK_FIGURES`` redirects saved figures (default ``figures/`` in the full
profile, ``build/quick/figures/`` in the quick one); ``LOWRANK_PRECISION`` and ``LOWRANK_ASSUME_NO_BF16``
decide the training precision; ``LOWRANK_PHASE_LOG`` names a file for the time spent in each phase;
``LOWRANK_RUN_CACHE`` is where trained runs are kept for reuse (:mod:`lowrank.run_cache`; ``off``: nowhere).

``quick`` sizes every experiment for tests and a live class (a notebook in a few minutes on
a 2-core CPU); ``full`` is for self-study and for the outputs committed with the notebooks.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

ENV_VAR = "LOWRANK_PROFILE"
BACKBONE_VAR = "LOWRANK_BACKBONE"
DATASET_VAR = "LOWRANK_DATASET"
FIGURES_VAR = "LOWRANK_FIGURES"
REPOSITORY = Path(__file__).resolve().parent.parent
REPOSITORY_FIGURES = REPOSITORY / "figures"
#: Where the quick profile saves figures when ``$LOWRANK_FIGURES`` is not set: a quick run, by whatever
#: route (nbval on one notebook, a live class), never overwrites the committed full-profile figures.
QUICK_FIGURES = REPOSITORY / "build" / "quick" / "figures"
PHASE_LOG_VAR = "LOWRANK_PHASE_LOG"
DEFAULT = "full"
#: The name that selects the offline defaults: the packaged backbone (:mod:`lowrank.backbone`) and
#: tweet corpus (:mod:`lowrank.data`); also what adapters trained on that backbone record as its name.
EMBEDDED = "embedded"


@dataclass(frozen=True)
class Profile:
    """Sizes shared by the notebooks; every experiment reads its budget from here."""

    name: str
    train_size: int
    eval_size: int
    epochs: int
    batch_size: int
    max_length: int
    probe_steps: int  # short fine-tunes used for illustration (notebook 01's update spectrum)
    analysis_steps: int  # steps per method in the magnitude/direction study (notebook 04)


PROFILES = {
    "quick": Profile("quick", train_size=512, eval_size=256, epochs=1, batch_size=32, max_length=64,
                     probe_steps=8, analysis_steps=16),
    "full": Profile("full", train_size=8000, eval_size=1000, epochs=2, batch_size=32, max_length=64,
                    probe_steps=60, analysis_steps=250),
}


def current_profile() -> Profile:
    """The profile named by ``$LOWRANK_PROFILE`` (``quick`` or ``full``; default ``full``)."""
    name = os.environ.get(ENV_VAR, DEFAULT).strip().lower() or DEFAULT
    if name not in PROFILES:
        raise ValueError(f"{ENV_VAR}={name!r} is not a profile; use one of {sorted(PROFILES)}")
    return PROFILES[name]


def backbone_name() -> str:
    """``$LOWRANK_BACKBONE``, default ``embedded`` (offline all-MiniLM-L6-v2 as DistilBERT)."""
    return os.environ.get(BACKBONE_VAR, "").strip() or EMBEDDED


def dataset_name() -> str:
    """``$LOWRANK_DATASET``, default ``embedded`` (offline tweets); ``imdb`` needs the hub."""
    return os.environ.get(DATASET_VAR, "").strip() or EMBEDDED


BACKBONE_DISPLAY_NAMES = {EMBEDDED: "all-MiniLM-L6-v2 (DistilBERT layout)"}
DATASET_DISPLAY_NAMES = {EMBEDDED: "tweet sentiment (embedded)", "imdb": "IMDB reviews"}


def backbone_display_name(name: str | None = None) -> str:
    """How figure titles and printouts name backbone ``name`` (default: :func:`backbone_name`):
    what ``embedded`` is, any other name as given."""
    name = backbone_name() if name is None else str(name)
    return BACKBONE_DISPLAY_NAMES.get(name, name)


def dataset_display_name(name: str | None = None) -> str:
    """How figure titles and printouts name dataset ``name`` (default: :func:`dataset_name`)."""
    name = dataset_name() if name is None else str(name)
    return DATASET_DISPLAY_NAMES.get(name, name)


PRECISION_VAR = "LOWRANK_PRECISION"
PRECISIONS = ("fp32", "bf16", "auto")
#: bf16 autocast where the hardware multiplies bf16, fp32 elsewhere. Its accuracy differences from fp32 on
#: notebook 02's four methods lie inside the run-to-run noise measured on re-runs (README, "Precision").
DEFAULT_PRECISION = "auto"


#: Set to 1 to behave as on a CPU without bf16 hardware (most laptops) on one that has it: tests and timings of
#: what such a learner waits.
NO_BF16_VAR = "LOWRANK_ASSUME_NO_BF16"


def bf16_is_fast(device: torch.device | str | None = None) -> bool:
    """Whether ``device`` multiplies bf16 matrices in hardware: a CUDA GPU that supports bf16, or a CPU
    with AMX tiles or AVX512-BF16 (elsewhere bf16 is emulated, tens of times slower than fp32).
    ``$LOWRANK_ASSUME_NO_BF16=1`` makes it False everywhere."""
    if os.environ.get(NO_BF16_VAR, "").strip() == "1":
        return False
    device = torch.device(device) if device is not None else default_device()
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    cpu = getattr(torch, "cpu", None)
    checks = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")
    return any(bool(getattr(cpu, check, lambda: False)()) for check in checks)


def training_dtype(device: torch.device | str | None = None) -> torch.dtype | None:
    """The autocast dtype training runs in, from ``$LOWRANK_PRECISION``: ``auto`` (the default: bf16 where
    :func:`bf16_is_fast`, else fp32), ``fp32`` (None, no autocast) or ``bf16`` (``torch.bfloat16``).

    Only the training forward runs under autocast; weights, adapters, optimizer state and evaluation
    stay fp32 (:func:`lowrank.training.train`).
    """
    return torch.bfloat16 if precision_name(device) == "bf16" else None


def precision_name(device: torch.device | str | None = None) -> str:
    """``fp32`` or ``bf16``: what ``$LOWRANK_PRECISION`` resolves to on ``device`` (see :func:`training_dtype`)."""
    name = os.environ.get(PRECISION_VAR, "").strip().lower() or DEFAULT_PRECISION
    if name not in PRECISIONS:
        raise ValueError(f"{PRECISION_VAR}={name!r} is not a precision; use one of {list(PRECISIONS)}")
    if name == "auto":
        name = "bf16" if bf16_is_fast(device) else "fp32"
    return name


def default_device() -> torch.device:
    """The first CUDA device if there is one, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def figure_path(name: str) -> Path:
    """Where a notebook saves the figure or table ``name``: ``$LOWRANK_FIGURES`` when set; else ``figures/``
    of the repository in the full profile (the committed figures) and :data:`QUICK_FIGURES` in the quick
    one, so that only a full-profile run writes the committed figures."""
    chosen = os.environ.get(FIGURES_VAR, "").strip()
    if chosen:
        folder = Path(chosen)
    else:
        folder = REPOSITORY_FIGURES if current_profile().name == "full" else QUICK_FIGURES
    folder.mkdir(parents=True, exist_ok=True)
    return folder / name


RUN_CACHE_VAR = "LOWRANK_RUN_CACHE"
#: Where :func:`lowrank.run_cache.train_once` keeps finished runs when ``$LOWRANK_RUN_CACHE`` is not set.
DEFAULT_RUN_CACHE = REPOSITORY / "build" / "run_cache"


def run_cache_folder() -> Path | None:
    """Where finished training runs are kept for reuse: ``$LOWRANK_RUN_CACHE`` when set (``off``: nowhere,
    every run trains), else :data:`DEFAULT_RUN_CACHE`."""
    chosen = os.environ.get(RUN_CACHE_VAR, "").strip()
    if chosen.lower() == "off":
        return None
    return Path(chosen) if chosen else DEFAULT_RUN_CACHE


def phase_log_path() -> Path | None:
    """``$LOWRANK_PHASE_LOG``: the JSON file :func:`lowrank.timing.add_phase_seconds` keeps the phase totals
    in (``tools/run_course.py`` sets it), or None."""
    log = os.environ.get(PHASE_LOG_VAR, "").strip()
    return Path(log) if log else None
