"""Claim.take: a driver claims its work piece by piece; what others hold (anywhere in the list)
is reported by the last take, so the driver waits for all of it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

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
