"""kdlens: knowledge distillation that explains itself."""

__version__ = "0.1.0"
