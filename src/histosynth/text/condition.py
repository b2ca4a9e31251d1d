"""Condition text: a template joining binned per-tile scores and the case summary.

A template such as "{tumor} tumor; {til} til; {summary}" names score fields that map to the tile
index's `prob_<field>` columns; each probability is binned into `levels` (["low", "high"]: below
0.5 is low). Patch-descriptor fields ({nuclei}, {nuclear_area}, {fat}, {stroma}, {h}, {e}, {tissue};
slides/descriptors.py) take the tile index's `level_<field>` word instead: the descriptor binned
by quantile edges fitted on the training tiles (tiles/descriptor_edges.json), so embed and sample
read the same word for a tile. `{label}` and `{caption}` are a tile dataset's class folder and CSV
caption (tile index columns), used as they are. PathLDM's `levels[int(p * len(levels))]` raises at p = 1.0; here the top bin is closed.
The empty string is the unconditional text of classifier-free guidance.
"""

from __future__ import annotations

import itertools
import math
import string

from ..console import HistosynthError

SUMMARY_FIELD = "summary"
# descriptor template fields and their words (slides.descriptors.TEMPLATE_FIELDS / LEVELS; kept here
# as plain data so that this module stays free of the slides stage)
DESCRIPTOR_FIELDS = ("nuclei", "nuclear_area", "h", "e", "fat", "stroma", "tissue")
DESCRIPTOR_LEVELS = ("low", "medium", "high")
# the tile's own text from a tile dataset (slides/images.py): class folder name, CSV caption; as is
TILE_TEXT_FIELDS = ("label", "caption")


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
    """Template field -> tile index column ({tumor} -> prob_tumor, {nuclei} -> level_nuclei)."""
    if field in TILE_TEXT_FIELDS:
        return field
    return f"level_{field}" if field in DESCRIPTOR_FIELDS else f"prob_{field}"


def level_of(p: float, levels: list[str]) -> str:
    """Bin a probability in [0, 1] into equal-width levels; p = 1.0 falls in the top bin."""
    if not levels:
        raise HistosynthError("text.levels: at least one level is needed")
    if p is None or math.isnan(p) or not 0.0 <= p <= 1.0:
        raise HistosynthError(f"score {p} is not a probability in [0, 1]")
    return levels[min(int(p * len(levels)), len(levels) - 1)]


def condition_text(template: str, summary: str, scores: dict[str, float | str], levels: list[str]) -> str:
    """Fill the template: scores binned into levels, the summary as is; surrounding spaces removed."""
    values = {}
    for field in template_fields(template):
        if field not in scores:
            raise HistosynthError(f"text.template needs score '{field}' ({score_column(field)}), which is missing")
        value = scores[field]
        if field in TILE_TEXT_FIELDS:
            values[field] = "" if value is None else str(value)
        elif field in DESCRIPTOR_FIELDS:   # already a word (the tile index's level_<field>)
            if value not in DESCRIPTOR_LEVELS:
                raise HistosynthError(f"descriptor field '{field}': {value!r} is not one of {DESCRIPTOR_LEVELS}; "
                                      "run `histosynth describe -w WS`")
            values[field] = value
        else:
            values[field] = level_of(value, levels)
    return template.format(summary=summary, **values).strip()


def tile_condition_text(tile, template: str, summary: str, levels: list[str]) -> str:
    """A tile's condition text: its `prob_<field>` columns (a tile-index row) fill the template."""
    scores = {f: (getattr(tile, score_column(f)) if f in DESCRIPTOR_FIELDS + TILE_TEXT_FIELDS
                  else float(getattr(tile, score_column(f))))
              for f in template_fields(template)}
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
        for probs in itertools.product(*(_field_values(f, levels) for f in fields))
    )
    length = prefix + budget + 2
    if length > max_positions:
        length = math.ceil(length / chunk_size) * chunk_size
    return length


def _field_values(field: str, levels: list[str]) -> list:
    if field in TILE_TEXT_FIELDS:   # free text, like the summary: embed checks every text fits
        return [""]
    return list(DESCRIPTOR_LEVELS) if field in DESCRIPTOR_FIELDS else _level_probabilities(levels)


def _level_probabilities(levels: list[str]) -> list[float]:
    """One probability inside each bin (its centre)."""
    return [(i + 0.5) / len(levels) for i in range(len(levels))]
