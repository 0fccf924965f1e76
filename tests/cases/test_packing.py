"""The packing core: properties over any sequence of items, and its JSON state."""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sorter.cases import Case, CaseStateError, PackItem, StationConfig, StationState
from sorter.cases.packing import offer

T0 = 1_780_000_000.0

bounds = st.one_of(
    st.floats(min_value=0.0, max_value=2500.0),  # mostly packable, some over the limit
    st.sampled_from([0.0, 2100.0, 2100.0001, 1050.0, 700.0, 0.1, 1e-300]),  # edges
    st.sampled_from([math.nan, math.inf, -1.0, -0.0]),  # invalid bounds
)
weights = st.one_of(st.floats(min_value=0.0, max_value=30_000.0), st.just(math.nan))
items = st.builds(
    lambda u, w, k: PackItem(
        f"I{k}", energy_wh_upper=u, energy_wh=u / 1.3 if math.isfinite(u) else math.nan, weight_g=w, t=T0 + k
    ),
    bounds,
    weights,
    st.integers(0, 10**6),
)
# An event on the line: an item, or the PLC confirming a new case / the operator closing one.
events = st.lists(st.one_of(items, items, items, st.just("open"), st.just("close"), st.just("restart")), max_size=80)
limits = st.sampled_from([2100.0, 1000.0, 0.5, 2100.0000000001, 333.3])
mass_limits = st.sampled_from([None, None, 25_000.0, 5_000.0])


def run(cfg: StationConfig, evs: list) -> tuple[list, list, list]:
    """Replay events; return (offers, closed cases + the open one, refused)."""
    state = StationState.new(cfg)
    offers, cases, refused = [], [], []
    k = 0
    for ev in evs:
        k += ev != "restart"
        now = T0 + 1000 + k
        if ev == "open":
            state, _ = state.open(now)
        elif ev == "close":
            state, closed = state.close(now)
            if closed is not None:
                cases.append(closed)
        elif ev == "restart":  # the line restarts from the saved state
            state = StationState.from_json(state.to_json())
        else:
            r = state.offer(ev, now=now)
            assert r.state is not state or r.kind != "assigned"
            offers.append(r)
            if r.closed is not None:
                cases.append(r.closed)
            if r.kind != "assigned":
                refused.append(r)
            state = r.state
    if state.open_case is not None:
        cases.append(state.open_case)
    return offers, cases, refused


@settings(max_examples=300, deadline=None)
@given(events, limits, mass_limits, st.booleans())
def test_no_case_over_the_limit_order_kept_each_item_once(evs, limit, mass_limit, auto_open):
    cfg = StationConfig(line="L1", limit_wh=limit, mass_limit_g=mass_limit, auto_open=auto_open)
    offers, cases, refused = run(cfg, evs)
    for c in cases:
        # the exact sum of the float bounds, not only the rounded-up integers, is within the limit
        assert math.fsum(i.energy_wh_upper for i in c.items) <= limit
        assert c.upper_wh <= limit
        if mass_limit is not None:
            assert all(math.isfinite(i.weight_g) for i in c.items)
            assert math.fsum(i.weight_g for i in c.items) <= mass_limit
    # belt order: the cases, in the order they were opened, hold the assigned items in offer order
    assert [c.n for c in cases] == sorted(c.n for c in cases)
    assert len({c.case_id for c in cases}) == len(cases)
    packed = [i for c in cases for i in c.items]
    assigned = [r.item for r in offers if r.kind == "assigned"]
    assert packed == assigned
    # every item offered is in exactly one case or refused, with a reason
    assert len(packed) + len(refused) == len(offers)
    for r in offers:
        if r.kind == "assigned":
            assert r.case_id is not None and r.reason == ""
            assert any(r.item in c.items and c.case_id == r.case_id for c in cases)
        else:
            assert r.case_id is None and r.reason
    # the refusals are the rules': a not-packable item could never go into any case
    for r in refused:
        u = r.item.energy_wh_upper
        if r.kind == "not_packable":
            assert (
                not math.isfinite(u)
                or u < 0
                or u > limit
                or (mass_limit is not None and not (r.item.weight_g <= mass_limit))
            )
        else:
            assert not auto_open


