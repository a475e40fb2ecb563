"""Record classes behave as the frozen, slotted, keyword-only dataclasses they replace."""

from __future__ import annotations

import copy
import dataclasses
import pickle

import pytest

from perfcallback._record import FrozenInstanceError, asdict, field, fields, record, replace
from perfcallback.report import Recommendation
from perfcallback.trace.kernels import KernelStat


@record
class Point:
    """A frozen record with a default, a factory and a check."""

    x: float
    y: float = 0.0
    tags: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.x < 0:
            raise ValueError("x must be >= 0")


@record(frozen=False)
class Counter:
    name: str
    hits: int = 0


@record(kw_only=False)
class Pair:
    left: int
    right: int = 2


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class PointDC:
    x: float
    y: float = 0.0
    tags: list[str] = dataclasses.field(default_factory=list)


def test_init_is_keyword_only_with_defaults_and_fresh_factories() -> None:
    a, b = Point(x=1.0), Point(x=1.0)
    assert (a.y, a.tags) == (0.0, []) and a.tags is not b.tags
    with pytest.raises(TypeError):
        Point(1.0)  # type: ignore[misc]
    with pytest.raises(TypeError):
        Point(y=1.0)  # type: ignore[call-arg]
    with pytest.raises(ValueError, match="x must be"):
        Point(x=-1.0)
    assert Pair(1) == Pair(left=1, right=2)


def test_same_repr_eq_and_hash_as_the_dataclass() -> None:
    ours, theirs = Point(x=1.5, y=2.0), PointDC(x=1.5, y=2.0)
    assert repr(ours).replace("Point", "PointDC") == repr(theirs)
    assert Point(x=1.0, y=2.0) == Point(x=1.0, y=2.0) != Point(x=1.0, y=3.0)
    assert Point(x=1.0) != PointDC(x=1.0)  # another class is never equal
    assert hash(Pair(1, 2)) == hash(Pair(1, 2)) and len({Pair(1, 2), Pair(1, 2)}) == 1
    with pytest.raises(TypeError):
        hash(Counter(name="a"))  # mutable and comparable: unhashable, as a dataclass


def test_frozen_refuses_assignment_mutable_allows_it() -> None:
    p = Point(x=1.0)
    with pytest.raises(FrozenInstanceError, match="'x'"):
        p.x = 2.0  # type: ignore[misc]
    with pytest.raises(AttributeError):
        del p.y  # type: ignore[misc]
    c = Counter(name="a")
    c.hits += 1
    assert c.hits == 1
    with pytest.raises(AttributeError):
        c.other = 1  # type: ignore[attr-defined]  # slotted: no __dict__
    assert not hasattr(p, "__dict__")


def test_replace_asdict_fields() -> None:
    p = Point(x=1.0, tags=["a"])
    q = replace(p, y=5.0)
    assert (q.x, q.y, q.tags) == (1.0, 5.0, ["a"]) and p.y == 0.0
    with pytest.raises(ValueError, match="x must be"):
        replace(p, x=-2.0)  # __post_init__ runs again
    with pytest.raises(TypeError, match="no field z"):
        replace(p, z=1)
    assert fields(Point) == fields(p) == ("x", "y", "tags")
    assert asdict(p) == dataclasses.asdict(PointDC(x=1.0, tags=["a"]))
    nested = Counter(name=Pair(1, 2))  # type: ignore[arg-type]
    assert asdict(nested) == {"name": {"left": 1, "right": 2}, "hits": 0}
    with pytest.raises(TypeError, match="not a record"):
        fields(PointDC)


def test_the_dataclasses_module_takes_records_for_dataclasses() -> None:
    """Code written against the dataclasses these types were keeps working."""
    p = Point(x=1.0, tags=["a"])
    assert dataclasses.is_dataclass(p) and dataclasses.is_dataclass(Point)
    assert [f.name for f in dataclasses.fields(p)] == ["x", "y", "tags"]
    assert dataclasses.asdict(p) == asdict(p) == {"x": 1.0, "y": 0.0, "tags": ["a"]}
    q = dataclasses.replace(p, y=3.0)
    assert type(q) is Point and (q.x, q.y, q.tags) == (1.0, 3.0, ["a"])
    with pytest.raises(ValueError, match="x must be"):
        dataclasses.replace(p, x=-1.0)
    rec = Recommendation(rule="gc.pauses", category="gc", severity="info", message="m")
    assert dataclasses.asdict(rec)["rule"] == "gc.pauses"


def test_pickle_and_copy_round_trip_frozen_records() -> None:
    for obj in (Point(x=1.0, tags=["t"]), Counter(name="n", hits=3), Pair(4, 5)):
        assert pickle.loads(pickle.dumps(obj)) == obj
        assert copy.copy(obj) == obj and copy.deepcopy(obj) == obj
    rec = Recommendation(rule="dataloader.stall", category="dataloader", severity="warning",
                         message="m", evidence={"a": 1})
    assert pickle.loads(pickle.dumps(rec)) == rec


def test_mutable_defaults_are_refused_as_dataclasses_refuse_them() -> None:
    with pytest.raises(ValueError, match="mutable default"):
        @record
        class Bad:
            items: list[int] = []


def test_result_types_are_records_with_real_signatures() -> None:
    import inspect

    params = inspect.signature(KernelStat).parameters
    assert list(params) == list(fields(KernelStat))
    assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in params.values())
