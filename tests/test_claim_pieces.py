"""Claim.take: a driver claims its work piece by piece; what others hold (anywhere in the list)
is reported by the last take, so the driver waits for all of it."""

from __future__ import annotations

import dataclasses
import typing as tp
from pathlib import Path

import numpy as np
import pytest

import exca_lite as xl
from exca_lite.store import MapStore


@pytest.mark.timeout(60)
def test_pieces_skip_stored_and_held_items_and_the_last_take_reports_all_held(
    tmp_path: Path,
) -> None:
    uids = [f"u{k}" for k in range(10_000)]  # more than one lookup window
    store = MapStore(tmp_path)
    with store.writer(None) as writer:
        for uid in uids[:50]:
            writer.write(uid, np.zeros(1))
    held = uids[100:105] + uids[9_000:9_003]  # one early, some far beyond the first window
    with store.claim(held) as other, store.claim(()) as mine:
        assert sorted(other.mine) == sorted(held)
        remaining, pieces = list(uids), []
        while piece := mine.take(remaining, 3_000):
            pieces.append(piece)
            taken = set(piece)
            remaining = [u for u in remaining if u not in taken]
        got = [u for p in pieces for u in p]
        assert [len(p) for p in pieces] == [3_000, 3_000, 3_000, 942]
        assert got == [u for u in uids[50:] if u not in set(held)]  # in order, each once
        assert sorted(mine.others) == sorted(held)  # all of them, for wait_others
        assert mine.take(uids, 10) == []


@dataclasses.dataclass(frozen=True)
class Logged:
    """Records the items each piece computes; the first piece may let another writer store some
    later items meanwhile (a process elsewhere)."""

    sneak: tuple[int, ...] = ()
    infra: xl.MapInfra = xl.MapInfra(version="1")

    @infra.apply(item_uid=str)
    def embed(self, items: tp.Sequence[int]) -> tp.Iterator[np.ndarray]:
        first = not PIECES
        PIECES.append(list(items))
        if first and self.sneak:
            other = MapStore(tp.cast(MapStore, self.embed._store).folder)
            with other.writer() as w:
                for k in self.sneak:
                    w.write(str(k), np.full(2, -1.0))
        for item in items:
            yield np.full(2, float(item))


PIECES: list[list[int]] = []


def test_items_stored_by_another_writer_between_pieces_are_not_computed_again(
    tmp_path: Path,
) -> None:
    # a piece's take trusts the view of what is missing only while it grew by this call's own
    # pieces: items another writer stored meanwhile are looked up and skipped
    PIECES.clear()
    feat = Logged(sneak=tuple(range(900, 1000)), infra=xl.MapInfra(folder=tmp_path))
    assert feat.embed.compute(list(range(1000))) == 900
    assert len(PIECES) > 2 and [i for p in PIECES for i in p] == list(range(900))
    assert float(feat.embed.stack([950])[0, 0]) == -1.0  # the other writer's copy
    assert float(feat.embed.stack([899])[0, 0]) == 899.0


@pytest.mark.parametrize("kind", ["list", "tuple", "range"])
def test_pieces_get_their_own_items_around_cached_ones_and_duplicates(
    tmp_path: Path, kind: str
) -> None:
    # a piece is sliced from the call's items when its uids are a run of the call's (cached items
    # skipped), else looked up by uid (and for sequences other than lists and tuples)
    PIECES.clear()
    feat = Logged(infra=xl.MapInfra(folder=tmp_path))
    feat.embed.compute(list(range(0, 1000, 3)))
    PIECES.clear()
    items: tp.Sequence[int] = range(1000)
    if kind != "range":
        items = {"list": list, "tuple": tuple}[kind]([*range(1000), 5, 7, 7, 999])
    np.testing.assert_array_equal(feat.embed.stack(items)[:, 0], list(items))
    assert [i for p in PIECES for i in p] == [i for i in range(1000) if i % 3]
    PIECES.clear()
    dup = [4, 4, 2000, 2001, 2000, 1, 2002]
    np.testing.assert_array_equal(feat.embed.stack(dup)[:, 0], dup)
    assert PIECES == [[2000, 2001, 2002]]