@settings(max_examples=200, deadline=None)
@given(events, limits, st.booleans())
def test_a_restart_from_json_changes_nothing(evs, limit, auto_open):
    """Saving and reloading the state at every step gives the same outcomes as never restarting."""
    cfg = StationConfig(line="L1", limit_wh=limit, auto_open=auto_open)
    plain = [e for e in evs if e != "restart"]
    a, ca, _ = run(cfg, plain)
    b, cb, _ = run(cfg, [x for e in plain for x in (e, "restart")])
    assert [(r.kind, r.case_id, r.reason) for r in a] == [(r.kind, r.case_id, r.reason) for r in b]
    assert ca == cb


@settings(max_examples=200, deadline=None)
@given(st.lists(st.one_of(items, items, items, st.just("restart")), max_size=80), limits, st.integers(1, 4))
def test_several_positions_never_over_the_limit_each_item_once_and_a_restart_changes_nothing(evs, limit, positions):
    cfg = StationConfig(line="L1", limit_wh=limit, auto_open=True, positions=positions)
    state = StationState.new(cfg)
    cases: dict[str, list] = {}
    closed = []
    offers = []
    for ev in evs:
        if ev == "restart":
            again = StationState.from_json(state.to_json())
            assert again == state
            state = again
            continue
        r = state.offer(ev, now=T0 + len(offers))
        offers.append(r)
        assert len(r.state.open_cases) <= positions
        if r.closed is not None:
            closed.append(r.closed)
            assert r.closed.close_reason == "full"
            assert (
                r.kind == "assigned" and len(state.open_cases) == positions
            )  # closed only when every position is taken
        if r.kind == "assigned":
            cases.setdefault(r.case_id, []).append(r.item)
            assert r.seq == len(cases[r.case_id])
        state = r.state
    final = list(closed) + list(state.open_cases)
    assert sorted(c.case_id for c in final) == sorted(cases)  # every case that took an item, once
    for c in final:
        assert math.fsum(i.energy_wh_upper for i in c.items) <= limit and c.upper_wh <= limit
        assert list(c.items) == cases[c.case_id]  # each case holds its items in belt order
    assert sum(len(c.items) for c in final) == sum(r.kind == "assigned" for r in offers)
    if positions == 1:  # one position: exactly the one-case station
        one = StationState.new(StationConfig(line="L1", limit_wh=limit, auto_open=True))
        for k, ev in enumerate(e for e in evs if e != "restart"):
            r1 = one.offer(ev, now=T0 + k)
            one = r1.state
        assert one.to_json() == state.to_json()


def test_positions_keep_a_case_open_for_a_later_small_item():
    cfg = StationConfig(line="L1", limit_wh=2100.0, auto_open=True, positions=2)
    s = StationState.new(cfg)
    for k, u in enumerate([1400.0, 1400.0, 650.0, 690.0]):
        r = s.offer(PackItem(f"I{k}", energy_wh_upper=u), now=T0)
        s = r.state
        assert r.closed is None
    assert [(c.case_id[-4:], c.upper_wh) for c in s.open_cases] == [("0001", 2050.0), ("0002", 2090.0)]
    r = s.offer(PackItem("I4", energy_wh_upper=100.0), now=T0)  # fits neither: the fullest closes
    assert r.closed.case_id.endswith("0002") and r.case_id.endswith("0003")
    st2 = StationState.from_json(r.state.to_json())
    assert st2 == r.state and len(st2.open_cases) == 2
    with pytest.raises(CaseStateError, match="positions"):
        StationConfig(positions=0, auto_open=True)
    with pytest.raises(CaseStateError, match="position"):
        st2.reconfigure(StationConfig(line="L1", auto_open=True))  # two open cases, one position
    assert "positions" not in StationState.new(StationConfig()).to_json()  # one position: the old format


