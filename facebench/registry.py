"""A small name → object registry whose heavy entries load on first use.

Backends such as dlib or transformers take seconds to import, so a registry
only records *where* an entry lives (``"facebench.backends.dlib_resnet"``) and
imports that module the first time the name is asked for; the module then
registers itself with the :meth:`Registry.register` decorator.
"""
from __future__ import annotations

import difflib
import importlib
from typing import Callable, Generic, Iterable, TypeVar

T = TypeVar("T")


class UnknownNameError(KeyError, ValueError):
    """A name that is not in a registry; the message suggests the closest ones."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


def suggest(name: str, known: Iterable[str], *, what: str) -> str:
    """Error text for an unknown ``name`` that offers the closest known names."""
    known = sorted(known)
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
    hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    return f"unknown {what} {name!r}.{hint} Known: {', '.join(known) or '(none)'}."


class Registry(Generic[T]):
    """Map names to objects, importing the module that defines a name lazily.

    Examples
    --------
    >>> r = Registry("colour")
    >>> @r.register("red")
    ... def red():
    ...     return "#f00"
    >>> r.get("red")()
    '#f00'
    >>> r.get("rde")
    Traceback (most recent call last):
    ...
    facebench.registry.UnknownNameError: unknown colour 'rde'. Did you mean 'red'? Known: red.
    """

    def __init__(self, what: str, lazy: dict[str, str] | None = None):
        self.what = what
        self._lazy = dict(lazy or {})
        self._entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def decorator(obj: T) -> T:
            self._entries[name] = obj
            return obj

        return decorator

    def names(self) -> list[str]:
        return sorted(set(self._entries) | set(self._lazy))

    def __contains__(self, name: str) -> bool:
        return name in self._entries or name in self._lazy

    def get(self, name: str) -> T:
        if name not in self._entries and name in self._lazy:
            importlib.import_module(self._lazy[name])
            if name not in self._entries:
                raise UnknownNameError(f"{self.what} {name!r}: module {self._lazy[name]} was imported "
                                       "but did not register that name")
        try:
            return self._entries[name]
        except KeyError:
            raise UnknownNameError(suggest(name, self.names(), what=self.what)) from None
