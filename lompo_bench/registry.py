"""Algorithms by name. Built-ins register on import of `lompo_bench.algorithms`; third parties
register through the ``lompo_bench.algorithms`` entry-point group (value: the Algorithm class).

    [project.entry-points."lompo_bench.algorithms"]
    my-algo = "my_package.my_algo:MyAlgo"
"""

from __future__ import annotations

import importlib
from importlib.metadata import entry_points

from .errors import UserError, choice_error

_REGISTRY: dict[str, type] = {}
_BUILTINS = ("lompo", "lmbrl", "slac", "cql", "bc")  # import order of built-in modules is fixed below


def register(cls):
    """Class decorator: `@register class LOMPO(Algorithm): name = "lompo"`."""
    name = cls.name
    if name in _REGISTRY and _REGISTRY[name] is not cls:
        raise UserError(f"algorithm name {name!r} is registered twice ({_REGISTRY[name].__module__} and {cls.__module__})")
    _REGISTRY[name] = cls
    return cls


def _load():
    importlib.import_module("lompo_bench.algorithms")  # built-ins register themselves
    for ep in entry_points(group="lompo_bench.algorithms"):
        if ep.name not in _REGISTRY:
            try:
                register(ep.load())
            except Exception as exc:  # a broken plug-in must not take the built-ins down
                raise UserError(f"algorithm plug-in {ep.name!r} ({ep.value}) failed to load: {exc}") from exc


def available() -> list[str]:
    _load()
    builtin = [n for n in _BUILTINS if n in _REGISTRY]
    return builtin + sorted(n for n in _REGISTRY if n not in _BUILTINS)


def get(name: str) -> type:
    _load()
    if name not in _REGISTRY:
        raise choice_error("algorithm", name, available())
    return _REGISTRY[name]