@settings(max_examples=100, deadline=None)
@given(st.lists(items, max_size=60), limits)
def test_the_open_case_rebuilds_from_per_item_records(its, limit):
    """What the line records per item (case id, position, the item) is enough to resume exactly."""
    cfg = StationConfig(line="L1", limit_wh=limit, auto_open=True)
    state = StationState.new(cfg)
    records: dict[str, list] = {}
    for it in its:
        r = state.offer(it, now=T0)
        if r.kind == "assigned":
            records.setdefault(r.case_id, []).append((r.seq, r.item))
        state = r.state
    c = state.open_case
    if c is None:
        return
    rows = records[c.case_id]
    assert [seq for seq, _ in rows] == list(range(1, len(rows) + 1))
    again = Case.rebuild(c.case_id, c.n, c.opened_t, [i for _, i in rows])
    assert StationState(cfg, again, state.next_n) == state


def test_a_case_closes_when_the_next_bound_would_not_fit():
    cfg = StationConfig(line="L1", auto_open=True)
    st_ = StationState.new(cfg)
    ids = []
    for k, u in enumerate([1000.0, 1000.0, 99.5, 0.5, 1.0]):
        r = st_.offer(PackItem(f"A{k}", u), now=T0)
        ids.append(r.case_id)
        st_ = r.state
    assert ids[:4] == [ids[0]] * 4 and ids[4] != ids[0]  # exactly 2100 fits; 2101 > 2100: the fifth opens case 2
    assert r.closed is not None and r.closed.upper_wh == 2100.0 and r.closed.close_reason == "full"
    assert r.closed.case_id == "L1-20260528-0001" and r.case_id == "L1-20260528-0002"


def test_on_the_line_a_full_case_waits_for_the_next_to_be_confirmed():
    cfg = StationConfig(line="L1", auto_open=False)
    s = StationState.new(cfg)
    r = s.offer(PackItem("A", 10.0), now=T0)
    assert r.kind == "no_case_ready" and "no case ready" in r.reason
    s, case = s.open(T0)
    r = s.offer(PackItem("B", 2000.0), now=T0)
    assert r.kind == "assigned" and r.case_id == case.case_id
    r = r.state.offer(PackItem("C", 200.0), now=T0 + 1)
    assert r.kind == "no_case_ready" and r.closed is not None and r.closed.items == (PackItem("B", 2000.0),)
    assert "full" in r.reason
    assert r.state.open_case is None
    r = r.state.offer(PackItem("D", 1.0), now=T0 + 2)  # still no case: the safe place
    assert r.kind == "no_case_ready"
    s, case2 = r.state.open(T0 + 3)
    assert case2.case_id.endswith("-0002") and s.offer(PackItem("E", 1.0), now=T0 + 4).case_id == case2.case_id


def test_not_packable_items_leave_the_open_case_as_it_was():
    s, _ = StationState.new(StationConfig(mass_limit_g=20_000.0)).open(T0)
    s = s.offer(PackItem("A", 100.0, weight_g=1000.0), now=T0).state
    for it, words in [
        (PackItem("M", 2100.01), "alone exceeds the case limit"),
        (PackItem("N", math.nan), "no valid energy bound"),
        (PackItem("W", 10.0, weight_g=math.nan), "no weight"),
        (PackItem("H", 10.0, weight_g=20_001.0), "mass limit"),
    ]:
        r = s.offer(it, now=T0)
        assert r.kind == "not_packable" and words in r.reason and r.state == s


def test_state_json_round_trip_and_damage_is_refused():
    s, _ = StationState.new(StationConfig(line="L1")).open(T0)
    s = s.offer(PackItem("A", 100.25, energy_wh=80.0, weight_g=math.nan, t=T0), now=T0).state
    text = s.to_json()
    assert "NaN" not in text
    assert StationState.from_json(text) == s
    d = json.loads(text)
    d["open_case"]["upper_mwh"] = 5  # a state that under-counts its items is refused
    with pytest.raises(CaseStateError, match="sums do not match"):
        StationState.from_json(json.dumps(d))
    d = json.loads(text)
    d["config"]["limit_wh"] = 50.0  # an open case over the (edited) limit is refused
    with pytest.raises(CaseStateError, match="over the new limit"):
        StationState.from_json(json.dumps(d))
    d = json.loads(text)
    d["config"]["colour"] = "red"
    with pytest.raises(CaseStateError, match="unknown key"):
        StationState.from_json(json.dumps(d))
    with pytest.raises(CaseStateError, match="not valid JSON"):
        StationState.from_json(text[:-3])
    with pytest.raises(ValueError):  # also a ValueError for callers that catch builtins
        StationState.from_json("{}")


