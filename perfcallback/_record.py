"""Record classes: ``@record`` makes what ``@dataclass(frozen=True, slots=True, kw_only=True)``
makes, at a tenth of the cost of creating the class.

Why not :mod:`dataclasses`: ``perfcallback analyze`` is a short process, and every class it
imports is created anew in every run. On CPython 3.11 a frozen, slotted dataclass takes ~0.6 ms
to create (six generated methods, each compiled on its own), and importing :mod:`dataclasses`
imports :mod:`inspect` (~7 ms). The CLI's 27 result types cost 22 ms that way, a third of the
whole process on a small trace (measured with ``benchmarks/analyze_speed.py --process``).
``@record`` compiles one function per class, ``__init__``, so that it keeps its real signature
and its speed; ``__repr__``, ``__eq__``, ``__hash__``, pickling and the frozen ``__setattr__``
are shared functions that read the class's field names.

A record class has ``__slots__``, a keyword-only ``__init__`` (``kw_only=False`` allows positions)
with defaults and ``field(default_factory=...)``, calls ``__post_init__`` when it defines one,
compares equal to a record of the same class with equal fields, hashes when frozen, prints as a
dataclass does, and pickles and copies. :func:`replace`, :func:`asdict` and :func:`fields` are
its :mod:`dataclasses` namesakes, and :mod:`dataclasses`' own functions accept records too (their
``__dataclass_fields__`` is built on first use). Type checkers see a dataclass (PEP 681
``dataclass_transform``).
Not supported, because nothing here needs them: inheritance between records, ``ClassVar``
annotations, ``InitVar``, ordering.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar, overload

if TYPE_CHECKING:  # type checkers only; typing has it from Python 3.11 on
    from typing_extensions import dataclass_transform
else:
    def dataclass_transform(**_: Any) -> Callable[[Any], Any]:
        return lambda fn: fn

_T = TypeVar("_T")
_MISSING = object()
_set = object.__setattr__


class FrozenInstanceError(AttributeError):
    """A field of a frozen record was assigned or deleted."""


class _Factory:
    __slots__ = ("make",)

    def __init__(self, make: Callable[[], Any]) -> None:
        self.make = make


def field(*, default_factory: Callable[[], Any]) -> Any:
    """A field whose default is made anew for each instance, as ``dataclasses.field``'s."""
    return _Factory(default_factory)


@overload
@dataclass_transform(kw_only_default=True, frozen_default=True, field_specifiers=(field,))
def record(cls: type[_T], /) -> type[_T]: ...


@overload
def record(*, frozen: bool = True, kw_only: bool = True) -> Callable[[type[_T]], type[_T]]: ...


def record(cls: type[_T] | None = None, /, *, frozen: bool = True,
           kw_only: bool = True) -> Any:
    """Make ``cls`` a record class (see the module docstring); ``@record`` or ``@record(...)``.

    Raises:
        ValueError: A default is a list, dict or set (shared by every instance: use ``field``).
        TypeError: With ``kw_only=False``, a field without a default follows one with one.
    """
    def build(c: type[_T]) -> type[_T]:
        return _build(c, frozen=frozen, kw_only=kw_only)

    return build if cls is None else build(cls)


def _build(cls: type[_T], *, frozen: bool, kw_only: bool) -> type[_T]:
    namespace = dict(cls.__dict__)
    names = tuple(namespace.get("__annotations__", {}))
    defaults = {name: namespace.pop(name) for name in names if name in namespace}
    for name, value in defaults.items():
        if type(value) in (list, dict, set):
            kind = type(value).__name__
            raise ValueError(f"{cls.__qualname__}.{name}: a mutable default ({kind}) would be "
                             "shared by every instance; use field(default_factory=...)")
    namespace.pop("__dict__", None)
    namespace.pop("__weakref__", None)
    namespace["__slots__"] = names
    namespace["__record_fields__"] = names
    namespace["__match_args__"] = () if kw_only else names
    namespace["__init__"] = _make_init(cls, names, defaults, frozen=frozen, kw_only=kw_only,
                                       post_init="__post_init__" in namespace)
    namespace.setdefault("__repr__", _repr)
    namespace.setdefault("__eq__", _eq)
    if "__hash__" not in cls.__dict__ or cls.__dict__["__hash__"] is None:
        namespace["__hash__"] = _hash if frozen else None  # as dataclasses: eq without frozen
    if frozen:
        namespace["__setattr__"] = _frozen_setattr
        namespace["__delattr__"] = _frozen_delattr
    namespace["__getstate__"] = _getstate
    namespace["__setstate__"] = _setstate
    namespace["__dataclass_fields__"] = _DATACLASS_FIELDS
    metaclass: Any = type(cls)
    new: type[_T] = metaclass(cls.__name__, cls.__bases__, namespace)
    new.__qualname__ = cls.__qualname__
    return new


