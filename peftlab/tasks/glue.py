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

SST2 = TaskDef(
    name="sst2",
    text_columns=("sentence",),
    label_names=("negative", "positive"),
    metrics=("accuracy",),
    hub=HubLayout(HUB_GLUE, "sst2", ("sentence",)),
    # sentence<TAB>label; every sentence ends with a space (removed by normalise_text).
    glue=GlueLayout("SST-2", TRAIN_DEV, text_a="sentence", label="label", num_fields=2),
)

MRPC = TaskDef(
    name="mrpc",
    text_columns=("sentence1", "sentence2"),
    label_names=("not_equivalent", "equivalent"),
    # GLUE reports F1 (of "equivalent") first for MRPC, accuracy second.
    metrics=("f1", "accuracy"),
    hub=HubLayout(HUB_GLUE, "mrpc", ("sentence1", "sentence2")),
    # Quality<TAB>#1 ID<TAB>#2 ID<TAB>#1 String<TAB>#2 String: label first; the header has a BOM.
    glue=GlueLayout(
        "MRPC", TRAIN_DEV, text_a="#1 String", text_b="#2 String", label="Quality", num_fields=5
    ),
)

RTE = TaskDef(
    name="rte",
    text_columns=("sentence1", "sentence2"),
    label_names=("entailment", "not_entailment"),
    metrics=("accuracy",),
    hub=HubLayout(HUB_GLUE, "rte", ("sentence1", "sentence2")),
    glue=GlueLayout(
        "RTE",
        TRAIN_DEV,
        text_a="sentence1",
        text_b="sentence2",
        label="label",
        num_fields=4,
        label_map=NLI_2,
    ),
)

COLA = TaskDef(
    name="cola",
    text_columns=("sentence",),
    label_names=("unacceptable", "acceptable"),
    metrics=("mcc", "accuracy"),
    hub=HubLayout(HUB_GLUE, "cola", ("sentence",)),
    # No header: source<TAB>label<TAB>original label<TAB>sentence, so columns go by position.
    glue=GlueLayout("CoLA", TRAIN_DEV, text_a=3, label=1, header=False, num_fields=4),
)

QNLI = TaskDef(
    name="qnli",
    text_columns=("question", "sentence"),
    label_names=("entailment", "not_entailment"),
    metrics=("accuracy",),
    hub=HubLayout(HUB_GLUE, "qnli", ("question", "sentence")),
    glue=GlueLayout(
        "QNLI",
        TRAIN_DEV,
        text_a="question",
        text_b="sentence",
        label="label",
        num_fields=4,
        label_map=NLI_2,
    ),
)

QQP = TaskDef(
    name="qqp",
    text_columns=("question1", "question2"),
    label_names=("not_duplicate", "duplicate"),
    metrics=("f1", "accuracy"),
    hub=HubLayout(HUB_GLUE, "qqp", ("question1", "question2")),
    # id<TAB>qid1<TAB>qid2<TAB>question1<TAB>question2<TAB>is_duplicate
    glue=GlueLayout(
        "QQP",
        TRAIN_DEV,
        text_a="question1",
        text_b="question2",
        label="is_duplicate",
        num_fields=6,
    ),
)

MNLI = TaskDef(
    name="mnli",
    text_columns=("premise", "hypothesis"),
    label_names=("entailment", "neutral", "contradiction"),
    metrics=("accuracy",),
    eval_split="validation_matched",  # the matched dev set is the conventional MNLI eval
    hub=HubLayout(HUB_GLUE, "mnli", ("premise", "hypothesis")),
    # train.tsv has 12 columns, dev_matched.tsv 16 (five annotator labels): width from the header.
    glue=GlueLayout(
        "MNLI",
        (("train", "train.tsv"), ("eval", "dev_matched.tsv")),
        text_a="sentence1",
        text_b="sentence2",
        label="gold_label",
        num_fields=None,
        label_map=(("entailment", 0), ("neutral", 1), ("contradiction", 2)),
    ),
)

STSB = TaskDef(
    name="stsb",
    text_columns=("sentence1", "sentence2"),
    label_names=None,  # regression: similarity score, a float from 0 to 5
    metrics=("pearson", "spearman"),
    hub=HubLayout(HUB_GLUE, "stsb", ("sentence1", "sentence2")),
    # index genre filename year old_index source1 source2 sentence1 sentence2 score
    glue=GlueLayout(
        "STS-B",
        TRAIN_DEV,
        text_a="sentence1",
        text_b="sentence2",
        label="score",
        num_fields=10,
    ),
)

WNLI = TaskDef(
    name="wnli",
    text_columns=("sentence1", "sentence2"),
    # Note the order: the hub (and GLUE's 0/1 labels) put not_entailment first, unlike RTE/QNLI.
    label_names=("not_entailment", "entailment"),
    metrics=("accuracy",),
    hub=HubLayout(HUB_GLUE, "wnli", ("sentence1", "sentence2")),
    glue=GlueLayout(
        "WNLI", TRAIN_DEV, text_a="sentence1", text_b="sentence2", label="label", num_fields=4
    ),
)

GLUE_TASKS = (SST2, MRPC, RTE, COLA, QNLI, QQP, MNLI, STSB, WNLI)

for _task in GLUE_TASKS:
    # replace=True keeps a module reload (e.g. in a REPL) from failing on its own names.
    register_task(_task, replace=True)
