"""ckptui: look inside PyTorch checkpoints safely and instantly.

The core (`model`, `formats`, `unpickle`, ...) imports nothing from Textual, rich or torch.
"""

__version__ = "0.1.0"
