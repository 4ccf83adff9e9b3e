"""`peftlab init`: a new spec file from a shipped one, renamed after the new file."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from peftlab.errors import SpecError


def starter_spec(template: Path, target: Path) -> str:
    """The text of a new spec: `template` (a shipped spec) renamed after `target`'s file name.

    `name` becomes the file's stem and `output_dir` runs/<stem>; the comments stay, so the
    starter explains itself, except the shipped spec's own run commands (replaced by the new
    file's). Raises SpecError if the result does not carry the new name (a template without
    top-level `name:` and `output_dir:` lines).
    """
    import re

    name = target.stem

    def scalar(v: str) -> str:  # plain when YAML reads it back as this string, else quoted
        return v if re.fullmatch(r"[\w./-]+", v) and yaml.safe_load(v) == v else json.dumps(v)

    lines = template.read_text(encoding="utf-8").splitlines(keepends=True)
    n = next((i for i, line in enumerate(lines) if not line.startswith("#")), len(lines))
    header = [line for line in lines[:n] if not re.match(r"#\s+peftlab\b", line)]
    while header and header[-1].strip() == "#":
        header.pop()
    intro = [f"# {name}: written by `peftlab init` from the shipped spec '{template.stem}'.\n",
             "#\n", f"#   peftlab validate {target}\n", f"#   peftlab run {target}\n"]
    body = "".join(lines[n:])
    body, n_name = re.subn(r"^name:.*$", f"name: {scalar(name)}", body, count=1, flags=re.M)
    body, n_out = re.subn(r"^output_dir:.*$", f"output_dir: {scalar(f'runs/{name}')}", body,
                          count=1, flags=re.M)
    text = "".join(intro + (["#\n", *header] if header else [])) + body
    parsed = yaml.safe_load(text)
    if not (n_name and n_out and parsed.get("name") == name
            and parsed.get("output_dir") == f"runs/{name}"):
        raise SpecError(f"{template}: cannot be used as a starter: expected top-level `name:` "
                        "and `output_dir:` lines")
    return text
