"""Memory of one training step, measured the same way on CPU and GPU.

Taught in notebook 03, section 3 (what the detach saves, measured); notebook 02, section 6, reports it per method; A1 compares the DoRA variants.

On a CPU there is no allocator high-water mark to read, so this counts what a training
step must hold: the tensors autograd saves for backward (the activations), plus the
gradients and AdamW's two moment buffers of the trainable parameters. The model's own
weights are the same for every method and are reported separately. On a GPU the
allocator's peak is reported too.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from lowrank.adapters import unique_parameters

MIB = 2**20  # bytes in a mebibyte: the course reports memory and file sizes in MiB


@dataclass(frozen=True)
class StepMemory:
    """Bytes one forward+backward+AdamW step needs, by kind."""

    weights: int  # every parameter of the model (frozen and trainable)
    activations: int  # tensors saved for backward, parameters excluded, each storage once
    gradients_and_optimizer: int  # grad + exp_avg + exp_avg_sq of each trainable tensor
    cuda_peak: int | None = None  # torch.cuda.max_memory_allocated during the step

    @property
    def training_extra(self) -> int:
        """What training needs on top of the weights: activations, gradients, optimizer state."""
        return self.activations + self.gradients_and_optimizer

    def __str__(self) -> str:
        return (f"activations {self.activations / MIB:.1f} MiB + grads/AdamW {self.gradients_and_optimizer / MIB:.1f} MiB "
                f"(weights {self.weights / MIB:.1f} MiB)")


def training_step_memory(model: nn.Module, batch: dict[str, torch.Tensor]) -> StepMemory:
    """Run one forward+backward on ``batch`` (with ``labels``) and measure what it holds.

    Gradients are cleared afterwards; the weights are not changed.
    """
    parameter_storages = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        pointer = storage.data_ptr()
        if pointer not in parameter_storages:
            saved[pointer] = max(saved.get(pointer, 0), storage.nbytes())
        return tensor

    cuda = next(model.parameters()).is_cuda
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    was_training = model.training
    model.train()
    model.zero_grad(set_to_none=True)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        loss = model(**batch).loss
    loss.backward()
    peak = torch.cuda.max_memory_allocated() if cuda else None
    model.zero_grad(set_to_none=True)
    model.train(was_training)
    unique = unique_parameters(model)
    trainable_bytes = sum(p.numel() * p.element_size() for p in unique if p.requires_grad)
    return StepMemory(
        weights=sum(p.numel() * p.element_size() for p in unique),
        activations=sum(saved.values()),
        gradients_and_optimizer=3 * trainable_bytes,
        cuda_peak=peak,
    )
