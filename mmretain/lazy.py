"""Package attributes that import their module on first use.

The command line starts without torch or transformers (`mmretain --help` stays instant); a
package lists its public names here instead of importing them up front.
"""

from __future__ import annotations

from collections.abc import Callable
from importlib import import_module
from typing import Any


def lazy_exports(
    package: str, exports: dict[str, str], submodules: tuple[str, ...] = ()
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``__getattr__`` and ``__dir__`` for ``package``: each name of ``exports`` maps to the
    submodule (relative to ``package``) it lives in; each of ``submodules`` is that submodule
    itself, so ``package.sub.name`` works after a bare ``import package``."""
    namespace = import_module(package).__dict__

    def __getattr__(name: str) -> Any:
        if name in submodules:
            value = import_module(f".{name}", package)
        elif name in exports:
            value = getattr(import_module(f".{exports[name]}", package), name)
        else:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        namespace[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted([*namespace, *exports, *submodules])

    return __getattr__, __dir__
