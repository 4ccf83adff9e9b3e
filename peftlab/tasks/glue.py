"""The GLUE tasks, as data: one `TaskDef` each, registered on import.

Label ids follow the `ClassLabel` order of the hub copy (`nyu-mll/glue`), so a model trained on
one source evaluates correctly on the other. GLUE folder layouts are those of the original GLUE
distribution (`glue_data/<TASK>/{train,dev}.tsv`); where a file has a header, columns are named
rather than numbered, so a reordered copy still reads correctly.
"""

from __future__ import annotations

from peftlab.tasks.registry import GlueLayout, HubLayout, TaskDef, register_task

HUB_GLUE = "nyu-mll/glue"
TRAIN_DEV = (("train", "train.tsv"), ("eval", "dev.tsv"))
NLI_2 = (("entailment", 0), ("not_entailment", 1))


def glue_task(name: str, text_columns: tuple[str, ...], label_names: tuple[str, ...] | None,
              metrics: tuple[str, ...], folder: str, *, num_fields: int | None, label: str | int
              = "label", texts: tuple[str | int, ...] | None = None, files=TRAIN_DEV,
              header: bool = True, label_map: tuple[tuple[str, int], ...] | None = None,
              eval_split: str = "validation") -> TaskDef:
    """A GLUE task: its hub copy is `nyu-mll/glue/<name>` with `text_columns`; its GLUE folder
    names (or numbers, without a header) the same texts unless `texts` says otherwise."""
    a, *b = texts or text_columns
    return TaskDef(
        name=name, text_columns=text_columns, label_names=label_names, metrics=metrics,
        eval_split=eval_split, hub=HubLayout(HUB_GLUE, name, text_columns),
        glue=GlueLayout(folder, files, text_a=a, text_b=b[0] if b else None, label=label,
                        header=header, num_fields=num_fields, label_map=label_map))


PAIR = ("sentence1", "sentence2")

# sentence<TAB>label; every sentence ends with a space (removed by normalise_text).
SST2 = glue_task("sst2", ("sentence",), ("negative", "positive"), ("accuracy",), "SST-2",
                 num_fields=2)
# Quality<TAB>#1 ID<TAB>#2 ID<TAB>#1 String<TAB>#2 String: label first; the header has a BOM.
# GLUE reports F1 (of "equivalent") first for MRPC, accuracy second.
MRPC = glue_task("mrpc", PAIR, ("not_equivalent", "equivalent"), ("f1", "accuracy"), "MRPC",
                 num_fields=5, label="Quality", texts=("#1 String", "#2 String"))
RTE = glue_task("rte", PAIR, ("entailment", "not_entailment"), ("accuracy",), "RTE",
                num_fields=4, label_map=NLI_2)
# No header: source<TAB>label<TAB>original label<TAB>sentence, so columns go by position.
COLA = glue_task("cola", ("sentence",), ("unacceptable", "acceptable"), ("mcc", "accuracy"),
                 "CoLA", num_fields=4, label=1, texts=(3,), header=False)
QNLI = glue_task("qnli", ("question", "sentence"), ("entailment", "not_entailment"),
                 ("accuracy",), "QNLI", num_fields=4, label_map=NLI_2)
# id<TAB>qid1<TAB>qid2<TAB>question1<TAB>question2<TAB>is_duplicate
QQP = glue_task("qqp", ("question1", "question2"), ("not_duplicate", "duplicate"),
                ("f1", "accuracy"), "QQP", num_fields=6, label="is_duplicate")
# train.tsv has 12 columns, dev_matched.tsv 16 (five annotator labels): width from the header.
# The matched dev set is the conventional MNLI eval.
MNLI = glue_task("mnli", ("premise", "hypothesis"), ("entailment", "neutral", "contradiction"),
                 ("accuracy",), "MNLI", num_fields=None, label="gold_label", texts=PAIR,
                 files=(("train", "train.tsv"), ("eval", "dev_matched.tsv")),
                 label_map=(("entailment", 0), ("neutral", 1), ("contradiction", 2)),
                 eval_split="validation_matched")
# index genre filename year old_index source1 source2 sentence1 sentence2 score;
# regression: a similarity score, a float from 0 to 5.
STSB = glue_task("stsb", PAIR, None, ("pearson", "spearman"), "STS-B", num_fields=10,
                 label="score")
# Note the order: the hub (and GLUE's 0/1 labels) put not_entailment first, unlike RTE/QNLI.
WNLI = glue_task("wnli", PAIR, ("not_entailment", "entailment"), ("accuracy",), "WNLI",
                 num_fields=4)

GLUE_TASKS = (SST2, MRPC, RTE, COLA, QNLI, QQP, MNLI, STSB, WNLI)

for _task in GLUE_TASKS:
    # replace=True keeps a module reload (e.g. in a REPL) from failing on its own names.
    register_task(_task, replace=True)
