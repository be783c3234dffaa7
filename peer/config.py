"""One config object for a swarm: keyword-only frozen dataclasses, validated on creation.

Everything that must be equal on every peer of a swarm (model, codec, outer step, vote
rules, round timing) lives in :class:`SwarmConfig`, which the genesis record carries.
What may differ per peer (data dir, threads, fault mode) is not here.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

from swarmtrain.protocol.work import MAX_IDENTITY_BITS


class ConfigError(ValueError):
    """A setting is out of range; the message names the setting and the allowed range."""


def _check(cond: bool, message: str) -> None:
    if not cond:
        raise ConfigError(message)


# 2^31 parameters: 8 GiB in fp32, held several times over (model, AdamW, merge).
MAX_MODEL_PARAMS = 1 << 31


@dataclass(frozen=True, kw_only=True)
class ModelConfig:
    """Byte-level transformer shape (stdlib-lm) or a task-specific size hint."""

    layers: int = 2
    d_model: int = 64
    heads: int = 4
    context: int = 64
    vocab: int = 256

    def __post_init__(self) -> None:
        _check(self.layers >= 1, f"model.layers must be >= 1, got {self.layers}")
        _check(self.d_model >= 8, f"model.d_model must be >= 8, got {self.d_model}")
        _check(self.heads >= 1 and self.d_model % self.heads == 0,
               f"model.heads must divide d_model ({self.d_model}), got {self.heads}")
        _check(self.context >= 2, f"model.context must be >= 2, got {self.context}")
        _check(1 <= self.vocab <= 1 << 20, f"model.vocab must be in [1, 2^20], got {self.vocab}")
        _check(self.layers <= 1024 and self.d_model <= 1 << 16 and self.context <= 1 << 20,
               f"model.layers <= 1024, d_model <= 65536 and context <= 2^20, got {self.layers}, "
               f"{self.d_model}, {self.context}")
        # Settings arrive from DHT records: a genesis asking for 10^17 parameters must be
        # refused before anything is allocated, not when the allocation fails.
        _check(self.approx_params() <= MAX_MODEL_PARAMS,
               f"the model would hold about {self.approx_params():.3g} parameters; at most "
               f"{MAX_MODEL_PARAMS:.3g} (a peer needs them in memory several times over)")

    def approx_params(self) -> int:
        """About how many parameters a transformer of this shape holds."""
        return 12 * self.layers * self.d_model ** 2 + (self.vocab + self.context) * self.d_model


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """Inner optimisation (DiLoCo inner loop: AdamW).

    ``inner_steps`` is H, the most inner steps a peer takes per round: a networked peer
    trains as fast as its hardware allows and waits at H for the next commit point; the
    simulator takes exactly H. It also caps a claim's merge weight (H x batch samples).
    """

    batch_size: int = 16
    inner_steps: int = 200
    lr: float = 3e-3
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.95)
    grad_clip: float = 1.0
    # LoRA adapter rank for hf: tasks (0: train every parameter). With a rank, the base
    # model is frozen and the swarm trains, sends and merges only the adapters.
    lora_rank: int = 0

    def __post_init__(self) -> None:
        _check(1 <= self.batch_size <= 1 << 16, f"train.batch_size must be in [1, 65536], got {self.batch_size}")
        _check(1 <= self.inner_steps <= 1 << 20, f"train.inner_steps must be in [1, 2^20], got {self.inner_steps}")
        _check(0 < self.lr < 1, f"train.lr must be in (0, 1), got {self.lr}")
        _check(self.weight_decay >= 0, f"train.weight_decay must be >= 0, got {self.weight_decay}")
        _check(self.grad_clip > 0, f"train.grad_clip must be > 0, got {self.grad_clip}")
        _check(0 <= self.lora_rank <= 4096, f"train.lora_rank must be in [0, 4096], got {self.lora_rank}")


@dataclass(frozen=True, kw_only=True)
class CodecConfig:
    """How a pseudo-gradient is sent: top-k density per chunk and value bits.

    ``density=1.0, bits=32`` sends the update dense in fp32 (uncompressed DiLoCo).
    """

    density: float = 0.01
    bits: int = 2
    chunk: int = 4096

    def __post_init__(self) -> None:
        _check(0 < self.density <= 1, f"codec.density must be in (0, 1], got {self.density}")
        _check(self.bits in (2, 4, 8, 32), f"codec.bits must be 2, 4, 8 or 32, got {self.bits}")
        _check(self.chunk >= 2 and self.chunk & (self.chunk - 1) == 0 and self.chunk <= 1 << 16,
               f"codec.chunk must be a power of two in [2, 65536], got {self.chunk}")

    @property
    def compressed(self) -> bool:
        return self.density < 1.0 or self.bits < 32


@dataclass(frozen=True, kw_only=True)
class OuterConfig:
    """The outer step that turns the merged pseudo-gradient into the next version.

    ``nesterov``: DiLoCo's Nesterov SGD, for uncompressed updates. ``sparseloco``: the
    error-feedback buffer decays by ``ef_decay`` and acts as the momentum; the outer step
    is a plain average times ``lr`` (error feedback plus Nesterov momentum diverged:
    held-out loss 16.8 at 8 bits and 55 at 2 bits, so the two are not combined).
    ``kind="nesterov", lr=1.0, momentum=0.0`` is the plain mean (:data:`AVERAGE`).
    """

    kind: Literal["nesterov", "sparseloco"] = "sparseloco"
    # 2.0 measured best for sparseloco (K=4, 2 bits, 30 rounds x 30 steps: lr 1.0 -> 1.946,
    # 1.5 -> 1.850, 2.0 -> 1.803, and 2.5 no better at 1 %); see docs/decisions.md.
    lr: float = 2.0
    momentum: float = 0.9
    ef_decay: float = 0.95

    def __post_init__(self) -> None:
        _check(self.kind in ("nesterov", "sparseloco"),
               f"outer.kind must be 'nesterov' or 'sparseloco', got {self.kind!r}")
        _check(0 < self.lr <= 10, f"outer.lr must be in (0, 10], got {self.lr}")
        _check(0 <= self.momentum < 1, f"outer.momentum must be in [0, 1), got {self.momentum}")
        _check(0 <= self.ef_decay <= 1, f"outer.ef_decay must be in [0, 1], got {self.ef_decay}")


@dataclass(frozen=True, kw_only=True)
class VoteConfig:
    """Rules a checker applies to one update.

    An update is accepted when all hold: every value finite; its norm within
    ``[min_norm_ratio, max_norm_ratio]`` times the round's median norm; and the held-out
    loss after applying it alone is at most ``loss_before + tolerance``.
    """

    heldout_batches: int = 4
    tolerance: float = 0.0
    max_norm_ratio: float = 4.0
    min_norm_ratio: float = 0.1
    checkers_per_update: int = 3
    # The price of an identity: its commitments are admitted only with a nonce whose hash
    # over the genesis digest starts with this many zero bits (0: free identities).
    identity_bits: int = 0

    def __post_init__(self) -> None:
        _check(self.heldout_batches >= 1, f"vote.heldout_batches must be >= 1, got {self.heldout_batches}")
        _check(self.tolerance >= 0, f"vote.tolerance must be >= 0, got {self.tolerance}")
        _check(self.max_norm_ratio > 1, f"vote.max_norm_ratio must be > 1, got {self.max_norm_ratio}")
        _check(0 <= self.min_norm_ratio < 1, f"vote.min_norm_ratio must be in [0, 1), got {self.min_norm_ratio}")
        _check(self.checkers_per_update >= 1,
               f"vote.checkers_per_update must be >= 1, got {self.checkers_per_update}")
        _check(0 <= self.identity_bits <= MAX_IDENTITY_BITS,
               f"vote.identity_bits must be in 0..{MAX_IDENTITY_BITS}, got {self.identity_bits}")


@dataclass(frozen=True, kw_only=True)
class RoundTiming:
    """Phase lengths in seconds, timed from the genesis time (used by the network swarm).

    Rounds are pipelined: peers train without pause, and a round's commit point comes
    every ``train_s`` seconds. Round ``r``'s exchange (commit, vote and agree phases)
    runs while round ``r + 1`` trains, so it must end before the next commit point.
    """

    train_s: float = 20.0
    commit_s: float = 4.0
    vote_s: float = 8.0
    agree_s: float = 4.0

    def __post_init__(self) -> None:
        for name in ("train_s", "commit_s", "vote_s", "agree_s"):
            _check(getattr(self, name) > 0, f"timing.{name} must be > 0, got {getattr(self, name)}")
        _check(self.exchange_s <= self.train_s,
               f"timing.commit_s + vote_s + agree_s ({self.exchange_s:g} s) must fit in timing.train_s "
               f"({self.train_s:g} s): a round's exchange runs while the next round trains")

    @property
    def exchange_s(self) -> float:
        """From a round's commit point to the end of its agree phase."""
        return self.commit_s + self.vote_s + self.agree_s