def _make_init(cls: type, names: tuple[str, ...], defaults: dict[str, Any], *, frozen: bool,
               kw_only: bool, post_init: bool) -> Callable[..., None]:
    """Compile ``__init__`` for these fields: one small function, the only code generated."""
    scope: dict[str, Any] = {"_set": _set, "_FACTORY": _MISSING}
    params, lines = [], []
    seen_default = False
    for name in names:
        value = name
        default = defaults.get(name, _MISSING)
        if default is _MISSING:
            if seen_default and not kw_only:
                raise TypeError(f"{cls.__qualname__}: field {name!r} without a default follows "
                                "one with a default")
            params.append(name)
        elif isinstance(default, _Factory):
            scope[f"_make_{name}"] = default.make
            params.append(f"{name}=_FACTORY")
            value = f"_make_{name}() if {name} is _FACTORY else {name}"
            seen_default = True
        else:
            scope[f"_default_{name}"] = default
            params.append(f"{name}=_default_{name}")
            seen_default = True
        lines.append(f"_set(self, {name!r}, {value})" if frozen else f"self.{name} = {value}")
    if post_init:
        lines.append("self.__post_init__()")
    star = ["*"] if kw_only and params else []
    source = (f"def __init__(self, {', '.join([*star, *params])}) -> None:\n    "
              + "\n    ".join(lines or ["pass"]))
    exec(source, scope)
    init: Callable[..., None] = scope["__init__"]
    init.__qualname__ = f"{cls.__qualname__}.__init__"
    return init


class _DataclassFields:
    """``__dataclass_fields__``, built on first use, so that :mod:`dataclasses`' own ``fields``,
    ``asdict``, ``replace`` and ``is_dataclass`` take a record for the dataclass it was, and
    :mod:`dataclasses` is imported only when someone asks."""

    def __get__(self, obj: object, cls: type) -> dict[str, Any]:
        import dataclasses

        out: dict[str, Any] = {}
        for name in cls.__record_fields__:  # type: ignore[attr-defined]
            spec = dataclasses.field()
            spec.name, spec.type = name, cls.__annotations__.get(name)
            spec._field_type = dataclasses._FIELD  # type: ignore[attr-defined]
            out[name] = spec
        type.__setattr__(cls, "__dataclass_fields__", out)  # built once per class
        return out


_DATACLASS_FIELDS = _DataclassFields()


def _values(obj: Any) -> tuple[Any, ...]:
    return tuple([getattr(obj, name) for name in obj.__record_fields__])


def _repr(self: Any) -> str:
    inner = ", ".join(f"{name}={getattr(self, name)!r}" for name in self.__record_fields__)
    return f"{type(self).__qualname__}({inner})"


def _eq(self: Any, other: object) -> bool:
    if other.__class__ is not self.__class__:
        return NotImplemented  # type: ignore[no-any-return]
    return _values(self) == _values(other)


def _hash(self: Any) -> int:
    return hash(_values(self))


def _frozen_setattr(self: Any, name: str, value: Any) -> None:
    raise FrozenInstanceError(f"cannot assign to field {name!r} of a frozen "
                              f"{type(self).__qualname__}")


def _frozen_delattr(self: Any, name: str) -> None:
    raise FrozenInstanceError(f"cannot delete field {name!r} of a frozen "
                              f"{type(self).__qualname__}")


def _getstate(self: Any) -> tuple[Any, ...]:
    return _values(self)


def _setstate(self: Any, state: tuple[Any, ...]) -> None:
    for name, value in zip(self.__record_fields__, state, strict=True):
        _set(self, name, value)


def fields(obj: Any) -> tuple[str, ...]:
    """The field names of a record class or instance, in declaration order."""
    try:
        return obj.__record_fields__  # type: ignore[no-any-return]
    except AttributeError:
        raise TypeError(f"{obj!r} is not a record class or instance") from None


def replace(obj: _T, /, **changes: Any) -> _T:
    """A copy of record ``obj`` with ``changes`` applied; ``__init__`` (and ``__post_init__``)
    run again, as with ``dataclasses.replace``.

    Raises:
        TypeError: A change names no field.
    """
    names = fields(obj)
    unknown = set(changes) - set(names)
    if unknown:
        raise TypeError(f"{type(obj).__qualname__} has no field {', '.join(sorted(unknown))}")
    return type(obj)(**{name: getattr(obj, name) for name in names} | changes)


def asdict(obj: Any) -> dict[str, Any]:
    """The fields of record ``obj`` as a dict, records, lists, tuples and dicts inside converted
    too (leaf values are not copied, unlike ``dataclasses.asdict``)."""
    return {name: _plain(getattr(obj, name)) for name in fields(obj)}


def _plain(value: Any) -> Any:
    if hasattr(type(value), "__record_fields__"):
        return asdict(value)
    if type(value) in (list, tuple):
        return type(value)(_plain(v) for v in value)
    if type(value) is dict:
        return {k: _plain(v) for k, v in value.items()}
    return value
