"""Deployment modes, registered by name. Add one: a file here and an import line below.

`MODES` is the registry (defined in `peftlab.bench.mode`); importing this package fills it.
"""

from peftlab.bench.mode import MODES, Mode, UnsupportedMode
from peftlab.bench.modes import base, full, merged, mixed, multi, unmerged  # noqa: F401
from peftlab.errors import PeftlabError


def get_mode(name: str) -> Mode:
    """The registered mode `name` (a "+compile" suffix is a variant, not a mode)."""
    base_name = name.split("+")[0]
    if base_name not in MODES:
        raise PeftlabError(f"unknown bench mode {name!r}; expected one of {mode_names()} "
                           "(optionally with '+compile')")
    return MODES.get(base_name)


def find_mode(name: object) -> Mode | None:
    """The registered mode of a stored mode name ("merged+compile" -> merged), or None when no
    mode is registered under it here (a plug-in of another process, an older study)."""
    base_name = str(name).split("+")[0] if isinstance(name, str) else None
    return MODES.get(base_name) if base_name in MODES else None


def mode_names() -> list[str]:
    """Registered modes in their declared order (base, full, unmerged, merged, multi, mixed)."""
    return [m.name for m in sorted(MODES.values(), key=lambda m: m.order)]


__all__ = ["MODES", "Mode", "UnsupportedMode", "find_mode", "get_mode", "mode_names"]
