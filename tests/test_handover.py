"""Make before break: the ledger's books of a reconfiguration whose old slots serve until the new ones join.

Both runtimes drive these rules (tests/test_spine.py runs a scenario through both); here, the rules alone.
"""

from collections import Counter

import pytest

from harness.core import Slot
from harness.ledger import Ledger
from harness.placement import Placement, SlotSpec
from harness.profiles import LatencyCurve

MODELS = frozenset({"m"})
CURVE = {"m": LatencyCurve.from_points([1], [2.0], step=True)}


def spec(partition: str, device: int = 0) -> SlotSpec:
    return SlotSpec("toy", partition, device, MODELS)


def ledger(*specs: SlotSpec) -> Ledger:
    slots = [Slot(i, f"s{i}", s.gpu_type, s.partition, s.models, s.device, s.share) for i, s in enumerate(specs)]
    return Ledger(slots, [CURVE] * len(slots), curves_of=lambda s: CURVE)


def leaving(book: Ledger) -> set[int]:
    """The slots serving on until their replacements join."""
    return {s.index for s in book.slots if s.leaving}


def events(book: Ledger) -> list[tuple[int, str, str]]:
    return [(slot, event, why) for _, slot, event, why in book.slot_events if why != "initial placement"]


def test_old_slots_serve_until_every_new_slot_of_their_device_joined():
    book = ledger(spec("whole", 0), spec("whole", 1))
    rec = book.plan(Placement((spec("mps50", 0), spec("mps50", 0), spec("whole", 1))), 1.0, overlap=True)
    assert rec.left == [] and rec.joining == [2, 3] and book.slots[0].alive
    assert book.slots[0].leaving and not book.slots[1].leaving            # what a policy sees of the move
    assert Counter(book.placement.slots) == Counter([spec("mps50", 0), spec("mps50", 0), spec("whole", 1)])
    assert book.join(2, 1.5) and book.replaced(0, 1.5) == [] and book.slots[0].alive     # one still starting
    assert book.join(3, 1.7) and book.replaced(0, 1.7) == [0] and not book.slots[0].alive
    assert not book.slots[0].leaving
    assert rec.left == [0] and rec.t_done == 1.7
    assert events(book)[-1] == (0, "left", "replaced") and book.slot_events[-1][0] == 1.7
    assert book.replaced(0, 1.8) == [] and book.slots[1].alive                            # device 1 untouched


def test_without_overlap_the_old_slots_leave_at_once():
    book = ledger(spec("whole"))
    rec = book.plan(Placement((spec("mps50"), spec("mps50"))), 1.0)
    assert rec.left == [0] and not book.slots[0].alive and leaving(book) == set()


def test_real_mig_instances_break_before_they_make():
    # A real MIG instance's slice is taken until it is destroyed: its move cannot overlap.
    book = ledger(spec("mig-3g.40gb"), spec("mig-3g.40gb", 1))
    rec = book.plan(Placement((spec("mig-1g.10gb"), spec("mig-3g.40gb", 1))), 1.0, overlap=True)
    assert rec.left == [0] and not book.slots[0].alive
    # An emulated one is MPS underneath: it overlaps.
    book = ledger(spec("mig-3g.40gb-emulated"))
    rec = book.plan(Placement((spec("mig-1g.10gb-emulated"),)), 1.0, overlap=True)
    assert rec.left == [] and book.slots[0].alive and leaving(book) == {0}


def test_a_later_move_may_keep_a_slot_being_replaced_or_let_it_go_at_once():
    book = ledger(spec("whole"))
    book.plan(Placement((spec("mps50"), spec("mps50"))), 1.0, overlap=True)
    # Back to the whole GPU before the shares joined: the old slot stays, the starting shares are cancelled.
    rec = book.plan(Placement((spec("whole"),)), 1.2, overlap=True)
    assert sorted(rec.left) == [1, 2] and rec.joining == [] and leaving(book) == set() and book.slots[0].alive
    assert not book.slots[0].leaving
    assert not book.join(1, 1.5) and [e for e in events(book) if e[1] == "cancelled"] == [
        (1, "cancelled", "reconfigured before it joined"), (2, "cancelled", "reconfigured before it joined")]
    # A move that starts nothing on the device, made while a slot there is being replaced, lets it go now.
    book.plan(Placement((spec("mps50"), spec("mps50"))), 2.0, overlap=True)
    rec = book.plan(Placement(()), 2.1, overlap=True)
    assert 0 in rec.left and not book.slots[0].alive and leaving(book) == set()
    assert book.placement.slots == ()


@pytest.mark.parametrize("overlap", [False, True])
def test_every_slot_that_went_is_in_its_reconfigurations_left(overlap):
    book = ledger(spec("mps50"), spec("mps50"))
    rec = book.plan(Placement((spec("whole"),)), 1.0, overlap=overlap)
    book.join(rec.joining[0], 1.4)
    book.replaced(0, 1.4)
    assert sorted(rec.left) == [0, 1] and not any(book.slots[i].alive for i in (0, 1))


def test_a_slot_lost_while_being_replaced_is_not_replaced_again():
    book = ledger(spec("whole"))
    rec = book.plan(Placement((spec("mps50"), spec("mps50"))), 1.0, overlap=True)
    assert book.lose(0, 1.1, "worker died") and leaving(book) == set()
    book.join(rec.joining[0], 1.5)
    book.join(rec.joining[1], 1.5)
    assert book.replaced(0, 1.5) == [] and [e for e in events(book) if e[0] == 0] == [(0, "lost", "worker died")]