@dataclass(frozen=True, kw_only=True)
class SwarmConfig:
    """All settings every peer of one swarm must share (carried by the genesis record)."""

    task: str = "stdlib-lm"
    seed: int = 0
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    codec: CodecConfig = field(default_factory=CodecConfig)
    outer: OuterConfig = field(default_factory=OuterConfig)
    vote: VoteConfig = field(default_factory=VoteConfig)
    timing: RoundTiming = field(default_factory=RoundTiming)

    def __post_init__(self) -> None:
        _check(bool(self.task), "task must be a built-in name or 'module:function'")
        _check(0 <= self.seed < 2**63, f"seed must be in [0, 2^63), got {self.seed}")
        _check(not (self.codec.compressed and self.outer.kind == "nesterov" and self.outer.ef_decay > 0),
               "outer.kind='nesterov' with a compressing codec diverges (error feedback is already a momentum): "
               "use outer.kind='sparseloco', or codec density=1.0 bits=32, or outer.ef_decay=0")

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (msgpack/TOML friendly: lists, not tuples); ``from_dict(to_dict(c)) == c``."""
        return dataclasses.asdict(self, dict_factory=lambda items: {k: list(v) if isinstance(v, tuple) else v
                                                                    for k, v in items})

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "SwarmConfig":
        sections = {"model": ModelConfig, "train": TrainConfig, "codec": CodecConfig,
                    "outer": OuterConfig, "vote": VoteConfig, "timing": RoundTiming}
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        _check(not unknown, f"unknown config keys {sorted(unknown)}; known: {sorted(known)}")
        kwargs: dict[str, Any] = {}
        for key, value in data.items():
            if key in sections:
                _check(isinstance(value, dict), f"config section {key!r} must be a table")
                sub = sections[key]
                sub_known = {f.name for f in dataclasses.fields(sub)}
                bad = set(value) - sub_known
                _check(not bad, f"unknown keys {sorted(bad)} in [{key}]; known: {sorted(sub_known)}")
                if "betas" in value:
                    value = {**value, "betas": tuple(value["betas"])}
                kwargs[key] = sub(**value)
            else:
                kwargs[key] = value
        return cls(**kwargs)

    def replace(self, **changes: Any) -> "SwarmConfig":
        return dataclasses.replace(self, **changes)


def max_samples(config: SwarmConfig) -> int:
    """The most samples one peer can honestly claim in a round (caps the merge weight)."""
    return config.train.inner_steps * config.train.batch_size


# Dense fp32 updates, merged by their plain mean (outer lr 1, no momentum): what converged
# best at the 100-400 inner steps a round that CPU peers take in these presets' windows.
# Top-k compression needs few steps per round: at H=100 the 1.5 % / 2-bit SparseLoCo step
# ended at 3.49 (lr 1) and 3.86 (lr 2) against 1.77 dense (K=4, 900 steps each;
# docs/decisions.md has the sweep).
DENSE = CodecConfig(density=1.0, bits=32)
AVERAGE = OuterConfig(kind="nesterov", lr=1.0, momentum=0.0, ef_decay=0.0)


def preset(name: str) -> SwarmConfig:
    """Named presets. ``smoke``: seconds-long rounds for tests; ``demo``: a few minutes on a laptop.

    ``inner_steps`` caps a round's steps well above what a peer does here in a window
    (200-630 a window in the demo, 3 peers on 2 shared cores), so peers train all the time.
    """
    if name == "smoke":
        return SwarmConfig(
            train=TrainConfig(batch_size=8, inner_steps=4000),
            codec=DENSE, outer=AVERAGE,
            vote=VoteConfig(heldout_batches=2),
            timing=RoundTiming(train_s=12.0, commit_s=2.5, vote_s=4.0, agree_s=2.5),
        )
    if name == "demo":
        # A commit point every 12 s; the round's own merge is ready 3.5 s after it, so
        # about a third of each window is trained on the previous version and carried
        # over (that delay cost more than a longer window in docs/decisions.md's sweep).
        return SwarmConfig(
            # 1,000: a peer here reached the old cap of 600 in a window on a fast run and
            # waited for the next commit point (utilisation 89-91 %).
            train=TrainConfig(batch_size=16, inner_steps=1000),
            codec=DENSE, outer=AVERAGE,
            timing=RoundTiming(train_s=12.0, commit_s=1.0, vote_s=2.5, agree_s=2.0),
        )
    if name == "small":
        return SwarmConfig(
            model=ModelConfig(layers=4, d_model=128, heads=4, context=128),
            train=TrainConfig(batch_size=16, inner_steps=400),
            codec=DENSE, outer=AVERAGE,
            timing=RoundTiming(train_s=30.0, commit_s=5.0, vote_s=15.0, agree_s=5.0),
        )
    raise ConfigError(f"unknown preset {name!r}; choose one of: {', '.join(PRESETS)}")


PRESETS: tuple[str, ...] = ("smoke", "demo", "small")
