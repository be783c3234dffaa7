"""Training on this peer: tasks, the inner trainer, error feedback, fault modes, and the contribution a round sends."""
