"""Data sources: the Hugging Face hub, an original GLUE folder, and the user's own files.

    from peftlab.tasks import get_task, load_split
    df = load_split(get_task("sst2"), "train", source="glue_dir", glue_dir=Path("glue_data"))

Every loader returns the same canonical DataFrame, whatever the source:

    text_a  str      first text, normalised by `normalise_text`
    text_b  str      second text (pair tasks only)
    label   int64    class id in the task's label order; float64 for regression
    row     int64    where the example came from, so any later error can point at it:
                     text files (TSV, CSV, JSONL): 1-based line number, header line counted;
                     hub splits and Parquet tables: 0-based index in the split/table

Loaders never drop or repair rows: a malformed row is a `DataError` naming the file and line.
Canonical splits are "train" and "eval" (the hub's `task.eval_split`, the GLUE dev file).
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import os
import unicodedata
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from peftlab.errors import DataError, SpecError
from peftlab.tasks.registry import SPLITS, TaskDef

SOURCES = ("hub", "glue_dir", "files")
DATA_DIR_ENV = "PEFTLAB_DATA_DIR"  # where source "glue_dir" looks when no folder is passed
FILE_FORMATS = {
    ".csv": "csv",
    ".tsv": "tsv",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".parquet": "parquet",
    ".pq": "parquet",
}
CANONICAL_COLUMNS = ("text_a", "text_b", "label")

# The rule, and why it matters for a readout of one token (the report leaves the second out for
# a study whose head reads no single token, e.g. mean pooling).
NORMALISATION_RULE_TEXT = (
    "Every text field is normalised to Unicode NFC and stripped of leading and trailing "
    "whitespace (spaces, tabs, newlines and other Unicode whitespace); inner whitespace and "
    "letter case are kept."
)
STRIP_RATIONALE = (
    "Stripping matters because every SST-2 sentence ends with a space, which a byte-level BPE "
    "tokenizer encodes as a content-free final token: the position a Llama classification head "
    "and last-token pooling read."
)
NORMALISATION_RULE = f"{NORMALISATION_RULE_TEXT} {STRIP_RATIONALE}"


KEPT_WHITESPACE_RULE = (
    "Every text field is normalised to Unicode NFC; leading and trailing whitespace is kept "
    "(data.strip_whitespace: false), so a trailing space a tokenizer encodes as its own final "
    "token stays where a Llama classification head and last-token pooling read."
)


def normalise_text(s: str, strip: bool = True) -> str:
    """Normalise one text field; every loader applies this to every text.

    Rule: Unicode NFC, then strip leading and trailing whitespace (`str.strip`); inner whitespace
    and case are kept. Why: SST-2 sentences all end with a space that byte-level BPE turns into a
    final content-free token, exactly where a Llama classification head reads. The same wording,
    for reports, is `NORMALISATION_RULE`. strip=False (the spec's `data.strip_whitespace: false`,
    to reproduce a study that read the text as distributed) keeps the whitespace:
    `KEPT_WHITESPACE_RULE`.
    """
    text = unicodedata.normalize("NFC", s)
    return text.strip() if strip else text


# --------------------------------------------------------------------------------------------
# Original GLUE folder
# --------------------------------------------------------------------------------------------


def glue_root(root: Path, folder: str) -> Path:
    """The GLUE folder of a data folder: `root`, or its `glue` subfolder when the task's folder
    (e.g. SST-2) is there and not in `root` (one --data-dir holding glue/ and e2e/, as
    `find_e2e_dir` looks for an `e2e` subfolder)."""
    root = Path(root)
    if not (root / folder).is_dir() and (root / "glue" / folder).is_dir():
        return root / "glue"
    return root


def load_glue_dir(task: TaskDef, root: Path, split: str, *, strip: bool = True) -> pd.DataFrame:
    """Read canonical `split` of `task` from an original GLUE folder: `<root>/<folder>/<file>`
    (or `<root>/glue/<folder>/<file>`, `glue_root`).

    Files are tab-separated and NOT quoted: many MRPC fields start with `"`, and default CSV
    quoting silently swallows 98 train rows. Every line must have the layout's field count.
    """
    _check_split(split)
    layout = task.glue
    if layout is None:
        raise SpecError(
            f"task {task.name!r} has no GLUE folder layout; use source 'hub' or 'files'"
        )
    filename = layout.file_for(split)
    root = glue_root(Path(root), layout.folder)
    path = root / layout.folder / filename
    if not path.is_file():
        what = "folder" if not root.is_dir() else "file"
        raise DataError(
            f"GLUE {what} not found: {path if what == 'file' else root}. A GLUE data folder holds "
            f"one folder per task (or a glue/ subfolder does), e.g. <dir>/SST-2/train.tsv and "
            f"<dir>/SST-2/dev.tsv; "
            f"task {task.name!r} needs <dir>/{layout.folder}/{filename}"
        )

    header, rows, lines = _read_delimited(
        path,
        delimiter="\t",
        quoting=csv.QUOTE_NONE,
        has_header=layout.header,
        num_fields=layout.num_fields,
    )
    ia = _column_position(layout.text_a, header, path)
    ib = None if layout.text_b is None else _column_position(layout.text_b, header, path)
    il = _column_position(layout.label, header, path)

    # Plain csv module and per-column lists: SST-2 train (67k rows) loads in about 0.2 s, and
    # every line's width has already been checked, which pandas' parser would not report by line.
    text_a = [normalise_text(r[ia], strip) for r in rows]
    text_b = None if ib is None else [normalise_text(r[ib], strip) for r in rows]
    raw_labels = [r[il] for r in rows]
    if not task.has_classes:
        labels = [
            _float_label(value, f"{path}: line {line}")
            for value, line in zip(raw_labels, lines, strict=True)
        ]
    else:
        label_map = (
            dict(layout.label_map)
            if layout.label_map is not None
            else {str(i): i for i in range(len(task.label_names))}
        )
        labels = []
        for value, line in zip(raw_labels, lines, strict=True):
            label = label_map.get(value)
            if label is None:
                raise DataError(
                    f"{path}: line {line}: label {value!r} is not in the label set of task "
                    f"{task.name!r}; allowed values: {', '.join(label_map)}"
                )
            labels.append(label)
    return _frame(task, text_a, text_b, labels, lines)


def _column_position(column: str | int, header: list[str] | None, path: Path) -> int:
    """Position of a layout column: looked up by name in the header, or given as a position."""
    if isinstance(column, int):
        return column
    assert header is not None  # guaranteed by the layout check: named columns need a header
    if column not in header:
        raise DataError(f"{path}: the header has no column {column!r}; found: {', '.join(header)}")
    return header.index(column)


def _read_delimited(
    path: Path, *, delimiter: str, quoting: int, has_header: bool, num_fields: int | None
) -> tuple[list[str] | None, list[list[str]], list[int]]:
    """Read a delimited text file strictly: (header, records, 1-based start line of each record).

    Every record must have `num_fields` fields (or, if None, as many as the header). Empty lines
    are allowed only at the end of the file, where they carry nothing; anywhere else they would
    hide a broken record, so they are errors. `utf-8-sig` drops a byte-order mark (MRPC has one).
    """
    header: list[str] | None = None
    rows: list[list[str]] = []
    lines: list[int] = []
    expected = num_fields
    first_blank = 0
    end = 0  # last physical line read so far
    try:
        with path.open(encoding="utf-8-sig", newline="") as f:
            reader = csv.reader(f, delimiter=delimiter, quoting=quoting)
            for fields in reader:
                start, end = end + 1, reader.line_num
                if not fields:
                    first_blank = first_blank or start
                    continue
                if first_blank:
                    raise DataError(f"{path}: line {first_blank} is empty (only the end may be)")
                if has_header and header is None:
                    header = fields
                    if expected is None:
                        expected = len(header)
                    elif len(header) != expected:
                        raise DataError(
                            f"{path}: line {start} (header) has {len(header)} fields, expected "
                            f"{expected}; found: {' | '.join(header)}"
                        )
                    continue
                if expected is None:
                    expected = len(fields)
                if len(fields) != expected:
                    like = "" if header is None else f" like the header ({' | '.join(header)})"
                    sep = "tab" if delimiter == "\t" else repr(delimiter)
                    raise DataError(
                        f"{path}: line {start} has {len(fields)} fields, "
                        f"expected {expected}{like}. Fields are {sep}-separated"
                        + (" and never quoted." if quoting == csv.QUOTE_NONE else ".")
                    )
                rows.append(fields)
                lines.append(start)
    except UnicodeDecodeError as err:
        raise DataError(f"{path}: near line {end + 1}: not UTF-8 text ({err.reason})") from err
    except csv.Error as err:
        raise DataError(f"{path}: line {end + 1}: {err}") from err
    if header is None and not rows:
        raise DataError(f"{path}: the file is empty")
    if not rows:
        raise DataError(f"{path}: the file has a header but no data rows")
    return header, rows, lines


# --------------------------------------------------------------------------------------------
# Hugging Face hub
# --------------------------------------------------------------------------------------------


def load_hub(
    task: TaskDef,
    split: str,
    revision: str | None = None,
    cache_dir: Path | str | None = None,
    *,
    strip: bool = True,
) -> pd.DataFrame:
    """Load canonical `split` of `task` with `datasets.load_dataset(task.hub.path, ...)`.

    `task.hub.path` may also be a local folder of data files (that is how tests run offline).
    Pin `revision` (a commit hash) for reproducible studies. `row` is the index in the hub split.
    """
    _check_split(split)
    layout = task.hub
    if layout is None:
        raise SpecError(f"task {task.name!r} has no hub layout; use source 'glue_dir' or 'files'")
    hub_split = "train" if split == "train" else task.eval_split
    where = f"dataset {layout.path!r} (config {layout.config!r}, split {hub_split!r})"

    import datasets  # deferred: importing datasets takes about a second and only this needs it

    try:
        ds = datasets.load_dataset(
            layout.path,
            layout.config,
            split=hub_split,
            revision=revision,
            cache_dir=None if cache_dir is None else str(cache_dir),
        )
    except OSError as err:
        # ConnectionError, timeouts, HTTP and not-found errors from datasets/huggingface_hub all
        # derive from OSError. Offline, the hub retries for ~23 s before landing here.
        raise DataError(
            f"cannot load {where} from the Hugging Face hub: {err}. Without network access, pass "
            f"a local GLUE folder (--data-dir or {DATA_DIR_ENV}=<dir>, holding e.g. "
            "<dir>/SST-2/train.tsv), or set HF_HUB_OFFLINE=1 to use a copy already in the cache."
        ) from err
    except ValueError as err:
        # datasets raises ValueError for an unknown config or split name.
        raise DataError(f"cannot load {where}: {err}") from err

    wanted = [*layout.text_columns, layout.label_column]
    missing = [c for c in wanted if c not in ds.column_names]
    if missing:
        raise DataError(
            f"{where} has no column(s) {', '.join(missing)}; found: {', '.join(ds.column_names)}"
        )
    table = ds.select_columns(wanted).to_pandas()
    if table.empty:
        raise DataError(f"{where} is empty")

    texts = []
    for column in layout.text_columns:
        values = table[column].tolist()
        for i, value in enumerate(values):
            if not isinstance(value, str):
                raise DataError(f"{where}: index {i}: column {column!r} holds {value!r}, not text")
        texts.append([normalise_text(v, strip) for v in values])

    raw = table[layout.label_column]
    if not task.has_classes:
        # Hub scores are float32: take their shortest decimal form (3.8, not 3.7999999523),
        # so labels (and split checksums) agree with the GLUE files' "3.800".
        values = raw.to_numpy(dtype=np.float32) if raw.dtype == np.float32 else raw.to_numpy()
        labels = [_float_label(str(v), f"{where}: index {i}") for i, v in enumerate(values)]
    else:
        labels = raw.tolist()
        for i, value in enumerate(labels):
            if (
                isinstance(value, bool)
                or not isinstance(value, (int, np.integer))
                or not (0 <= value < len(task.label_names))
            ):
                hint = " (hub test splits carry no labels: -1)" if value == -1 else ""
                raise DataError(
                    f"{where}: index {i}: label {value!r} is not a class id "
                    f"0..{len(task.label_names) - 1} of task {task.name!r}{hint}"
                )
    text_b = texts[1] if task.is_pair else None
    return _frame(task, texts[0], text_b, labels, list(range(len(table))))


# --------------------------------------------------------------------------------------------
# The user's own files
# --------------------------------------------------------------------------------------------


def load_files(
    path: Path | str,
    *,
    columns: dict[str, str],
    task: TaskDef,
    fmt: str | None = None,
    strip: bool = True,
) -> pd.DataFrame:
    """Load the user's CSV, TSV, JSONL or Parquet file as a canonical DataFrame.

    `columns` maps canonical names to the file's columns, e.g. {"text_a": "review",
    "label": "stars"}; `text_b` is required exactly for pair tasks. `fmt` ("csv", "tsv",
    "jsonl", "parquet") defaults to the file suffix. CSV follows RFC 4180 quoting; TSV is read
    like GLUE files, tab-separated with no quoting. Labels may be class ids (0, "1") or label
    names ("positive"); a string equal to a label name is read as that name first.
    Empty texts and labels outside the set are errors naming the file and line (or row).
    """
    path = Path(path)
    fmt = _file_format(path, fmt)
    if task.kind == "generation":
        return _load_generation_file(path, fmt, columns, strip)
    _check_column_mapping(columns, task)
    table, rows, unit = _read_user_table(path, fmt, list(columns.values()))

    for canonical, name in columns.items():
        if name not in table:
            raise DataError(
                f"{path}: no column {name!r} (mapped to {canonical}); "
                f"found: {', '.join(map(str, table))}"
            )

    texts = {}
    for canonical in ("text_a", "text_b"):
        if canonical not in columns:
            continue
        name = columns[canonical]
        values = []
        for value, row in zip(table[name], rows, strict=True):
            if not isinstance(value, str):
                raise DataError(
                    f"{path}: {unit} {row}: column {name!r} ({canonical}) holds {value!r}, not text"
                )
            text = normalise_text(value, strip)
            if not text.strip():  # whitespace only is empty, whether or not it is kept
                raise DataError(f"{path}: {unit} {row}: column {name!r} ({canonical}) is empty")
            values.append(text)
        texts[canonical] = values

    label_column = columns["label"]
    labels = [
        _user_label(value, task, f"{path}: {unit} {row}: column {label_column!r}")
        for value, row in zip(table[label_column], rows, strict=True)
    ]
    return _frame(task, texts["text_a"], texts.get("text_b"), labels, rows)


def _file_format(path: Path, fmt: str | None) -> str:
    formats = sorted(set(FILE_FORMATS.values()))
    if fmt is None:
        fmt = FILE_FORMATS.get(path.suffix.lower())
        if fmt is None:
            raise DataError(
                f"{path}: cannot tell the format from the suffix {path.suffix!r}; use one of "
                f"{', '.join(FILE_FORMATS)} or pass the format ({', '.join(formats)})"
            )
    if fmt not in formats:
        raise DataError(f"unknown data format {fmt!r}; use one of {', '.join(formats)}")
    return fmt


def _check_column_mapping(columns: dict[str, str], task: TaskDef) -> None:
    """The mapping must name text_a, label, and text_b exactly when the task is a pair task."""
    unknown = [c for c in columns if c not in CANONICAL_COLUMNS]
    if unknown:
        raise SpecError(
            f"column mapping: unknown key(s) {', '.join(map(repr, unknown))}; "
            f"keys are {', '.join(CANONICAL_COLUMNS)}"
        )
    required = ["text_a", "text_b", "label"] if task.is_pair else ["text_a", "label"]
    missing = [c for c in required if c not in columns]
    if missing:
        raise SpecError(f"column mapping for task {task.name!r} needs {', '.join(missing)}")
    if "text_b" in columns and not task.is_pair:
        raise SpecError(f"column mapping: task {task.name!r} has one text, so no text_b")


def _read_user_delimited(path: Path, fmt: str) -> tuple[dict[str, list], list[int], str]:
    """CSV (quoted, RFC 4180) or TSV (unquoted, like GLUE) with a header, as columns by name."""
    delimiter, quoting = (",", csv.QUOTE_MINIMAL) if fmt == "csv" else ("\t", csv.QUOTE_NONE)
    header, rows, lines = _read_delimited(
        path, delimiter=delimiter, quoting=quoting, has_header=True, num_fields=None
    )
    assert header is not None
    duplicated = sorted({name for name in header if header.count(name) > 1})
    if duplicated:
        raise DataError(f"{path}: the header repeats column(s) {', '.join(duplicated)}")
    table = {name: [r[i] for r in rows] for i, name in enumerate(header)}
    return table, lines, "line"


def _read_jsonl(path: Path, needed: list[str]) -> tuple[dict[str, list], list[int], str]:
    """One JSON object per line. Every needed key must be present in every object."""
    records: list[dict] = []
    lines: list[int] = []
    first_blank = 0
    try:
        with path.open(encoding="utf-8-sig") as f:
            for n, line in enumerate(f, start=1):
                if not line.strip():
                    first_blank = first_blank or n
                    continue
                if first_blank:
                    raise DataError(f"{path}: line {first_blank} is empty (only the end may be)")
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as err:
                    raise DataError(f"{path}: line {n} is not valid JSON: {err.msg}") from err
                if not isinstance(record, dict):
                    raise DataError(
                        f"{path}: line {n}: expected a JSON object, got {type(record).__name__}"
                    )
                records.append(record)
                lines.append(n)
    except UnicodeDecodeError as err:
        raise DataError(f"{path}: not UTF-8 text ({err.reason})") from err
    if not records:
        raise DataError(f"{path}: the file has no records")

    found: dict[str, None] = {}  # every key seen, in first-seen order
    for record in records:
        found.update(dict.fromkeys(record))
    for name in needed:
        if name not in found:
            continue  # absent everywhere: load_files reports it with the keys found
        for record, n in zip(records, lines, strict=True):
            if name not in record:
                raise DataError(f"{path}: line {n} has no key {name!r}")
    table = {name: [record.get(name) for record in records] for name in found}
    return table, lines, "line"


def _read_parquet(path: Path) -> tuple[dict[str, list], list[int], str]:
    try:
        frame = pd.read_parquet(path)
    except (OSError, ValueError) as err:  # pyarrow's ArrowInvalid is a ValueError
        raise DataError(f"{path}: not a readable Parquet file ({err})") from err
    if frame.empty:
        raise DataError(f"{path}: the table has no rows")
    # Missing values (None/NaN) stay as they are and fail the text/label checks by row.
    table = {name: frame[name].astype(object).tolist() for name in frame.columns}
    return table, list(range(len(frame))), "row"


def _user_label(value: Any, task: TaskDef, where: str) -> int | float:
    """A class id from an id or a label name; a float for regression. DataError otherwise."""
    if not task.has_classes:
        if isinstance(value, (bool, np.bool_)) or not isinstance(
            value, (str, int, float, np.integer, np.floating)
        ):
            raise DataError(f"{where}: label {value!r} is not a number")
        return _float_label(str(value), where)

    names = task.label_names
    assert names is not None
    if isinstance(value, str):
        text = value.strip()
        if text in names:
            return names.index(text)
        try:
            number = float(text)  # "1" and "1.0" (a CSV written from a float column) are ids
        except ValueError:
            number = math.nan
        if number.is_integer() and 0 <= number < len(names):
            return int(number)
    elif isinstance(value, (bool, np.bool_)):
        pass  # True/False is no class id, even though bool is an int subclass
    elif isinstance(value, (int, np.integer)):
        if 0 <= value < len(names):
            return int(value)
    elif (
        # Parquet/JSON may store ids as 1.0 (e.g. an int column with a missing value).
        isinstance(value, (float, np.floating))
        and float(value).is_integer()
        and 0 <= value < len(names)
    ):
        return int(value)
    raise DataError(
        f"{where}: label {value!r} is not in the label set of task {task.name!r}; "
        f"allowed: ids 0..{len(names) - 1} or names {', '.join(names)}"
    )


def _float_label(value: str, where: str) -> float:
    try:
        label = float(value)
    except ValueError:
        raise DataError(f"{where}: label {value!r} is not a number") from None
    if not math.isfinite(label):
        raise DataError(f"{where}: label {value!r} is not a finite number")
    return label


# --------------------------------------------------------------------------------------------
# One interface over the three sources
# --------------------------------------------------------------------------------------------


def load_split(
    task: TaskDef,
    split: str,
    *,
    source: str,
    glue_dir: Path | str | None = None,
    files: dict[str, Path] | None = None,
    columns: dict[str, str] | None = None,
    revision: str | None = None,
    cache_dir: Path | str | None = None,
    strip: bool = True,
) -> pd.DataFrame:
    """Load canonical `split` ("train" or "eval") of `task` from `source`.

    strip: strip leading and trailing whitespace from every text (`normalise_text`); False keeps
    it (the spec's `data.strip_whitespace: false`).

    source "hub":      `load_hub(task, split, revision, cache_dir)`
    source "glue_dir": `load_glue_dir(task, glue_dir, split)`; glue_dir defaults to the
                       PEFTLAB_DATA_DIR environment variable
    source "files":    `load_files(files[split], columns=columns, task=task)`; no (or an
                       empty) columns mapping means the canonical names (text_a, [text_b], label)
    """
    _check_split(split)
    if task.builtin is not None and source != "files":
        return BUILTIN_LOADERS[task.builtin](task, split, folder=glue_dir, strip=strip)
    if source == "hub":
        return load_hub(task, split, revision=revision, cache_dir=cache_dir, strip=strip)
    if source == "glue_dir":
        if glue_dir is None:
            glue_dir = os.environ.get(DATA_DIR_ENV) or None
        if glue_dir is None:
            raise DataError(
                "source 'glue_dir' needs a GLUE data folder: pass --data-dir <dir> or set "
                f"{DATA_DIR_ENV}=<dir> (a folder holding e.g. <dir>/SST-2/train.tsv)"
            )
        return load_glue_dir(task, Path(glue_dir), split, strip=strip)
    if source == "files":
        if not files or split not in files:
            raise SpecError(
                f"source 'files' needs a file for split {split!r}; "
                f"given: {', '.join(files or {}) or 'none'}"
            )
        if not columns:  # None or {}: the file already uses the canonical column names
            columns = {"text_a": "text_a", "label": "label"}
            if task.is_pair:
                columns["text_b"] = "text_b"
        return load_files(files[split], columns=columns, task=task, strip=strip)
    raise SpecError(f"unknown data source {source!r}; use one of {', '.join(SOURCES)}")


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise SpecError(f"unknown split {split!r}; use one of {', '.join(SPLITS)}")


def _frame(
    task: TaskDef,
    text_a: list[str],
    text_b: list[str] | None,
    labels: list[int] | list[float],
    rows: list[int],
) -> pd.DataFrame:
    """Assemble the canonical DataFrame with fixed dtypes."""
    data: dict[str, Any] = {"text_a": text_a}
    if text_b is not None:
        data["text_b"] = text_b
    data["label"] = np.asarray(labels, dtype=np.int64 if task.has_classes else np.float64)
    data["row"] = np.asarray(rows, dtype=np.int64)
    return pd.DataFrame(data)


# --------------------------------------------------------------------------------------------
# Helpers for studies: subsets, summaries, provenance
# --------------------------------------------------------------------------------------------


def subsample(df: pd.DataFrame, n: int | None, seed: int) -> pd.DataFrame:
    """`n` rows chosen at random without replacement (numpy `default_rng(seed)`), in their
    original order, index reset. The same (df, n, seed) always gives the same rows; n=None or
    n >= len(df) returns every row.
    """
    if n is not None and n < 1:
        raise SpecError(f"subsample size must be a positive integer or None, got {n}")
    if n is None or n >= len(df):
        return df.reset_index(drop=True)
    chosen = np.random.default_rng(seed).choice(len(df), size=n, replace=False)
    chosen.sort()  # keep file order, so a subsample reads like the source
    return df.iloc[chosen].reset_index(drop=True)


def describe(df: pd.DataFrame, task: TaskDef) -> dict:
    """{"rows": n, "label_counts": {label name: count}} in label order (zeros included);
    for regression {"rows": n, "label_stats": {"min", "mean", "max"}} instead of counts.
    """
    summary: dict[str, Any] = {"rows": int(len(df))}
    labels = df["label"].to_numpy()
    if task.kind == "generation":
        inputs = df["input"].nunique() if len(df) else 0
        summary["inputs"] = int(inputs)
        summary["references_per_input"] = float(len(df) / inputs) if inputs else None
        return summary
    if not task.has_classes:
        empty = len(labels) == 0
        summary["label_stats"] = {
            "min": None if empty else float(labels.min()),
            "mean": None if empty else float(labels.mean()),
            "max": None if empty else float(labels.max()),
        }
    else:
        assert task.label_names is not None
        labels = labels.astype(np.int64)
        if len(labels) and (labels.min() < 0 or labels.max() >= len(task.label_names)):
            raise DataError(
                f"labels of task {task.name!r} must be ids 0..{len(task.label_names) - 1}; "
                f"found {labels.min()}..{labels.max()}"
            )
        counts = np.bincount(labels, minlength=len(task.label_names))
        summary["label_counts"] = {
            name: int(count) for name, count in zip(task.label_names, counts, strict=True)
        }
    return summary


def file_checksum(path: Path | str) -> str:
    """sha256 hex digest of a file's bytes, read in 1 MiB chunks."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"cannot checksum {path}: file not found")
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def split_checksum(df: pd.DataFrame) -> str:
    """sha256 hex digest of a split's content: texts and labels in order, `row` excluded.

    The same examples give the same digest whichever source they came from (hub, GLUE folder,
    user file): texts are normalised again (NFC; whitespace is kept as the frame holds it, so text
    loaded with `strip=False` has its own digest), ids written as integers, regression labels
    with 7 significant digits (the hub stores STS-B scores as float32).
    """
    text_columns = [c for c in ("text_a", "text_b") if c in df.columns]
    digest = hashlib.sha256()
    digest.update(("\t".join([*text_columns, "label"]) + "\n").encode())
    labels = df["label"].to_numpy()
    if labels.dtype == object:  # generation: reference texts
        label_strings = [normalise_text(str(v), strip=False) for v in labels]
    elif np.issubdtype(labels.dtype, np.floating):
        label_strings = [format(float(v), ".7g") for v in labels]
    else:
        label_strings = [str(int(v)) for v in labels]
    columns = [[normalise_text(t, strip=False) for t in df[c].tolist()] for c in text_columns]
    # Each field is written as "<length>:<text>", so no text content can mimic a field boundary.
    for fields in zip(*columns, label_strings, strict=True):
        digest.update("".join(f"{len(f)}:{f}" for f in fields).encode())
    return digest.hexdigest()


# --------------------------------------------------------------------------------------------
# Generation tasks: one row per reference, rows of one input grouped under its id
# --------------------------------------------------------------------------------------------


def generation_frame(inputs: list[str], targets: list[str], rows: list[int]) -> pd.DataFrame:
    """The canonical frame of a generation split: text_a (the input), label (a reference text),
    input (0-based id of the distinct input, in order of first appearance) and row. Rows with
    the same input are the references of one input, wherever they stand in the file."""
    ids: dict[str, int] = {}
    input_ids = [ids.setdefault(text, len(ids)) for text in inputs]
    return pd.DataFrame({
        "text_a": inputs,
        "label": pd.Series(targets, dtype=object),
        "input": np.asarray(input_ids, dtype=np.int64),
        "row": np.asarray(rows, dtype=np.int64),
    })


def _read_user_table(path: Path, fmt: str, names: list[str]
                     ) -> tuple[dict[str, list], list[int], str]:
    """(table, file line or row of each record, "line" or "row") of a user's data file in
    format `fmt`; a missing or empty file is a DataError naming it. `names`: the columns a JSONL
    record must hold."""
    if not path.is_file():
        raise DataError(f"data file not found: {path}")
    if path.stat().st_size == 0:
        raise DataError(f"{path}: the file is empty")
    if fmt in ("csv", "tsv"):
        return _read_user_delimited(path, fmt)
    if fmt == "jsonl":
        return _read_jsonl(path, names)
    return _read_parquet(path)


def _load_generation_file(path: Path, fmt: str, columns: dict[str, str],
                          strip: bool) -> pd.DataFrame:
    """A user's generation file: `columns` maps `prompt` and `target` to the file's columns.
    A missing column, a non-text or empty prompt or target is a DataError naming the file, the
    line (or Parquet row) and the column."""
    if set(columns) != {"prompt", "target"}:
        raise SpecError("column mapping of a generation task: map exactly `prompt` and `target` "
                        f"(got {', '.join(map(repr, columns)) or 'nothing'})")
    table, rows, unit = _read_user_table(path, fmt, list(columns.values()))
    values: dict[str, list[str]] = {}
    for canonical in ("prompt", "target"):
        name = columns[canonical]
        if name not in table:
            where = {"line": "line 1 (header)" if fmt in ("csv", "tsv") else f"line {rows[0]}",
                     "row": "row 0"}[unit]
            raise DataError(f"{path}: {where}: no column {name!r} (mapped to {canonical}); "
                            f"found: {', '.join(map(str, table))}")
        out = []
        for value, row in zip(table[name], rows, strict=True):
            if not isinstance(value, str):
                raise DataError(f"{path}: {unit} {row}: column {name!r} ({canonical}) holds "
                                f"{value!r}, not text")
            text = normalise_text(value, strip)
            if not text.strip():
                raise DataError(f"{path}: {unit} {row}: column {name!r} ({canonical}) is empty")
            out.append(text)
        values[canonical] = out
    return generation_frame(values["prompt"], values["target"], rows)


E2E_DIR_ENV = "PEFTLAB_E2E_DIR"
E2E_FILES = {"train": "trainset.csv", "dev": "devset.csv", "test": "testset_w_refs.csv"}


def _holds_e2e(folder: Path) -> bool:
    return (folder / E2E_FILES["test"]).is_file() and (folder / E2E_FILES["dev"]).is_file()


def find_e2e_dir(folder: Path | str | None = None) -> Path:
    """The E2E NLG folder: `folder` (the spec's data.e2e_dir, or --data-dir) when it holds the
    files or has an `e2e` subfolder that does, else PEFTLAB_E2E_DIR, else PEFTLAB_DATA_DIR the
    same way. DataError naming what was tried when none does."""
    tried: list[str] = []
    for candidate in (folder, os.environ.get(E2E_DIR_ENV), os.environ.get(DATA_DIR_ENV)):
        if not candidate:
            continue
        for f in (Path(candidate), Path(candidate) / "e2e"):
            if _holds_e2e(f):
                return f
            if str(f) not in tried:
                tried.append(str(f))
    raise DataError(
        "the E2E NLG data was not found: pass --data-dir <dir>, set data.e2e_dir or "
        f"{E2E_DIR_ENV} to a folder holding {E2E_FILES['dev']} and {E2E_FILES['test']} "
        f"(and {E2E_FILES['train']} for the full release)"
        + (f"; tried {', '.join(tried)}" if tried else ""))


def e2e_layout(folder: Path) -> dict[str, Any]:
    """Which files of an E2E folder a study reads: the official layout (trainset.csv present:
    train on it) or the development layout (train on devset.csv); both evaluate on
    testset_w_refs.csv. {"layout", "train", "eval"} with the file paths (provenance)."""
    folder = Path(folder)
    official = (folder / E2E_FILES["train"]).is_file()
    return {"layout": "official" if official else "development",
            "train": str(folder / E2E_FILES["train" if official else "dev"]),
            "eval": str(folder / E2E_FILES["test"])}


def load_e2e(task: TaskDef, split: str, *, folder: Path | str | None = None,
             strip: bool = True) -> pd.DataFrame:
    """Canonical `split` of the E2E NLG data (`e2e_layout` says which file), one row per
    reference; `input` numbers the MRs in file order, so subsampling by input keeps every
    reference of an MR on one side."""
    _check_split(split)
    path = Path(e2e_layout(find_e2e_dir(folder))[split])
    header, records, lines = _read_delimited(path, delimiter=",", quoting=csv.QUOTE_MINIMAL,
                                             has_header=True, num_fields=2)
    assert header is not None
    im, ir = _column_position("mr", header, path), _column_position("ref", header, path)
    mrs, refs = [], []
    for r, line in zip(records, lines, strict=True):
        mr, ref = normalise_text(r[im], strip), normalise_text(r[ir], strip)
        for name, text in (("mr", mr), ("ref", ref)):
            if not text.strip():
                raise DataError(f"{path}: line {line}: column {name!r} is empty")
        mrs.append(mr)
        refs.append(ref)
    return generation_frame(mrs, refs, lines)


# Loaders of tasks with a layout of their own (`TaskDef.builtin`):
# (task, split, folder=..., strip=...) -> canonical frame.
BUILTIN_LOADERS = {"e2e": load_e2e}


def subsample_inputs(df: pd.DataFrame, n: int | None, seed: int, *,
                     references: int | None = None) -> pd.DataFrame:
    """A generation split cut by input, never by row: `n` inputs chosen at random (numpy
    `default_rng(seed)`, in file order; None: all), every reference of each kept (or its first
    `references`). The same (df, n, seed) always gives the same inputs; ids are renumbered
    0..n-1 in order."""
    ids = df["input"].drop_duplicates().to_numpy()
    if n is not None and n < len(ids):
        chosen = np.sort(np.random.default_rng(seed).choice(len(ids), size=n, replace=False))
        ids = ids[chosen]
    out = df[df["input"].isin(set(ids.tolist()))]
    if references is not None:
        out = out[out.groupby("input").cumcount() < references]
    out = out.reset_index(drop=True)
    remap = {old: new for new, old in enumerate(out["input"].drop_duplicates())}
    out["input"] = out["input"].map(remap).astype(np.int64)
    return out
