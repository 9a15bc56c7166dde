"""Typed notes: facts about how an observation was assembled, recorded in the outputs.

A :class:`Note` carries its :class:`NoteKind`, so that the pipeline decides what to warn
about from the kind, never by parsing the sentence; the sentence is what the outputs'
header comments say.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

__all__ = ["Note", "NoteKind"]


class NoteKind(enum.Enum):
    """What a :class:`Note` is about. The values name the run's warnings about them."""

    MASK = "mask"
    NOISE = "noise"
    NOISE_ESTIMATED = "noise estimated"
    PSF_RENORMALISED = "PSF renormalised"
    PSF_RECENTERED = "PSF re-centered"
    PSF_PADDED = "PSF padded"
    ZEROPOINT = "zero point"
    BAND = "band"
    MODELLED = "modelled region"


@dataclass(frozen=True)
class Note:
    """A fact about how an observation was assembled: its kind, and the sentence recorded in
    the outputs' header comments."""

    kind: NoteKind
    text: str

    def __str__(self) -> str:
        return self.text
