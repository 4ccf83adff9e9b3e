"""Fine-tuning methods, registered by name. Add one: a file here and an import line below."""

from peftlab.methods import adalora, full, generic, ia3, lora, qlora  # noqa: F401  (registration)
from peftlab.methods.base import (
    Method,
    MethodParams,
    get_method,
    method_for,
    method_names,
    methods_with,
    register,
)

__all__ = ["Method", "MethodParams", "get_method", "method_for", "method_names", "methods_with",
           "register"]
