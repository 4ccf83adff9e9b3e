"""The Environment and provenance section: model, dtypes, devices, package versions, toolkit commits,
data checksums, and the spec as written and as resolved.
"""

from __future__ import annotations

import yaml

from peftlab.stages.report import format as f
from peftlab.stages.report.document import Code, Paragraph, Section, Table
from peftlab.stages.report.stored import Results


def environment(res: Results) -> Section:
    s = Section("Environment and provenance", "environment")
    prov = res.meta.get("provenance") or {}
    done = [r for r in res.view.records.values() if r.get("status") == "done"]
    run_prov = [r.get("provenance") or {} for r in done]
    versions = prov.get("versions") or (run_prov[0].get("versions") if run_prov else {}) or {}
    device = prov.get("device") or (run_prov[0].get("device") if run_prov else {}) or {}
    spec = res.spec
    bench_env = next((r["environment"] for r in res.bench if r["environment"]), {})
    commits = sorted({p.get("toolkit_commit") for p in [prov, *run_prov]
                      if p.get("toolkit_commit")})
    revisions = sorted({str(p.get("model_revision")) for p in run_prov
                        if p.get("model_revision") is not None})
    s.add(Table(["Item", "Value"], [
        ["Study", spec.name],
        ["Model", spec.model.name + (f" ({spec.model.gguf_file})" if spec.model.gguf_file
                                     else "")],
        ["Model revision", ", ".join(revisions) or f.MISSING],
        ["Weights dtype", spec.model.dtype],
        ["Training precision", spec.training.precision],
        ["Representation dtype", spec.represent.dtype],
        ["Device requested", spec.device],
        ["Benchmark device", str(bench_env.get("device_name") or f.MISSING)],
        ["Benchmark dtype", str(bench_env.get("dtype") or f.MISSING)],
        ["Benchmark threads", f.text(bench_env.get("torch_threads"))],
        ["Toolkit commit", ", ".join(commits) or f.MISSING],
        ["Host", str(prov.get("host", f.MISSING))],
        ["Recorded", str(prov.get("time", f.MISSING))],
    ]))
    if device:
        s.add(Table(["Device", "Value"], [[str(k), str(v)] for k, v in device.items()]))
    if versions:
        s.add(Table(["Package", "Version"], [[str(k), str(v)] for k, v in versions.items()]))
    checks = []
    for d in res.data:
        checks.append([d["task"], d["split"], str(d.get("path") or d.get("source") or f.MISSING),
                       str(d.get("checksum", f.MISSING)),
                       str(d.get("content_checksum", f.MISSING))])
    if checks:
        s.add(Table(["Task", "Split", "Source", "sha256 (source)", "sha256 (rows used)"],
                    checks, "Data checksums."))
    saved = res.ctx.store.path("spec.yaml")
    if saved.is_file():
        s.add(Paragraph.of("The spec the study ran with (spec.yaml in the study directory):"),
              Code(saved.read_text(encoding="utf-8")))
    s.add(Paragraph.of("The spec as resolved (every default filled in):"),
          Code(yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False)))
    return s
