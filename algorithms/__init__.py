"""lompo_bench.algorithms: the built-in algorithms register themselves on import.

`lompo` (also registers `lmbrl`), `slac`, `cql` and `bc` each live in their own module; importing
this package imports them so `lompo_bench.registry` sees them. A built-in module that is not part
of this checkout is skipped (so one missing part does not take the others down); any other
import error is a real bug and propagates.
"""

import importlib

BUILTIN_MODULES = ("lompo", "slac", "cql", "bc")

for _name in BUILTIN_MODULES:
    try:
        importlib.import_module(f"{__name__}.{_name}")
    except ModuleNotFoundError as _exc:
        if _exc.name != f"{__name__}.{_name}":
            raise
del _name
