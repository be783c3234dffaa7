"""A byte-level GPT: learned token and position embeddings, pre-norm blocks, tied output.

Built so that every peer constructing it from the same :class:`ModelConfig` and seed gets
bit-identical parameters on any machine: every parameter is overwritten from a local
generator with :func:`~swarmtrain.peer.training.tasks.rng.portable_normal`, and the global RNG
that torch's default initialisers use is restored after construction.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from swarmtrain.peer.config import ModelConfig

from .rng import make_generator, portable_normal, without_global_rng

_INIT_STD = 0.02


class CausalSelfAttention(nn.Module):
    """Multi-head causal attention through ``scaled_dot_product_attention``."""

    def __init__(self, d_model: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        # (B, T, 3, H, hd) -> three (B, H, T, hd) tensors.
        q, k, v = self.qkv(x).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.proj(y.transpose(1, 2).reshape(b, t, d))


class MLP(nn.Module):
    """Position-wise feed-forward, 4x wide with GELU."""

    def __init__(self, d_model: int) -> None:
        super().__init__()
        self.fc = nn.Linear(d_model, 4 * d_model)
        self.proj = nn.Linear(4 * d_model, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(F.gelu(self.fc(x)))


class Block(nn.Module):
    """Pre-norm residual block: x + attn(ln(x)), then x + mlp(ln(x))."""

    def __init__(self, d_model: int, heads: int) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(d_model)
        self.attn = CausalSelfAttention(d_model, heads)
        self.ln2 = nn.LayerNorm(d_model)
        self.mlp = MLP(d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class ByteGPT(nn.Module):
    """Decoder-only transformer over bytes; ``forward(idx)`` returns logits (B, T, vocab).

    The output projection reuses ``tok.weight`` through ``F.linear`` rather than a second
    module sharing the Parameter, so the tied matrix is one parameter with one name.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.tok = nn.Embedding(config.vocab, config.d_model)
        self.pos = nn.Embedding(config.context, config.d_model)
        self.blocks = nn.ModuleList(Block(config.d_model, config.heads) for _ in range(config.layers))
        self.ln_f = nn.LayerNorm(config.d_model)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        t = idx.shape[-1]
        if t > self.config.context:
            raise ValueError(f"sequence length {t} exceeds the model's context {self.config.context}; "
                             "crop the input or build the model with a larger model.context")
        x = self.tok(idx) + self.pos(torch.arange(t, device=idx.device))
        for block in self.blocks:
            x = block(x)
        return F.linear(self.ln_f(x), self.tok.weight)


def init_parameters(model: ByteGPT, seed: int) -> None:
    """Fill every parameter from a generator seeded by ``seed``, in module order.

    Linear and embedding weights ~ N(0, 0.02^2); the residual output projections are scaled
    down by sqrt(2 * layers) so the residual stream's variance does not grow with depth;
    biases zero, LayerNorm gains one.
    """
    gen = make_generator("byte-gpt-init", seed)
    residual_std = _INIT_STD / math.sqrt(2 * model.config.layers)
    residual_outputs = {id(b.attn.proj) for b in model.blocks} | {id(b.mlp.proj) for b in model.blocks}
    done: set[int] = set()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.LayerNorm):
                module.weight.fill_(1.0)
                module.bias.zero_()
            elif isinstance(module, (nn.Linear, nn.Embedding)):
                std = residual_std if id(module) in residual_outputs else _INIT_STD
                module.weight.copy_(portable_normal(module.weight.shape, std, gen))
                if getattr(module, "bias", None) is not None:
                    module.bias.zero_()
            else:
                continue
            done.update(id(p) for p in module.parameters(recurse=False))
    # A parameter left out here would keep torch's default init, which is not portable.
    missed = [name for name, p in model.named_parameters() if id(p) not in done]
    if missed:
        raise RuntimeError(f"init_parameters does not know how to initialise {missed}; "
                           "add their module type to init_parameters")


def build_byte_gpt(config: ModelConfig, seed: int) -> ByteGPT:
    """A freshly initialised :class:`ByteGPT` on CPU, identical for identical (config, seed)."""
    model = without_global_rng(lambda: ByteGPT(config))
    init_parameters(model, seed)
    return model
