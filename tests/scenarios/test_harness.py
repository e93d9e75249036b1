"""The scenario checker itself: it must see a second charge, an orphan charge and a lie."""

from __future__ import annotations

import pytest

from tests.scenarios.harness import KEYS, World, check


def _charge_behind_payonces_back(world: World, key: str, ref: str) -> None:
    intent = world.intent(ref)
    if world.g1:
        world.direct.v1.charges.create(
            params={
                "amount": intent.amount,
                "currency": "usd",
                "source": "tok_visa",
                "metadata": {"payonce_key": key, "scenario": world.nonce},
            }
        )
    else:
        assert world.sim is not None
        world.sim.execute(intent, KEYS.provider_key("tenant-a", key), key=key)


def test_the_checker_reports_a_second_charge_of_one_key(world: World) -> None:
    outcome = world.guard().execute(world.intent("self-check"))
    check(world, [outcome])  # sound so far
    _charge_behind_payonces_back(world, outcome.key, "self-check")
    with pytest.raises(AssertionError, match="I1: provider key"):
        check(world, [outcome])


def test_the_checker_reports_an_orphan_charge(world: World) -> None:
    outcome = world.guard().execute(world.intent("self-check"))
    orphan = "k1_" + "0" * 64
    _charge_behind_payonces_back(world, orphan, "self-orphan")
    with pytest.raises(AssertionError, match=r"I4: .*(no durable record|orphan)"):
        check(world, [outcome])
