"""Exceptions raised for bad input. The CLI and the service turn them into one-line messages / 4xx replies."""

from __future__ import annotations


class HySACError(Exception):
    """Base class of every error hysac raises on purpose."""


class InputError(HySACError, ValueError):
    """Bad user input: an unreadable file, an empty query, a tensor with NaN, a wrong shape... The message names
    the input and the reason."""


class CheckpointError(HySACError, ValueError):
    """A checkpoint that cannot be loaded into the requested model (missing/unexpected keys, wrong shapes)."""


class ModelMismatchError(HySACError, ValueError):
    """An index or embedding file made by a different model than the one asked to use it."""