@pytest.mark.parametrize(
    "kw, words",
    [
        ({"limit_wh": 0}, "limit_wh"),
        ({"limit_wh": math.nan}, "limit_wh"),
        ({"mass_limit_g": -1.0}, "mass_limit_g"),
        ({"case_id_scheme": "{line}-{date:%Y}"}, "must use {n}"),
        ({"case_id_scheme": "{who}-{n}"}, "may use only"),
        ({"case_id_scheme": "{n:Z}"}, "cannot be formatted"),
        ({"lane": ""}, "lane"),
    ],
)
def test_bad_configuration_is_refused_with_a_fix(kw, words):
    with pytest.raises(CaseStateError, match="e.g.|must|positive|lane"):
        try:
            StationConfig(**kw)
        except CaseStateError as err:
            assert words in str(err)
            raise


def test_case_ids_follow_the_scheme():
    cfg = StationConfig(line="B2", case_id_scheme="DDR-{line}-{date:%Y%m%d}-{n:05d}")
    s, c = StationState.new(cfg, first_n=42).open(T0)
    assert c.case_id == "DDR-B2-20260528-00042" and s.next_n == 43


def test_offer_function_and_method_agree():
    s = StationState.new(StationConfig(auto_open=True))
    it = PackItem("A", 5.0, t=T0)
    assert offer(s, it) == s.offer(it)


def test_opening_a_case_needs_a_time():
    with pytest.raises(CaseStateError, match="epoch seconds"):
        StationState.new(StationConfig()).open(math.nan)


def test_the_module_examples_run():
    import doctest

    import sorter.cases.packing as packing

    assert doctest.testmod(packing).failed == 0


def test_on_the_line_positions_open_when_confirmed_and_close_one_by_one():
    """Without auto_open (the line): a case opens at a position only when the PLC confirms it; an
    item that fits no open case while a position is free finds no case ready and closes nothing;
    with every position holding a case the fullest closes; close(case_id) closes only that case."""
    cfg = StationConfig(line="L1", limit_wh=2100.0, positions=3)
    s = StationState.new(cfg)
    assert s.offer(PackItem("X", energy_wh_upper=10.0), now=T0).kind == "no_case_ready"
    s, a = s.open(T0)
    s, b = s.open(T0)
    assert [c.case_id for c in s.open_cases] == [a.case_id, b.case_id]
    r = s.offer(PackItem("I1", energy_wh_upper=1500.0), now=T0)
    assert (r.kind, r.case_id, r.seq) == ("assigned", a.case_id, 1)
    r = r.state.offer(PackItem("I2", energy_wh_upper=1500.0), now=T0)
    assert (r.kind, r.case_id) == ("assigned", b.case_id)
    r = r.state.offer(PackItem("I3", energy_wh_upper=1000.0), now=T0)  # fits neither; position 3 is free
    assert r.kind == "no_case_ready" and r.closed is None
    s, c = r.state.open(T0)
    s2, same = s.open(T0)  # every position holds a case: nothing opens
    assert s2 == s and same == c
    r = s.offer(PackItem("I4", energy_wh_upper=1000.0), now=T0)
    assert r.case_id == c.case_id
    r = r.state.offer(PackItem("I5", energy_wh_upper=1200.0), now=T0)  # fits none, no free position
    assert r.kind == "no_case_ready" and r.closed is not None and r.closed.upper_wh == 1500.0
    s, closed = r.state.close(T0 + 1, "case removed", case_id=c.case_id)
    assert closed is not None and closed.case_id == c.case_id and closed.close_reason == "case removed"
    assert [x.case_id for x in s.open_cases] == [b.case_id if r.closed.case_id == a.case_id else a.case_id]
    assert s.close(T0, "x", case_id="nope") == (s, None)
    assert StationState.from_json(s.to_json()) == s
