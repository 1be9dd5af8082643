"""Dia set up for training: no generation cache, activation checkpointing (torch's, or torch_xla's on XLA),
frozen parts and LoRA adapters."""

from __future__ import annotations

import torch
from transformers.utils import logging as hf_logging

from dia_tpu.config import Config
from dia_tpu.console import DropNote
from dia_tpu.model.adapters import dia_of, setup_training


def set_up_for_training(model: torch.nn.Module, cfg: Config, on_xla: bool = False) -> torch.nn.Module:
    """No generation cache, optional non-reentrant checkpointing, frozen parts and LoRA adapters (`dia-tpu
    plan` sets up its meta-device model with this too)."""
    model.config.use_cache = False
    if cfg.model.gradient_checkpointing:
        checkpoint_layers(model)
    model = setup_training(model, cfg.model)
    if on_xla and cfg.model.gradient_checkpointing:
        checkpoint_with_torch_xla(model)
    return model


def expose_input_embeddings(model: torch.nn.Module) -> None:
    """Give Dia the `get_input_embeddings` transformers' Dia lacks (5.x raises NotImplementedError), which
    Accelerate's FSDP2 preparation calls to make the input embedding a unit of its own: the encoder's text
    embedding. (The decoder's audio embeddings stay with the root unit.)"""
    dia = model.get_base_model() if hasattr(model, "get_base_model") else model
    embedding = dia.model.encoder.embedding
    for owner in {model, dia}:
        owner.get_input_embeddings = lambda: embedding


def checkpoint_with_torch_xla(model: torch.nn.Module) -> None:
    """Give the checkpointed layers torch_xla's checkpoint instead of torch's. torch's fails on XLA tensors (it
    looks for a `torch.xla` device module), and in one traced graph XLA would merge the recomputation with the
    forward anyway; torch_xla's puts optimization barriers around it, so it is recomputed for real. It is
    reentrant, which passes gradients only through inputs that need them: the embeddings' outputs are made to
    need them, for adapters trained on a frozen model."""
    from torch_xla.utils.checkpoint import checkpoint

    for module in model.modules():
        if getattr(module, "gradient_checkpointing", False):
            module._gradient_checkpointing_func = checkpoint  # what transformers' checkpointed layers call
    dia = dia_of(model)
    for embedding in (dia.model.encoder.embedding, dia.model.decoder.embeddings):
        embedding.register_forward_hook(lambda module, inputs, output: output.requires_grad_(True))


def checkpoint_layers(model: torch.nn.Module) -> None:
    """Non-reentrant activation checkpointing of every layer, through transformers' current method where it has
    it (the older name warns that it is deprecated).

    transformers then warns that Dia exposes no input embeddings to make require gradients, which reentrant
    checkpointing would need; the non-reentrant checkpointing used here passes gradients to every parameter
    inside a layer without them (and on XLA `checkpoint_with_torch_xla` hooks the embeddings itself)."""
    log, note = hf_logging.get_logger("transformers.modeling_utils"), DropNote("does not expose input embeddings")
    log.addFilter(note)
    try:
        if hasattr(model, "activation_checkpointing_enable"):
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    finally:
        log.removeFilter(note)
