"""Error feedback arithmetic and config validation."""

from __future__ import annotations

import pytest
import torch

from swarmtrain.peer.config import CodecConfig, ConfigError, OuterConfig, SwarmConfig, preset
from swarmtrain.peer.training.faults import FaultError, corrupt, corrupt_digest, validate_fault
from swarmtrain.peer.training.feedback import ErrorFeedback, FeedbackStateError


def test_feedback_carries_what_was_not_sent() -> None:
    ef = ErrorFeedback(decay=1.0)
    to_send = ef.accumulate({"w": torch.tensor([3.0, 1.0])})
    ef.settle({"w": torch.tensor([3.0, 0.0])})      # the codec kept only the first value
    assert torch.equal(ef.state()["w"], torch.tensor([0.0, 1.0]))
    to_send = ef.accumulate({"w": torch.tensor([0.0, 0.5])})
    assert torch.equal(to_send["w"], torch.tensor([0.0, 1.5]))


def test_feedback_decay() -> None:
    ef = ErrorFeedback(decay=0.5)
    ef.accumulate({"w": torch.tensor([4.0])})
    assert torch.equal(ef.accumulate({"w": torch.tensor([1.0])})["w"], torch.tensor([3.0]))
    with pytest.raises(ValueError):
        ErrorFeedback(decay=1.5)


def test_feedback_state_roundtrip() -> None:
    ef = ErrorFeedback(decay=0.9)
    ef.accumulate({"w": torch.arange(3.0)})
    other = ErrorFeedback(decay=0.9)
    other.load_state(ef.state())
    assert other.residual_norm() == pytest.approx(ef.residual_norm())


def test_feedback_survives_a_restart_as_bytes() -> None:
    ef = ErrorFeedback(decay=0.95)
    ef.accumulate({"w": torch.arange(6.0).reshape(2, 3), "b": torch.ones(2)})
    restored = ErrorFeedback(decay=0.95)
    restored.load_bytes(ef.to_bytes(), {"w": torch.Size([2, 3]), "b": torch.Size([2])})
    assert all(torch.equal(restored.state()[k], ef.state()[k]) for k in ("w", "b"))


def test_unusable_saved_feedback_is_refused() -> None:
    ef = ErrorFeedback(decay=0.95)
    ef.accumulate({"w": torch.ones(4)})
    data = ef.to_bytes()
    with pytest.raises(FeedbackStateError, match="unreadable"):
        ErrorFeedback(0.95).load_bytes(data[: len(data) // 2], {"w": torch.Size([4])})
    with pytest.raises(FeedbackStateError, match="does not fit"):
        ErrorFeedback(0.95).load_bytes(data, {"w": torch.Size([5])})


def test_config_roundtrip_and_errors() -> None:
    cfg = preset("smoke")
    assert SwarmConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ConfigError, match="density"):
        CodecConfig(density=0.0)
    with pytest.raises(ConfigError, match="bits"):
        CodecConfig(bits=3)
    with pytest.raises(ConfigError, match="unknown config keys"):
        SwarmConfig.from_dict({"bogus": 1})
    with pytest.raises(ConfigError, match="unknown keys"):
        SwarmConfig.from_dict({"codec": {"dens": 0.1}})
    with pytest.raises(ConfigError, match="diverges"):
        SwarmConfig(outer=OuterConfig(kind="nesterov"))
    with pytest.raises(ConfigError, match="unknown preset"):
        preset("huge")


def test_faults() -> None:
    g = torch.Generator().manual_seed(0)
    u = {"w": torch.tensor([1.0, -2.0])}
    assert torch.equal(corrupt("scale", u, g)["w"], u["w"] * 10)
    assert torch.equal(corrupt("sign-flip", u, g)["w"], -u["w"])
    assert torch.isnan(corrupt("nan", u, g)["w"]).any()
    noisy = corrupt("noise", u, g)["w"]
    assert float(noisy.norm()) == pytest.approx(float(u["w"].norm()), rel=1e-5)
    assert corrupt_digest("bad-checksum", b"\x00" * 32) != b"\x00" * 32
    assert corrupt_digest(None, b"\x00" * 32) == b"\x00" * 32
    with pytest.raises(FaultError, match="choose one of"):
        validate_fault("evil")
