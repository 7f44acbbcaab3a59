"""The store's errors (a module of its own so every store module can raise them without cycles)."""

from pipeline.errors import UserError


class StoreError(UserError):
    """A store that cannot be read or written as asked."""


class EmbedderUnavailable(StoreError):
    """The embedder a feature space records is not installed here (the message names it and how to
    install it). Never answered by switching to another embedder: its vectors would mean nothing."""
