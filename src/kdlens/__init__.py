"""kdlens: knowledge distillation that explains itself."""

__version__ = "0.1.0"

__all__ = ["information_discarding"]


def __getattr__(name: str):
    # ``kdlens.information_discarding`` without importing torch for ``kdlens --version``
    if name == "information_discarding":
        from kdlens.explain.estimator import information_discarding

        return information_discarding
    raise AttributeError(f"module 'kdlens' has no attribute {name!r}")
