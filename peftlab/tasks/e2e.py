"""The E2E NLG task (Novikova et al. 2017): restaurant meaning representations to text,
registered on import. Its files are read by `sources.load_e2e` (CSV `mr,ref`, one row per
reference); see `sources.e2e_layout` for which files a study trains and evaluates on."""

from __future__ import annotations

from peftlab.tasks.registry import TaskDef, register_task

E2E_PROMPT = "Facts: {input}\nSentence:"

E2E = TaskDef(
    name="e2e_nlg", text_columns=("mr",), label_names=None,
    metrics=("bleu", "rouge_l", "chrf", "slot_error_rate"), eval_split="test",
    kind="generation", builtin="e2e", prompt_template=E2E_PROMPT,
)
register_task(E2E, replace=True)
