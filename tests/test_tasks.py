"""Tests for the task registry and data sources: `pytest tests/test_tasks.py -q`.

Real GLUE files come from ../shared/data/glue (tests that need them skip when it is absent);
every other file is written by the test itself. Nothing here touches the network.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import unicodedata
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from peftlab.errors import DataError, SpecError
from peftlab.tasks import (
    NORMALISATION_RULE,
    TaskDef,
    describe,
    file_checksum,
    get_task,
    load_files,
    load_glue_dir,
    load_hub,
    load_split,
    make_file_task,
    normalise_text,
    register_task,
    split_checksum,
    subsample,
    task_names,
)

GLUE_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "glue"
needs_glue = pytest.mark.skipif(
    not GLUE_DIR.is_dir(), reason=f"GLUE data folder not found at {GLUE_DIR}"
)


def write(path: Path, text: str, encoding: str = "utf-8") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding=encoding)
    return path


@pytest.fixture(scope="module")
def sst2_train() -> pd.DataFrame:
    if not GLUE_DIR.is_dir():
        pytest.skip(f"GLUE data folder not found at {GLUE_DIR}")
    return load_glue_dir(get_task("sst2"), GLUE_DIR, "train")


# ---- real GLUE files: exact counts from shared/data/glue/README.md -------------------------


@needs_glue
@pytest.mark.parametrize(
    "task_name, split, rows, counts",
    [
        ("sst2", "train", 67_349, {"negative": 29_780, "positive": 37_569}),
        ("sst2", "eval", 872, {"negative": 428, "positive": 444}),
        ("mrpc", "train", 3_668, {"not_equivalent": 1_194, "equivalent": 2_474}),
        ("mrpc", "eval", 408, {"not_equivalent": 129, "equivalent": 279}),
        ("rte", "train", 2_490, {"entailment": 1_249, "not_entailment": 1_241}),
        ("rte", "eval", 277, {"entailment": 146, "not_entailment": 131}),
    ],
)
def test_glue_counts_match_readme(task_name, split, rows, counts):
    task = get_task(task_name)
    df = load_glue_dir(task, GLUE_DIR, split)
    assert describe(df, task) == {"rows": rows, "label_counts": counts}
    expected_columns = (
        ["text_a", "text_b", "label", "row"] if task.is_pair else ["text_a", "label", "row"]
    )
    assert list(df.columns) == expected_columns
    assert df["label"].dtype == np.int64 and df["row"].dtype == np.int64


@needs_glue
@pytest.mark.parametrize(
    "split, filename, lost_to_quoting", [("train", "train.tsv", 98), ("eval", "dev.tsv", 19)]
)
def test_mrpc_keeps_every_line(split, filename, lost_to_quoting):
    # Default CSV quoting merges MRPC lines whose fields start with '"' (98 train rows lost):
    # every physical line after the header must become exactly one row, numbered by its line.
    path = GLUE_DIR / "MRPC" / filename
    n_lines = len(path.read_bytes().splitlines())
    df = load_glue_dir(get_task("mrpc"), GLUE_DIR, split)
    assert len(df) == n_lines - 1
    assert df["row"].tolist() == list(range(2, n_lines + 1))
    with path.open(encoding="utf-8-sig", newline="") as f:
        quoted_reader_rows = sum(1 for _ in csv.reader(f, delimiter="\t")) - 1
    assert len(df) - quoted_reader_rows == lost_to_quoting  # the trap this test guards against


@needs_glue
def test_sst2_text_is_stripped(sst2_train):
    raw_first = (GLUE_DIR / "SST-2" / "train.tsv").read_text().splitlines()[1].split("\t")[0]
    assert raw_first.endswith(" ")  # the raw file has the trailing space...
    texts = sst2_train["text_a"].tolist()
    assert texts[0] == raw_first.strip()
    assert not any(t != t.strip() or not t for t in texts)  # ...the loaded text has none


@needs_glue
def test_sst2_train_loads_in_one_pass(monkeypatch):
    """What keeps the 67k-row SST-2 train file quick to load (benchmarks/glue_load_speed.py
    times it): the file is parsed once and every text normalised once, into column lists."""
    from peftlab.tasks import sources

    calls = {"read": 0, "normalise": 0}
    read, normalise = sources._read_delimited, sources.normalise_text

    def counted_read(*args, **kwargs):
        calls["read"] += 1
        return read(*args, **kwargs)

    def counted_normalise(*args, **kwargs):
        calls["normalise"] += 1
        return normalise(*args, **kwargs)

    monkeypatch.setattr(sources, "_read_delimited", counted_read)
    monkeypatch.setattr(sources, "normalise_text", counted_normalise)
    df = load_glue_dir(get_task("sst2"), GLUE_DIR, "train")
    n_lines = len((GLUE_DIR / "SST-2" / "train.tsv").read_bytes().splitlines())
    assert len(df) == n_lines - 1 > 60_000
    assert calls == {"read": 1, "normalise": len(df)}  # SST-2 has one text per example


@needs_glue
def test_file_checksum_matches_readme():
    digest = file_checksum(GLUE_DIR / "SST-2" / "dev.tsv")
    assert digest == "54a9c12c77e402fc14d6a66a506f24d999f596b0176eb777c972cccc2f9cc4b0"


@needs_glue
def test_load_split_glue_dir_from_environment(monkeypatch):
    monkeypatch.setenv("PEFTLAB_DATA_DIR", str(GLUE_DIR))
    df = load_split(get_task("rte"), "eval", source="glue_dir")
    assert len(df) == 277


# ---- GLUE folder reader on files written here ----------------------------------------------


def sst2_folder(tmp_path: Path, lines: list[str], name: str = "train.tsv") -> Path:
    write(tmp_path / "SST-2" / name, "".join(line + "\n" for line in lines))
    return tmp_path


def test_wrong_field_count_names_file_and_line(tmp_path):
    root = sst2_folder(tmp_path, ["sentence\tlabel", "a \t1", "b \t0", "c \t1", "d \textra\t0"])
    with pytest.raises(DataError) as err:
        load_glue_dir(get_task("sst2"), root, "train")
    message = str(err.value)
    assert str(root / "SST-2" / "train.tsv") in message
    assert "line 5" in message and "3 fields" in message and "expected 2" in message


def test_fields_starting_with_quotes_are_kept(tmp_path):
    # An unbalanced '"' must not swallow the following lines (GLUE files are never quoted).
    root = sst2_folder(
        tmp_path, ["sentence\tlabel", '" a quote opens \t1', "plain \t0", 'closes " \t1']
    )
    df = load_glue_dir(get_task("sst2"), root, "train")
    assert df["text_a"].tolist() == ['" a quote opens', "plain", 'closes "']
    assert df["row"].tolist() == [2, 3, 4]


def test_bom_header_and_columns_by_name(tmp_path):
    header = "Quality\t#1 ID\t#2 ID\t#1 String\t#2 String"
    write(
        tmp_path / "MRPC" / "dev.tsv",
        f"\ufeff{header}\n1\t11\t12\tFirst one .\tSecond one .\n0\t13\t14\tThird .\tFourth .\n",
    )
    df = load_glue_dir(get_task("mrpc"), tmp_path, "eval")
    assert df.to_dict("list") == {
        "text_a": ["First one .", "Third ."],
        "text_b": ["Second one .", "Fourth ."],
        "label": [1, 0],
        "row": [2, 3],
    }


def test_reordered_header_and_string_labels(tmp_path):
    write(
        tmp_path / "RTE" / "train.tsv",
        "label\tsentence2\tindex\tsentence1\nnot_entailment\tH0\t0\tP0\nentailment\tH1\t1\tP1\n",
    )
    df = load_glue_dir(get_task("rte"), tmp_path, "train")
    assert df["text_a"].tolist() == ["P0", "P1"]
    assert df["text_b"].tolist() == ["H0", "H1"]
    assert df["label"].tolist() == [1, 0]  # hub order: 0=entailment, 1=not_entailment


def test_missing_header_column(tmp_path):
    write(tmp_path / "RTE" / "train.tsv", "index\tpremise\tsentence2\tlabel\n0\tP\tH\tentailment\n")
    with pytest.raises(DataError, match="no column 'sentence1'.*found: index, premise"):
        load_glue_dir(get_task("rte"), tmp_path, "train")


def test_label_outside_set(tmp_path):
    write(
        tmp_path / "RTE" / "dev.tsv",
        "index\tsentence1\tsentence2\tlabel\n0\tP\tH\tentailment\n1\tP\tH\tmaybe\n",
    )
    with pytest.raises(DataError) as err:
        load_glue_dir(get_task("rte"), tmp_path, "eval")
    message = str(err.value)
    assert "dev.tsv" in message and "line 3" in message and "'maybe'" in message
    assert "entailment, not_entailment" in message


def test_missing_folder_and_file(tmp_path):
    with pytest.raises(DataError, match="SST-2/train.tsv"):
        load_glue_dir(get_task("sst2"), tmp_path / "nowhere", "train")
    with pytest.raises(DataError, match=r"not found: .*RTE/dev\.tsv.*<dir>/SST-2/train\.tsv"):
        load_glue_dir(get_task("rte"), tmp_path, "eval")


def test_empty_and_header_only_files(tmp_path):
    sst2_folder(tmp_path, [])
    with pytest.raises(DataError, match="train.tsv: the file is empty"):
        load_glue_dir(get_task("sst2"), tmp_path, "train")
    sst2_folder(tmp_path, ["sentence\tlabel"])
    with pytest.raises(DataError, match="header but no data rows"):
        load_glue_dir(get_task("sst2"), tmp_path, "train")


def test_blank_lines_only_allowed_at_end(tmp_path):
    root = sst2_folder(tmp_path, ["sentence\tlabel", "a \t1", "b \t0", "", ""])
    assert len(load_glue_dir(get_task("sst2"), root, "train")) == 2
    root = sst2_folder(tmp_path, ["sentence\tlabel", "a \t1", "", "b \t0"])
    with pytest.raises(DataError, match="line 3 is empty"):
        load_glue_dir(get_task("sst2"), root, "train")


def test_cola_has_no_header(tmp_path):
    write(
        tmp_path / "CoLA" / "train.tsv",
        "gj04\t1\t\tOur friends won't buy this analysis.\ngj04\t0\t*\tThey drank the pub.\n",
    )
    df = load_glue_dir(get_task("cola"), tmp_path, "train")
    assert df["text_a"].tolist() == ["Our friends won't buy this analysis.", "They drank the pub."]
    assert df["label"].tolist() == [1, 0]
    assert df["row"].tolist() == [1, 2]  # no header: the first line is a data row


def test_mnli_width_comes_from_each_header(tmp_path):
    train_cols = [
        "index",
        "promptID",
        "pairID",
        "genre",
        "s1b",
        "s2b",
        "s1p",
        "s2p",
        "sentence1",
        "sentence2",
        "label1",
        "gold_label",
    ]
    dev_cols = train_cols[:-1] + ["label2", "label3", "label4", "label5", "gold_label"]

    def row(cols, values):
        return "\t".join(values.get(c, "x") for c in cols)

    example = {"sentence1": "P", "sentence2": "H", "gold_label": "neutral"}
    for name, cols in (("train.tsv", train_cols), ("dev_matched.tsv", dev_cols)):
        write(tmp_path / "MNLI" / name, "\t".join(cols) + "\n" + row(cols, example) + "\n")
    for split in ("train", "eval"):
        df = load_glue_dir(get_task("mnli"), tmp_path, split)
        assert df[["text_a", "text_b", "label"]].values.tolist() == [["P", "H", 1]]


def test_stsb_regression_labels(tmp_path):
    cols = "index genre filename year old_index source1 source2 sentence1 sentence2 score"
    lines = [
        cols.replace(" ", "\t"),
        "0\tg\tf\ty\t1\ts\ts\tA .\tB .\t3.800",
        "1\tg\tf\ty\t2\ts\ts\tC\tD\t0",
    ]
    write(tmp_path / "STS-B" / "dev.tsv", "\n".join(lines) + "\n")
    task = get_task("stsb")
    df = load_glue_dir(task, tmp_path, "eval")
    assert df["label"].dtype == np.float64 and df["label"].tolist() == [3.8, 0.0]
    assert describe(df, task) == {"rows": 2, "label_stats": {"min": 0.0, "mean": 1.9, "max": 3.8}}


# ---- hub (through `datasets`, from a local folder: no network) -----------------------------


def test_hub_loads_through_datasets(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    data = tmp_path / "hub"
    data.mkdir()
    train = pd.DataFrame({"sentence": ["good film ", "bad film "], "label": [1, 0], "idx": [0, 1]})
    dev = pd.DataFrame({"sentence": ["fine "], "label": [1], "idx": [0]})
    train.to_parquet(data / "train.parquet")
    dev.to_parquet(data / "validation.parquet")
    sst2 = get_task("sst2")
    task = dataclasses.replace(sst2, hub=dataclasses.replace(sst2.hub, path=str(data), config=None))

    df = load_hub(task, "train", cache_dir=tmp_path / "cache")
    assert df.to_dict("list") == {
        "text_a": ["good film", "bad film"],
        "label": [1, 0],
        "row": [0, 1],
    }
    assert len(load_split(task, "eval", source="hub", cache_dir=tmp_path / "cache")) == 1

    # The same examples from a GLUE folder give the same content checksum.
    sst2_folder(tmp_path / "glue", ["sentence\tlabel", "good film \t1", "bad film \t0"])
    from_glue = load_glue_dir(sst2, tmp_path / "glue", "train")
    assert split_checksum(from_glue) == split_checksum(df)


def test_hub_float32_scores_keep_their_decimal_form(tmp_path):
    data = tmp_path / "hub"
    data.mkdir()
    scores = np.array([3.8, 0.2, 5.0], dtype=np.float32)
    frame = pd.DataFrame({"sentence1": ["a", "b", "c"], "sentence2": ["d", "e", "f"]})
    frame.assign(label=scores).to_parquet(data / "validation.parquet")
    stsb = get_task("stsb")
    task = dataclasses.replace(stsb, hub=dataclasses.replace(stsb.hub, path=str(data), config=None))
    df = load_hub(task, "eval", cache_dir=tmp_path / "cache")
    assert df["label"].tolist() == [3.8, 0.2, 5.0]  # not 3.799999952316284


def test_unreachable_hub_is_one_data_error(monkeypatch):
    import datasets

    def offline(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'nyu-mll/glue' on the Hub (LocalEntryNotFoundError)")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(DataError) as err:
        load_hub(get_task("sst2"), "train")
    message = str(err.value)
    assert "nyu-mll/glue" in message and "--data-dir" in message
    assert "PEFTLAB_DATA_DIR" in message and "HF_HUB_OFFLINE=1" in message


def test_hub_eval_split_is_task_specific(monkeypatch):
    import datasets

    calls = []

    def record(path, config, split, **kwargs):
        calls.append((path, config, split, kwargs.get("revision")))
        raise ConnectionError("offline")

    monkeypatch.setattr(datasets, "load_dataset", record)
    with pytest.raises(DataError):
        load_hub(get_task("mnli"), "eval", revision="abc123")
    assert calls == [("nyu-mll/glue", "mnli", "validation_matched", "abc123")]


# ---- user files -------------------------------------------------------------------------


USER_ROWS = [
    {"review": " Loved it ", "other": "Same", "stars": "positive"},
    {"review": "Hated it", "other": "Different", "stars": "0"},
    {"review": "Cafe\u0301 was fine", "other": "x", "stars": "1"},
]


def write_user_file(path: Path, fmt: str, rows: list[dict]) -> Path:
    if fmt in ("csv", "tsv"):
        pd.DataFrame(rows).to_csv(path, sep="," if fmt == "csv" else "\t", index=False)
    elif fmt == "jsonl":
        write(path, "".join(json.dumps(r) + "\n" for r in rows))
    else:
        pd.DataFrame(rows).to_parquet(path)
    return path


@pytest.mark.parametrize(
    "fmt, suffix", [("csv", ".csv"), ("tsv", ".tsv"), ("jsonl", ".jsonl"), ("parquet", ".parquet")]
)
def test_user_files_with_column_mapping(tmp_path, fmt, suffix):
    task = make_file_task("reviews", ["negative", "positive"], text_columns=["review", "other"])
    path = write_user_file(tmp_path / f"data{suffix}", fmt, USER_ROWS)
    columns = {"text_a": "review", "text_b": "other", "label": "stars"}
    df = load_files(path, columns=columns, task=task)
    assert df["text_a"].tolist() == ["Loved it", "Hated it", "Caf\u00e9 was fine"]  # NFC
    assert df["text_b"].tolist() == ["Same", "Different", "x"]
    assert df["label"].tolist() == [1, 0, 1]
    expected_rows = [0, 1, 2] if fmt == "parquet" else ([1, 2, 3] if fmt == "jsonl" else [2, 3, 4])
    assert df["row"].tolist() == expected_rows
    same = load_split(task, "train", source="files", files={"train": path}, columns=columns)
    pd.testing.assert_frame_equal(df, same)


def test_user_labels_as_ints_and_regression(tmp_path):
    task = make_file_task("three", ["a", "b", "c"])
    records = [{"t": "x", "y": 2}, {"t": "y", "y": 0.0}, {"t": "z", "y": "b"}]
    path = write(tmp_path / "d.jsonl", "".join(json.dumps(r) + "\n" for r in records))
    df = load_files(path, columns={"text_a": "t", "label": "y"}, task=task)
    assert df["label"].tolist() == [2, 0, 1]
    reg = make_file_task("score", None)
    assert reg.metrics == ("pearson", "spearman") and reg.num_labels == 1
    path = write(tmp_path / "r.csv", "t,y\nx,4.5\ny,1\n")
    df = load_files(path, columns={"text_a": "t", "label": "y"}, task=reg)
    assert df["label"].dtype == np.float64 and df["label"].tolist() == [4.5, 1.0]


def test_user_file_missing_mapped_column(tmp_path):
    task = make_file_task("t", ["no", "yes"])
    path = write_user_file(tmp_path / "d.csv", "csv", USER_ROWS)
    with pytest.raises(DataError, match="no column 'text'.*found: review, other, stars"):
        load_files(path, columns={"text_a": "text", "label": "stars"}, task=task)
    with pytest.raises(SpecError, match="needs label"):
        load_files(path, columns={"text_a": "review"}, task=task)


@pytest.mark.parametrize(
    "fmt, where", [("csv", "line 3"), ("jsonl", "line 2"), ("parquet", "row 1")]
)
def test_user_file_label_outside_set(tmp_path, fmt, where):
    task = make_file_task("t", ["no", "yes"])
    rows = [{"text": "fine", "label": "yes"}, {"text": "odd", "label": "maybe"}]
    path = write_user_file(tmp_path / f"d.{fmt}", fmt, rows)
    with pytest.raises(DataError) as err:
        load_files(path, columns={"text_a": "text", "label": "label"}, task=task)
    assert str(path) in str(err.value) and where in str(err.value) and "'maybe'" in str(err.value)


def test_user_file_empty_text(tmp_path):
    task = make_file_task("t", ["no", "yes"])
    path = write(tmp_path / "d.csv", 'text,label\nfine,1\n"   ",0\n')
    with pytest.raises(DataError, match=r"line 3: column 'text' \(text_a\) is empty"):
        load_files(path, columns={"text_a": "text", "label": "label"}, task=task)


def test_user_file_errors(tmp_path):
    task = make_file_task("t", ["no", "yes"])
    columns = {"text_a": "text", "label": "label"}
    with pytest.raises(DataError, match="not found"):
        load_files(tmp_path / "absent.csv", columns=columns, task=task)
    with pytest.raises(DataError, match="empty"):
        load_files(write(tmp_path / "empty.jsonl", ""), columns=columns, task=task)
    with pytest.raises(DataError, match="cannot tell the format"):
        load_files(write(tmp_path / "d.xlsx", "x"), columns=columns, task=task)
    with pytest.raises(DataError, match="unknown data format 'xml'"):
        load_files(
            write(tmp_path / "d.csv", "text,label\na,1\n"), columns=columns, task=task, fmt="xml"
        )
    with pytest.raises(DataError, match="line 2 is not valid JSON"):
        load_files(
            write(tmp_path / "bad.jsonl", '{"text": "a", "label": 1}\n{oops\n'),
            columns=columns,
            task=task,
        )


# ---- registry and task definitions ---------------------------------------------------------


def test_registry_builtins_and_unknown_name():
    assert set(task_names()) >= {
        "sst2",
        "mrpc",
        "rte",
        "cola",
        "qnli",
        "qqp",
        "mnli",
        "stsb",
        "wnli",
    }
    assert get_task("SST-2") is get_task("sst2")
    with pytest.raises(SpecError, match="unknown task 'imdb'.*known tasks: cola, e2e_nlg, mnli"):
        get_task("imdb")


def test_task_properties():
    assert get_task("stsb").is_regression and get_task("stsb").num_labels == 1
    assert get_task("mnli").num_labels == 3 and get_task("mnli").eval_split == "validation_matched"
    assert get_task("cola").metrics[0] == "mcc"
    assert get_task("sst2").is_pair is False and get_task("rte").is_pair is True
    assert get_task("wnli").label_names == ("not_entailment", "entailment")


def test_register_and_validate_tasks():
    from peftlab.tasks import TASKS

    task = make_file_task("unit-test-task", ["a", "b"], ["macro_f1"])
    with TASKS.temporarily(task):  # so this test's task does not leak into other tests
        assert get_task("unit_test_task") is task
        with pytest.raises(SpecError, match="already registered"):
            register_task(task)
    assert "unit-test-task" not in TASKS
    with pytest.raises(SpecError, match="at least 2 labels"):
        make_file_task("one", ["only"])
    with pytest.raises(SpecError, match="metric 'bleu'"):
        make_file_task("m", ["a", "b"], ["bleu"])
    with pytest.raises(SpecError, match="does not apply to a classification"):
        make_file_task("m", ["a", "b"], ["pearson"])
    with pytest.raises(SpecError, match="1 or 2 texts"):
        TaskDef("x", ("a", "b", "c"), ("n", "y"), ("accuracy",))


def test_task_kinds_decide_labels_head_and_metrics():
    from peftlab.tasks import get_kind

    cls, reg = make_file_task("c", ["a", "b", "c"]), make_file_task("r", None)
    assert (cls.kind, reg.kind) == ("classification", "regression")  # from the label names
    assert cls.metrics == get_kind("classification").default_metrics == ("accuracy",)
    assert (cls.num_labels, cls.head_label_names) == (3, ["a", "b", "c"])
    assert (reg.num_labels, reg.head_label_names) == (1, None)
    assert cls.has_classes and not reg.has_classes and cls.higher_is_better
    logits = np.array([[0.1, 2.0, -1.0], [3.0, 0.0, 0.0]])
    assert cls.task_kind.predictions(cls, logits).tolist() == [1, 0]
    assert reg.task_kind.predictions(reg, logits).tolist() == [0.1, 3.0]
    assert "pearson" in get_kind("regression").metrics()
    assert "pearson" not in get_kind("classification").metrics()
    with pytest.raises(SpecError, match="kind: unknown task kind 'ranking'"):
        make_file_task("k", ["a", "b"], kind="ranking")
    with pytest.raises(SpecError, match="a regression task has no label_names"):
        make_file_task("k", ["a", "b"], ["pearson"], kind="regression")


def test_load_split_rejects_bad_arguments(tmp_path):
    task = get_task("sst2")
    with pytest.raises(SpecError, match="unknown split 'test'"):
        load_split(task, "test", source="glue_dir", glue_dir=tmp_path)
    with pytest.raises(SpecError, match="unknown data source 'ftp'"):
        load_split(task, "train", source="ftp")
    with pytest.raises(SpecError, match="needs a file for split 'eval'"):
        load_split(task, "eval", source="files", files={"train": tmp_path / "a.csv"})


# ---- normalisation, subsampling, checksums -------------------------------------------------


def test_normalise_text():
    assert normalise_text("  caf\u0065\u0301 \t\n") == "caf\u00e9"
    assert unicodedata.is_normalized("NFC", normalise_text("A\u030a"))
    assert normalise_text("inner  space  kept") == "inner  space  kept"
    assert "NFC" in NORMALISATION_RULE and "trailing whitespace" in NORMALISATION_RULE


def test_subsample_is_deterministic_and_ordered():
    df = pd.DataFrame({"text_a": [f"t{i}" for i in range(100)], "label": [0, 1] * 50})
    a = subsample(df, 10, seed=3)
    assert a.equals(subsample(df, 10, seed=3))
    assert not a.equals(subsample(df, 10, seed=4))
    chosen = [int(t[1:]) for t in a["text_a"]]
    assert chosen == sorted(chosen) and len(set(chosen)) == 10
    assert list(a.index) == list(range(10))
    assert subsample(df, None, seed=0).equals(df) and subsample(df, 500, seed=0).equals(df)
    with pytest.raises(SpecError):
        subsample(df, 0, seed=0)


def test_split_checksum_ignores_row_numbers_but_not_content():
    df = pd.DataFrame({"text_a": ["a", "b"], "label": [0, 1], "row": [2, 3]})
    moved = df.assign(row=[0, 1])
    assert split_checksum(df) == split_checksum(moved)
    assert split_checksum(df) != split_checksum(df.assign(label=[1, 0]))
    assert split_checksum(df) != split_checksum(df.assign(text_a=["ab", ""]))
