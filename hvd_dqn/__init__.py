"""hvd_dqn: Deep Q-Networks trained data-parallel across processes with Horovod."""

__version__ = "0.1.0"
