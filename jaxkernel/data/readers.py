"""Readers for local dataset files: CoNLL/IOB, TSV/CSV, JSONL (and SQuAD JSON), plain text.

Every reader returns a list of plain ``dict`` rows, each with a ``"source"`` entry
(``"path:line"``) so that later errors (an unknown label, say) can point at the line
to fix. A malformed line raises ``DataError`` naming the file and line number.

Example::

    rows = read_conll("../shared/data/wikiann-en/dev.txt")
    rows[0]  # {"tokens": ["Sandra", "Kogut"], "tags": ["B-PER", "I-PER"], "source": ".../dev.txt:1"}
"""

from __future__ import annotations

import csv
import json
import os
import re
import sys
from pathlib import Path

BOM = "\ufeff"
_LANG_PREFIX = re.compile(r"^([a-z]{2,3}:)")  # WikiANN writes tokens as "en:Paris"


class DataError(ValueError):
    """A dataset that cannot be used as given; the message names the file/line or split."""


def _read_lines(path: Path) -> list[str]:
    """The file's lines without line ends; a byte-order mark anywhere is dropped (a BOM-only line reads as blank)."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise _not_utf8(path, err) from None
    # Not str.splitlines: it also breaks at U+2028, U+0085... which may sit inside a token or JSON string.
    return [line.removesuffix("\r") for line in text.replace(BOM, "").split("\n")]


def _is_content(line: str) -> bool:
    return bool(line.strip()) and not line.startswith("-DOCSTART-")


def _detect_token_prefix(lines: list[str]) -> str | None:
    """The language prefix shared by every token line (WikiANN's "en:"), if any."""
    first = next((line for line in lines if _is_content(line)), None)
    match = _LANG_PREFIX.match(first) if first else None
    if not match:
        return None
    prefix = match.group(1)
    return prefix if all(line.startswith(prefix) for line in lines if _is_content(line)) else None


def read_conll(path: str | os.PathLike, *, token_prefix: str | None = "auto") -> list[dict]:
    """Token-per-line NER file: ``TOKEN<TAB>TAG`` (or space-separated columns, tag last).

    Blank lines separate sentences; ``-DOCSTART-`` lines (CoNLL-2003) are skipped;
    lines holding only a byte-order mark count as blank.

    Args:
      path: the file.
      token_prefix: stripped from the start of every token; "auto" strips a language
        prefix such as WikiANN's ``en:`` when every token of the file carries it; None keeps tokens.

    Returns:
      ``[{"tokens": [...], "tags": [...], "source": "path:first_line"}, ...]``.
    """
    path = Path(path)
    lines = _read_lines(path)
    if token_prefix == "auto":
        token_prefix = _detect_token_prefix(lines)
    rows, tokens, tags, start = [], [], [], None
    columns = None  # (count, line number) of the file's first token line: every line must have as many

    def flush():
        if tokens:
            rows.append({"tokens": list(tokens), "tags": list(tags), "source": f"{path}:{start}"})
        tokens.clear()
        tags.clear()

    for number, line in enumerate(lines, start=1):
        if not _is_content(line):
            flush()
            continue
        parts = line.split("\t") if "\t" in line else line.split()
        if len(parts) < 2 or not parts[0] or not parts[-1].strip():
            raise DataError(
                f"{path}:{number}: expected 'TOKEN<TAB>TAG' (a token and its tag), got {line!r}; "
                "separate sentences with an empty line"
            )
        if columns is None:
            columns = (len(parts), number)
        elif len(parts) != columns[0]:
            # An extra column would silently become the tag (the tag is read from the last column).
            raise DataError(
                f"{path}:{number}: {len(parts)} columns, but line {columns[1]} of this file has {columns[0]}: "
                f"{line!r}; every token line needs the same columns (TOKEN<TAB>TAG, tag last). "
                "Remove the extra column or fix the separator on this line"
            )
        token, tag = parts[0], parts[-1].strip()
        if token_prefix and token.startswith(token_prefix):
            token = token[len(token_prefix):]
        if not tokens:
            start = number
        tokens.append(token)
        tags.append(tag)
    flush()
    return rows


def read_table(path: str | os.PathLike, *, delimiter: str) -> list[dict]:
    """TSV (no quoting, as GLUE writes it) or CSV (standard quoting) with a header row."""
    path = Path(path)
    quoting = csv.QUOTE_NONE if delimiter == "\t" else csv.QUOTE_MINIMAL
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))
    try:
        return _read_table(path, delimiter, quoting)
    except UnicodeDecodeError as err:
        raise _not_utf8(path, err) from None


