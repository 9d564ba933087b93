from .pointskit import Points


async def test_credit_then_balance(points: Points) -> None:
    await points.register("m1")
    r = await points.credit("m1", 100)
    assert r.balance_after == 100
    b = await points.balance("m1")
    assert (b.total, b.regular) == (100, 100)
    res = await points.reserve("m1", 30)
    cap = await points.capture(res.reservation_id, 20)
    assert (cap.captured, cap.returned, cap.balance_after) == (20, 10, 80)
