"""The sweep parent's description: one writer, so that its parts never overwrite each other.

MLflow shows the tag ``mlflow.note.content`` as a run's "Description". Several features write
parts of a sweep's description (the end-of-sweep table, the report's verdicts, a racing
sweeper's decisions); each owns a named section. A section is kept whole in an artifact
``note/<section>.md`` and in its own tag (cut to the tag limit if needed), and the note is
re-rendered from all sections in a fixed order on every write. MLflow limits a tag to
``MAX_TAG_CHARS`` characters, so long sections are cut fairly (water-filling), at a line
boundary where possible, and end with a pointer to the artifact that holds them whole.

Writing is read-modify-write on the parent's tags: two processes writing different sections at
the same instant can lose one's section from the note (never from its own tag or artifact).
"""

from __future__ import annotations

from collections.abc import Iterable

import pandas as pd
from mlflow import MlflowClient

from dat_exp.tracking.schema import MAX_TAG_CHARS, Tag
from dat_exp.tracking.store import RetryingClient, set_tags

SECTIONS = ("summary", "report", "racing")  # the order they appear in the note
SEPARATOR = "\n\n"


def set_sweep_note(
    client: MlflowClient | RetryingClient, parent_run_id: str, section: str, markdown: str
) -> str:
    """Replace one section of the parent run's description; keep the others. Returns the note.

    An empty (or blank) section is left out of the note.
    """
    if section not in SECTIONS:
        raise ValueError(f"unknown note section {section!r}; valid: {', '.join(SECTIONS)}")
    client.log_text(parent_run_id, markdown, artifact_file(section))
    tags = client.get_run(parent_run_id).data.tags
    sections = {s: tags[Tag.NOTE_SECTION + s] for s in SECTIONS if Tag.NOTE_SECTION + s in tags}
    sections[section] = markdown
    note = render_note(sections)
    own = cut_section(section, markdown, MAX_TAG_CHARS)
    set_tags(client, parent_run_id, {Tag.NOTE_SECTION + section: own, Tag.NOTE: note})
    return note


def artifact_file(section: str) -> str:
    """Where a section is kept whole: ``note/<section>.md`` of the parent run."""
    return f"note/{section}.md"


def pointer(section: str) -> str:
    """The line that ends a cut section."""
    return f"… (cut: the whole section is in the artifact {artifact_file(section)})"


def heading(section: str) -> str:
    return f"### {section.capitalize()}\n\n"


def render_note(sections: dict[str, str]) -> str:
    """The present sections in the fixed order under headings, at most ``MAX_TAG_CHARS``."""
    present = [s for s in SECTIONS if sections.get(s, "").strip()]
    overhead = sum(len(heading(s)) for s in present) + len(SEPARATOR) * (len(present) - 1)
    shares = water_fill({s: len(sections[s]) for s in present}, MAX_TAG_CHARS - overhead)
    return SEPARATOR.join(heading(s) + cut_section(s, sections[s], shares[s]) for s in present)


def water_fill(lengths: dict[str, int], budget: int) -> dict[str, int]:
    """Fair shares of ``budget``: short parts keep all they need, long ones split the rest."""
    shares: dict[str, int] = {}
    left = budget
    for i, (name, length) in enumerate(sorted(lengths.items(), key=lambda item: item[1])):
        shares[name] = min(length, left // (len(lengths) - i))
        left -= shares[name]
    return shares


def cut_section(section: str, markdown: str, limit: int) -> str:
    """``markdown`` if it fits in ``limit`` characters, else its head and the pointer line.

    Text read back from a cut tag is cut again: its old pointer, at the end, is always dropped.
    """
    if len(markdown) <= limit:
        return markdown
    tail = SEPARATOR + pointer(section)  # a blank line: the pointer must not join a table
    return cut_at_line(markdown, limit - len(tail)) + tail


def cut_at_line(text: str, limit: int) -> str:
    """At most ``limit`` characters of ``text``, ending at a line boundary unless that would
    drop more than half of them (one very long line)."""
    head = text[: max(limit, 0)]
    boundary = head.rfind("\n")
    return head[:boundary].rstrip() if boundary > len(head) // 2 else head


def markdown_table(frame: pd.DataFrame) -> str:
    """A frame as a Markdown table (the index left out); without ``tabulate``."""
    lines = [_row(frame.columns), "|" + "---|" * len(frame.columns)]
    lines += [_row(row) for row in frame.itertuples(index=False)]
    return "\n".join(lines)


def _row(values: Iterable[object]) -> str:
    return "| " + " | ".join(_cell(v) for v in values) + " |"


def _cell(value: object) -> str:
    if pd.api.types.is_scalar(value) and pd.isna(value):  # None, NaN, NaT, NA
        return "-"
    return str(value).replace("|", "\\|").replace("\n", " ")