def _read_table(path: Path, delimiter: str, quoting: int) -> list[dict]:
    rows = []
    with open(path, encoding="utf-8-sig", newline="") as f:
        reader = csv.reader(f, delimiter=delimiter, quoting=quoting)
        try:
            header = next(reader)
        except StopIteration:
            return []
        except csv.Error as err:
            raise DataError(f"{path}:1: {err}") from None
        header = [h.strip() for h in header]
        line = reader.line_num
        while True:
            try:
                fields = next(reader)
            except StopIteration:
                break
            except csv.Error as err:
                raise DataError(f"{path}:{reader.line_num}: {err}") from None
            start, line = line + 1, reader.line_num
            if not fields or fields == [""] or all(not x.strip() for x in fields):
                continue
            if len(fields) != len(header):
                raise DataError(
                    f"{path}:{start}: expected {len(header)} fields ({', '.join(header)}), got {len(fields)}: "
                    f"{(chr(9) if delimiter == chr(9) else delimiter).join(fields)!r}; "
                    + ("a TSV field cannot hold a tab: remove the extra tab" if delimiter == "\t"
                       else 'quote a field that holds a comma ("a, b"), or remove the extra field')
                )
            rows.append({**dict(zip(header, fields)), "source": f"{path}:{start}"})
    return rows


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """One JSON object per line; blank lines are skipped."""
    path = Path(path)
    rows = []
    for number, line in enumerate(_read_lines(path), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise DataError(f"{path}:{number}: invalid JSON ({err.msg} at column {err.colno}); "
                            "a JSONL file holds one JSON object per line") from None
        if not isinstance(row, dict):
            raise DataError(f"{path}:{number}: expected a JSON object per line, got {type(row).__name__}")
        rows.append({**row, "source": f"{path}:{number}"})
    return rows


def read_json(path: str | os.PathLike) -> list[dict]:
    """A JSON file: a list of objects, or SQuAD's ``{"data": [{"paragraphs": [{"context", "qas"}]}]}``."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8-sig"))
    except json.JSONDecodeError as err:
        raise DataError(f"{path}:{err.lineno}: invalid JSON ({err.msg} at column {err.colno})") from None
    if isinstance(data, list):
        return [{**row, "source": f"{path}[{i}]"} for i, row in enumerate(data)]
    if isinstance(data, dict) and isinstance(data.get("data"), list):  # SQuAD v1/v2 layout
        rows = []
        for article in data["data"]:
            for paragraph in article.get("paragraphs", []):
                for qa in paragraph.get("qas", []):
                    answers = qa.get("answers", [])
                    rows.append({
                        "id": qa.get("id", str(len(rows))),
                        "question": qa["question"],
                        "context": paragraph["context"],
                        "answers": {"text": [a["text"] for a in answers],
                                    "answer_start": [a["answer_start"] for a in answers]},
                        "source": f"{path}[question {qa.get('id', len(rows))}]",
                    })
        return rows
    raise DataError(f"{path}: expected a JSON list of records or SQuAD's {{'data': [...]}} layout")


def read_text(path: str | os.PathLike) -> list[dict]:
    """Plain text as paragraphs (split at blank lines), each keeping its trailing newlines.

    Joining the ``text`` of all rows gives the file back exactly.
    """
    path = Path(path)
    rows, lines, start = [], [], 1
    for number, line in _lines_keepends(path):
        lines.append(line)
        if not line.strip():  # a blank line ends the paragraph
            rows.append({"text": "".join(lines), "source": f"{path}:{start}"})
            lines, start = [], number + 1
    if lines:
        rows.append({"text": "".join(lines), "source": f"{path}:{start}"})
    merged: list[dict] = []
    for row in rows:  # extra blank lines join the paragraph before them
        if merged and not row["text"].strip():
            merged[-1]["text"] += row["text"]
        elif merged and not merged[-1]["text"].strip():
            merged[-1] = {"text": merged[-1]["text"] + row["text"], "source": merged[-1]["source"]}
        else:
            merged.append(row)
    return [r for r in merged if r["text"].strip()]


def _lines_keepends(path: Path):
    try:
        with open(path, encoding="utf-8-sig") as f:
            yield from enumerate(f, start=1)
    except UnicodeDecodeError as err:
        raise _not_utf8(path, err) from None


def _not_utf8(path: Path, err: UnicodeDecodeError) -> DataError:
    """Where the first non-UTF-8 byte is (file:line) and how to convert the file."""
    data = path.read_bytes()  # a streaming decoder's err.start is relative to its chunk: find the byte again
    try:
        data.decode("utf-8-sig")
    except UnicodeDecodeError as whole:
        err = whole
    line = data[: err.start].count(b"\n") + 1
    return DataError(
        f"{path}:{line}: not UTF-8 text (byte {err.object[err.start:err.start + 1]!r}: {err.reason}); "
        "re-save the file as UTF-8, e.g. iconv -f latin1 -t utf-8 FILE > FILE.utf8"
    )
