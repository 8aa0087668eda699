"""Reading a COCO json (instances or panoptic) so that every problem of its structure is a clear error.

A file that is not valid JSON (a truncated download, say) is a `ValueError` naming it with the line
and column; one nested too deeply for Python's parser too. The top level must be an object whose
`images` and `categories` are lists; `annotations` must be a list too, or null (read, with a
warning, as a split without objects). Entries of `images` and `annotations` that are not objects
are skipped, counted. The categories table decides every class id, so it must be right or the file
is refused: each category an object with a JSON integer `id` (not "3": the annotations'
`category_id` must match it exactly) and a non-empty string `name`, no id and no name twice. Single
annotations are checked field by field when they are converted (`hf_detr.data.schema.ObjectChecker`):
a bad one skips that object, counted.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .folder_reading import check_class_names, examples, repeated, short_text, shown
from .schema import logger

TABLES = ("images", "annotations", "categories")


def json_type(value: Any) -> str:
    """What a JSON value is, in words."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true/false"
    names = {dict: "an object", list: "a list", str: "a string", int: "a number", float: "a number"}
    return names.get(type(value), type(value).__name__)


def read_json(path: Path) -> Any:
    """The JSON value of a file; a `ValueError` naming the file (and the line and column) when it is
    not UTF-8 JSON or nests too deeply to be read."""
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise ValueError(f"{path}: not UTF-8 text ({error}); save it as UTF-8 JSON.") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        ends_early = error.pos >= len(text.rstrip()) or error.msg.startswith("Unterminated string")
        hint = (
            "the file ends early: it is truncated; export or download it again"
            if ends_early
            else "fix it there"
        )
        raise ValueError(
            f"{path}: not valid JSON: {error.msg} (line {error.lineno}, column {error.colno}); {hint}."
        ) from None
    except RecursionError:
        raise ValueError(
            f"{path}: the JSON nests too deeply to be read (a COCO file nests a few levels); the file is "
            "damaged or not a COCO annotation file."
        ) from None


def coco_tables(data: Any, path: Path, kind: str) -> dict[str, Any]:
    """The json with its `images`, `annotations` (lists of objects) and `categories` (checked, sorted
    by id) checked; a `ValueError` naming the file and the field when the structure is wrong."""
    if not isinstance(data, dict):
        raise ValueError(
            f"{path} is not a COCO {kind} file: its top level is {json_type(data)}, not an object with "
            f"{', '.join(map(repr, TABLES))}."
        )
    tables = {}
    for key in TABLES:
        if key not in data:
            raise ValueError(f"{path} is not a COCO {kind} file: it has no {key!r}.")
        value = data[key]
        if key == "annotations" and value is None:
            logger.warning("%s: 'annotations' is null: read as no annotations.", path)
            value = []
        if not isinstance(value, list):
            raise ValueError(
                f"{path}: {key!r} must be a list of objects, but it is {json_type(value)}; "
                "fix the file or export it again."
            )
        tables[key] = value
    for key in ("images", "annotations"):
        objects = [entry for entry in tables[key] if isinstance(entry, dict)]
        if len(objects) < len(tables[key]):
            logger.warning(
                "%s: ignored %d entries of %r that are not JSON objects.",
                path,
                len(tables[key]) - len(objects),
                key,
            )
        tables[key] = objects
    tables["categories"] = checked_categories(tables["categories"], path)
    return {**data, **tables}


def category_problem(category: Any) -> str | None:
    """What is wrong with one entry of `categories`, or None."""
    if not isinstance(category, dict):
        return f"is {json_type(category)}, not an object"
    if "id" not in category:
        return "has no 'id'"
    if not isinstance(category["id"], int) or isinstance(category["id"], bool):
        identifier = category["id"]
        return (
            f"has the id {shown(identifier)}, which is {json_type(identifier)}: category ids must be integers"
        )
    name = category.get("name")
    if not isinstance(name, str) or not name.strip():
        return (
            "has no 'name'"
            if name is None
            else f"has the name {shown(name)}: names must be non-empty strings"
        )
    return None


def checked_categories(categories: list[Any], path: Path) -> list[dict[str, Any]]:
    """The categories sorted by id; a `ValueError` naming the file and the category when one is not
    an object with an integer `id` and a string `name`, or when an id or a name repeats."""
    for position, category in enumerate(categories):
        problem = category_problem(category)
        if problem is not None:
            raise ValueError(
                f"{path}: category {position} of 'categories' ({short_text(category)}) {problem}. "
                "Each category needs an integer 'id' and a 'name'."
            )
    twice = repeated(c["id"] for c in categories)
    if twice:
        names = [c["name"] for c in categories if c["id"] in twice]
        raise ValueError(
            f"{path}: category id(s) {examples(sorted(twice))} are used by more than one category "
            f"({examples(names)}); whose objects are whose cannot be told: give each category its own id."
        )
    check_class_names([c["name"] for c in categories], f"{path} ('categories')")
    return sorted(categories, key=lambda c: c["id"])


__all__ = ["checked_categories", "coco_tables", "read_json"]
