"""Plain value objects without ``dataclasses`` (which imports ``inspect`` and so ``os``).

A subclass lists its fields in ``__slots__`` and assigns them in ``__init__``;
equality, hashing and ``repr`` follow from the slots.
"""

from __future__ import annotations


class Value:
    __slots__ = ()

    def _names(self) -> tuple[str, ...]:
        names: tuple[str, ...] = self.__slots__
        return names

    def _fields(self) -> tuple[object, ...]:
        return tuple(getattr(self, name) for name in self._names())

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        assert isinstance(other, Value)
        return self._fields() == other._fields()

    def __hash__(self) -> int:
        return hash((type(self), *(repr(f) for f in self._fields())))

    def __repr__(self) -> str:
        args = ", ".join(f"{name}={getattr(self, name)!r}" for name in self._names())
        return f"{type(self).__name__}({args})"
