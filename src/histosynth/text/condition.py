"""Condition text: a template joining binned per-tile scores and the case summary.

A template such as "{tumor} tumor; {til} til; {summary}" names score fields that map to the tile
index's `prob_<field>` columns; each probability is binned into `levels` (["low", "high"]: below
0.5 is low). PathLDM's `levels[int(p * len(levels))]` raises at p = 1.0; here the top bin is closed.
The empty string is the unconditional text of classifier-free guidance.
"""

from __future__ import annotations

import itertools
import math
import string

from ..console import HistosynthError

SUMMARY_FIELD = "summary"


def template_fields(template: str) -> list[str]:
    """Score fields of a template in order of appearance ({summary} excluded)."""
    try:
        names = [field for _, field, _, _ in string.Formatter().parse(template) if field is not None]
    except ValueError as exc:
        raise HistosynthError(f"text.template '{template}': {exc}") from None
    for field in names:
        if not field.isidentifier():
            raise HistosynthError(f"text.template '{template}': field '{{{field}}}' must be a plain name")
    return list(dict.fromkeys(f for f in names if f != SUMMARY_FIELD))


def score_column(field: str) -> str:
    """Template field -> tile index column ({tumor} -> prob_tumor)."""
    return f"prob_{field}"


def level_of(p: float, levels: list[str]) -> str:
    """Bin a probability in [0, 1] into equal-width levels; p = 1.0 falls in the top bin."""
    if not levels:
        raise HistosynthError("text.levels: at least one level is needed")
    if p is None or math.isnan(p) or not 0.0 <= p <= 1.0:
        raise HistosynthError(f"score {p} is not a probability in [0, 1]")
    return levels[min(int(p * len(levels)), len(levels) - 1)]


def condition_text(template: str, summary: str, scores: dict[str, float], levels: list[str]) -> str:
    """Fill the template: scores binned into levels, the summary as is; surrounding spaces removed."""
    values = {}
    for field in template_fields(template):
        if field not in scores:
            raise HistosynthError(f"text.template needs score '{field}' ({score_column(field)}), which is missing")
        values[field] = level_of(scores[field], levels)
    return template.format(summary=summary, **values).strip()


def tile_condition_text(tile, template: str, summary: str, levels: list[str]) -> str:
    """A tile's condition text: its `prob_<field>` columns (a tile-index row) fill the template."""
    scores = {f: float(getattr(tile, score_column(f))) for f in template_fields(template)}
    return condition_text(template, summary, scores, levels)


def context_length_for(encoder_or_tokenizer, template: str, budget: int, levels: list[str],
                       chunk_size: int | None = None) -> int:
    """Tokens the encoder must read: the longest template prefix + budget + start/end tokens.

    The prefix is measured for every combination of levels. Beyond the encoder's positions the
    length is rounded up to a multiple of `chunk_size` (the long-context chunk, 77 for CLIP).
    """
    tokenizer = getattr(encoder_or_tokenizer, "tokenizer", encoder_or_tokenizer)
    max_positions = getattr(encoder_or_tokenizer, "max_positions", None) or tokenizer.max_positions
    chunk_size = chunk_size or getattr(encoder_or_tokenizer, "chunk_size", None) or max_positions
    fields = template_fields(template)
    prefix = max(
        tokenizer.count(condition_text(template, "", dict(zip(fields, probs)), levels))
        for probs in itertools.product(_level_probabilities(levels), repeat=len(fields))
    )
    length = prefix + budget + 2
    if length > max_positions:
        length = math.ceil(length / chunk_size) * chunk_size
    return length


def _level_probabilities(levels: list[str]) -> list[float]:
    """One probability inside each bin (its centre)."""
    return [(i + 0.5) / len(levels) for i in range(len(levels))]
