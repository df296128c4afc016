"""Story families: each writes GSM8K-style questions from events that transform a running quantity.

An event costs one or two program steps (two when it first computes a sub-quantity, e.g. "3 books for 4
dollars each", and then combines it with the running total). A final event also sets the question. An
event's first step repeats its question sentence word for word (sequence marker included: "Then she
spends 7 dollars") before ", so ... a op b = c": copying a sentence is the easiest thing for a tiny model
to learn (induction), and it brings the step's numbers next to its equation. Ages chain people by name
instead of markers ("Jack is 4 years older than Omar").
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from lema.core.synthetic import vocab
from lema.core.synthetic.program import Operand
from lema.core.synthetic.story import Reject, Story

EventFn = Callable[[Story], None]


@dataclass(frozen=True)
class Event:
    fn: EventFn
    cost: int  # program steps it adds
    final: bool = False  # sets the question; only as the last event
    max_uses: int = 1  # repeats only where the wording changes, so each number has a distinct context


@dataclass(frozen=True)
class Family:
    name: str
    setup: EventFn  # chooses the story's words (no steps)
    openers: tuple[Event, ...]  # set the first running quantity
    events: tuple[Event, ...]
    question: Callable[[Story], str]  # the question when the last event is not final


# ---------------------------------------------------------------------------------------------- shopping
def _shop_setup(s: Story) -> None:
    s.vars["items"] = s.fresh("items_used", vocab.SHOP_ITEMS)


def _shop_open_group(s: Story) -> None:
    p, it = s.person, s.vars["items"]
    n, price = s.product_pair()
    said = s.say(f"{p.name} buys {n} {it} for {price} dollars each", marked=False)
    s.run = s.op("*", n, price, f"{said}, so {p.subj} pays", "dollars")


def _shop_open_single(s: Story) -> None:
    thing = s.fresh("things", vocab.SHOP_THINGS)
    x = s.start(0.1, 0.6)
    s.say(f"{s.person.name} buys a {thing} for {x} dollars", marked=False)
    s.run = Operand(x)


def _shop_extra_thing(s: Story) -> None:
    p, thing = s.person, s.fresh("things", vocab.SHOP_THINGS)
    x = s.addend(s.run.value, hi=s.part(0.4))
    said = s.say(f"{p.Subj} also buys a {thing} for {x} dollars")
    s.run = s.op("+", s.run, x, f"{said}, so {p.subj} spends", "dollars")


def _shop_extra_group(s: Story) -> None:
    p, it = s.person, s.fresh("items_used", vocab.SHOP_ITEMS)
    m, q = s.product_pair(big_hi=s.limits.max_value - s.run.value)
    said = s.say(f"{p.Subj} also buys {m} {it} for {q} dollars each")
    sub = s.op("*", m, q, f"{said}, so they cost", "dollars")
    s.run = s.op("+", s.run, sub, f"In total {p.subj} spends", "dollars")


def _shop_coupon(s: Story) -> None:
    p = s.person
    d = s.subtrahend(s.run.value)
    said = s.say(f"{p.Subj} uses a coupon for {d} dollars off")
    s.run = s.op("-", s.run, d, f"{said}, so {p.subj} pays", "dollars")


def _shop_change(s: Story) -> None:
    p = s.person
    bills = [b for b in (10, 20, 50, 100) if s.run.value < b <= s.limits.max_value] or [s.num(s.run.value + 1, s.limits.max_value)]
    bill = s.choice(bills)
    said = s.say(f"{p.Subj} pays with {bill} dollars")
    s.question = f"How much change does {p.subj} get?"
    s.run = s.op("-", bill, s.run, f"{said}, so {p.poss} change is", "dollars")


def _shop_split(s: Story) -> None:
    k = s.divisor_of(s.run.value)
    said = s.say(f"The cost is split equally among {k} friends")
    s.question = "How much does each friend pay?"
    s.run = s.op("/", s.run, k, f"{said}, so each friend pays", "dollars")


SHOPPING = Family(
    "shopping",
    _shop_setup,
    (Event(_shop_open_group, 1), Event(_shop_open_single, 0)),
    (Event(_shop_extra_thing, 1, max_uses=2), Event(_shop_extra_group, 2, max_uses=2), Event(_shop_coupon, 1),
     Event(_shop_change, 1, final=True), Event(_shop_split, 1, final=True)),
    lambda s: f"How much does {s.person.subj} spend in total?",
)



# ------------------------------------------------------------------------------------------ rates and time
def _rate_setup(s: Story) -> None:
    verb, things = s.choice(vocab.JOBS)
    s.vars.update(verb=verb, things=things)


def _rate_open(s: Story) -> None:
    p, verb, th = s.person, s.vars["verb"], s.vars["things"]
    r, h = s.product_pair()
    said = s.say(f"{p.name} {verb} {r} {th} per hour for {h} hours", marked=False)
    s.run = s.op("*", r, h, f"{said}, so {p.subj} {verb}", th)


def _rate_open_days(s: Story) -> None:
    p, verb, th = s.person, s.vars["verb"], s.vars["things"]
    r, d = s.product_pair()
    said = s.say(f"{p.name} {verb} {r} {th} a day for {d} days", marked=False)
    s.run = s.op("*", r, d, f"{said}, so {p.subj} {verb}", th)


def _rate_more_hours(s: Story) -> None:
    p, verb, th = s.person, s.vars["verb"], s.vars["things"]
    r, h = s.product_pair(big_hi=s.limits.max_value - s.run.value)
    said = s.say(f"{p.Subj} {verb} {r} {th} per hour for {h} more hours")
    sub = s.op("*", r, h, f"{said}, so {p.subj} {verb}", th)
    s.run = s.op("+", s.run, sub, f"Altogether {p.subj} {verb}", th)


def _rate_helper(s: Story) -> None:
    p, verb, th = s.person, s.vars["verb"], s.vars["things"]
    helper = s.fresh("helpers", vocab.RELATIVES)
    a = s.addend(s.run.value, hi=s.part(0.4))
    said = s.say(f"{p.Poss} {helper} {verb} {a} {th} too")
    s.run = s.op("+", s.run, a, f"{said}, so together they have", th)


def _rate_loss(s: Story) -> None:
    p, th = s.person, s.vars["things"]
    d = s.subtrahend(s.run.value)
    said = s.say(f"{p.Subj} throws away {d} {th}")
    s.run = s.op("-", s.run, d, f"{said}, so {p.subj} keeps", th)


def _rate_repeat(s: Story) -> None:
    p, th = s.person, s.vars["things"]
    k = s.factor_for(s.run.value, hi=5)
    said = s.say(f"{p.Subj} does the same thing for {k} weeks")
    s.run = s.op("*", s.run, k, f"{said}, so {p.subj} gets", th)


def _rate_pack(s: Story) -> None:
    p, th = s.person, s.vars["things"]
    k = s.divisor_of(s.run.value)
    said = s.say(f"{p.Subj} puts the {th} in bags of {k}")
    s.question = f"How many bags does {p.subj} fill?"
    s.run = s.op("/", s.run, k, f"{said}, so {p.subj} fills", "bags")


RATES_AND_TIME = Family(
    "rates_and_time",
    _rate_setup,
    (Event(_rate_open, 1), Event(_rate_open_days, 1)),
    (Event(_rate_more_hours, 2), Event(_rate_helper, 1, max_uses=2), Event(_rate_loss, 1), Event(_rate_repeat, 1),
     Event(_rate_pack, 1, final=True)),
    lambda s: f"How many {s.vars['things']} are there at the end?",
)


# ------------------------------------------------------------------------------------ sharing and groups
def _group_setup(s: Story) -> None:
    s.vars.update(place=s.choice(vocab.PLACES), people=s.choice(vocab.PEOPLE),
                  shared=s.choice(vocab.SHARED_THINGS), teams=s.choice(vocab.TEAM_WORDS))


def _group_open_count(s: Story) -> None:
    n = s.start(0.1, 0.8)
    s.say(f"There are {n} {s.vars['people']} at the {s.vars['place']}", marked=False)
    s.run = Operand(n)


def _group_open_teams(s: Story) -> None:
    pe, teams = s.vars["people"], s.vars["teams"]
    g, m = s.product_pair()
    said = s.say(f"The {s.vars['place']} has {g} {teams} of {m} {pe}", marked=False)
    s.run = s.op("*", g, m, f"{said}, so there are", pe)


def _group_join(s: Story) -> None:
    pe = s.vars["people"]
    j = s.addend(s.run.value, hi=s.part(0.3))
    said = s.say(f"{j} more {pe} arrive")
    s.run = s.op("+", s.run, j, f"{said}, so there are", pe)


def _group_join_teams(s: Story) -> None:
    pe = s.vars["people"]
    g, m = s.product_pair(big_hi=s.limits.max_value - s.run.value)
    said = s.say(f"{g} vans with {m} {pe} each arrive")
    sub = s.op("*", g, m, f"{said}, so they bring", pe)
    s.run = s.op("+", s.run, sub, "Now there are", pe)


def _group_leave(s: Story) -> None:
    pe = s.vars["people"]
    l_ = s.subtrahend(s.run.value)
    where = s.fresh("leave_where", ["home", "to lunch"])
    said = s.say(f"{l_} {pe} go {where}")
    s.run = s.op("-", s.run, l_, f"{said}, so", f"{pe} stay")


def _group_split(s: Story) -> None:
    k = s.divisor_of(s.run.value)
    said = s.say(f"They form groups of {k}")
    s.question = "How many groups are there?"
    s.run = s.op("/", s.run, k, f"{said}, so they make", "groups")


def _group_split_share(s: Story) -> None:
    sh = s.vars["shared"]
    k = s.divisor_of(s.run.value)
    groups = s.run.value // k
    c = s.factor_for(groups, hi=8)
    said_groups = s.say(f"They form groups of {k}")
    said_each = s.say(f"Each group gets {c} {sh}")
    s.question = f"How many {sh} are needed?"
    g = s.op("/", s.run, k, f"{said_groups}, so they make", "groups")
    s.run = s.op("*", g, c, f"{said_each}, so they need", sh)


def _group_each(s: Story) -> None:
    sh = s.vars["shared"]
    c = s.factor_for(s.run.value, hi=6)
    said = s.say(f"Each of them gets {c} {sh}")
    s.question = f"How many {sh} are given out?"
    s.run = s.op("*", s.run, c, f"{said}, so they get", sh)


SHARING_AND_GROUPS = Family(
    "sharing_and_groups",
    _group_setup,
    (Event(_group_open_count, 0), Event(_group_open_teams, 1)),
    (Event(_group_join, 1, max_uses=2), Event(_group_join_teams, 2), Event(_group_leave, 1, max_uses=2),
     Event(_group_split, 1, final=True), Event(_group_split_share, 2, final=True),
     Event(_group_each, 1, final=True)),
    lambda s: f"How many {s.vars['people']} are there now?",
)


# -------------------------------------------------------------------------------------------------- ages
def _age_setup(s: Story) -> None:
    s.vars["people"] = [(s.person.name, None)]  # (name, age operand); filled by the opener


def _age_open(s: Story) -> None:
    a = s.start(0.04, 0.4)
    s.say(f"{s.person.name} is {a} years old", marked=False)
    s.run = Operand(a)
    s.vars["people"] = [(s.person.name, s.run)]


def _age_relative(s: Story, op: str) -> None:
    prev = s.vars["people"][-1][0]
    other = s.new_person().name
    if op == "+":
        d = s.addend(s.run.value, lo=2, hi=s.part(0.3))
        said = s.say(f"{other} is {d} years older than {prev}", marked=False)
    elif op == "-":
        d = s.subtrahend(s.run.value, lo=2)
        said = s.say(f"{other} is {d} years younger than {prev}", marked=False)
    else:
        d = s.factor_for(s.run.value, hi=5)
        said = s.say(f"{other} is {d} times as old as {prev}", marked=False)
    s.run = s.op(op, s.run, d, f"{said}, so {other} is", "years old")
    s.vars["people"] = [*s.vars["people"], (other, s.run)]


def _age_future(s: Story) -> None:
    name = s.vars["people"][-1][0]
    y = s.addend(s.run.value, hi=s.part(0.2))
    s.question = f"How old will {name} be in {y} years?"
    s.run = s.op("+", s.run, y, f"In {y} years {name} will be", "years old")


def _age_past(s: Story) -> None:
    name = s.vars["people"][-1][0]
    y = s.subtrahend(s.run.value)
    s.question = f"How old was {name} {y} years ago?"
    s.run = s.op("-", s.run, y, f"{y} years ago {name} was", "years old")


def _age_sum(s: Story) -> None:
    people = s.vars["people"]
    if len(people) < 3:  # sum with someone other than the previous person, to vary the structure
        raise Reject("too few people")
    name, age = people[-1]
    other, other_age = s.choice(people[:-2])
    s.question = f"What is the sum of the ages of {other} and {name}?"
    s.run = s.op("+", age, other_age, f"{name} is {age.value} and {other} is {other_age.value}, so together they are",
                 "years")


def _age_gap(s: Story) -> None:
    people = s.vars["people"]
    name, age = people[-1]
    younger = [(n, a) for n, a in people[:-2] if a.value < age.value]
    if not younger:
        raise Reject("nobody younger")
    other, other_age = s.choice(younger)
    s.question = f"How many years older is {name} than {other}?"
    s.run = s.op("-", age, other_age, f"{name} is {age.value} and {other} is {other_age.value}, so the gap is",
                 "years")


def _age_older(s: Story) -> None:
    _age_relative(s, "+")


def _age_younger(s: Story) -> None:
    _age_relative(s, "-")


def _age_times(s: Story) -> None:
    _age_relative(s, "*")


AGES = Family(
    "ages",
    _age_setup,
    (Event(_age_open, 0),),
    (Event(_age_older, 1, max_uses=3), Event(_age_younger, 1, max_uses=3),
     Event(_age_times, 1, max_uses=2), Event(_age_future, 1, final=True),
     Event(_age_past, 1, final=True), Event(_age_sum, 1, final=True), Event(_age_gap, 1, final=True)),
    lambda s: f"How old is {s.vars['people'][-1][0]}?",
)


# ------------------------------------------------------------------------------------------ money and change
def _money_setup(s: Story) -> None:
    s.vars["items"] = s.choice(vocab.SHOP_ITEMS)


def _money_open(s: Story) -> None:
    x = s.start(0.1, 0.9)
    s.say(f"{s.person.name} has {x} dollars", marked=False)
    s.run = Operand(x)


def _money_open_saves(s: Story) -> None:
    p = s.person
    w, k = s.product_pair()
    said = s.say(f"{p.name} saves {w} dollars a week for {k} weeks", marked=False)
    s.run = s.op("*", w, k, f"{said}, so {p.subj} has", "dollars")


def _money_gift(s: Story) -> None:
    p, giver = s.person, s.fresh("givers", vocab.GIVERS)
    g = s.addend(s.run.value, hi=s.part(0.4))
    said = s.say(f"{p.Poss} {giver} gives {p.obj} {g} dollars")
    s.run = s.op("+", s.run, g, f"{said}, so {p.subj} has", "dollars")


def _money_earn(s: Story) -> None:
    p = s.person
    w, d = s.product_pair(big_hi=s.limits.max_value - s.run.value)
    said = s.say(f"{p.Subj} earns {w} dollars a day for {d} days")
    sub = s.op("*", w, d, f"{said}, so {p.subj} earns", "dollars")
    s.run = s.op("+", s.run, sub, f"Now {p.subj} has", "dollars")


def _money_spend(s: Story) -> None:
    p, thing = s.person, s.fresh("things", vocab.SHOP_THINGS)
    c = s.subtrahend(s.run.value)
    said = s.say(f"{p.Subj} spends {c} dollars on a {thing}")
    s.run = s.op("-", s.run, c, f"{said}, so {p.subj} has", "dollars left")


def _money_buy_group(s: Story) -> None:
    p, it = s.person, s.vars["items"]
    m, q = s.product_pair(big_hi=s.run.value // 2)
    said = s.say(f"{p.Subj} buys {m} {it} for {q} dollars each")
    sub = s.op("*", m, q, f"{said}, so they cost", "dollars")
    s.run = s.op("-", s.run, sub, f"{p.Subj} has", "dollars left")


def _money_jars(s: Story) -> None:
    p = s.person
    k = s.divisor_of(s.run.value)
    said = s.say(f"{p.Subj} puts the money equally into {k} jars")
    s.question = "How many dollars are in each jar?"
    s.run = s.op("/", s.run, k, f"{said}, so each jar gets", "dollars")


MONEY_AND_CHANGE = Family(
    "money_and_change",
    _money_setup,
    (Event(_money_open, 0), Event(_money_open_saves, 1)),
    (Event(_money_gift, 1, max_uses=2), Event(_money_earn, 2), Event(_money_spend, 1, max_uses=2),
     Event(_money_buy_group, 2),
     Event(_money_jars, 1, final=True)),
    lambda s: f"How many dollars does {s.person.subj} have now?",
)


# ---------------------------------------------------------------------------------------- unit conversion
def _unit_setup(s: Story) -> None:
    stuff, big, big1, small, c = s.choice([cv for cv in vocab.CONVERSIONS if 2 * cv[4] <= s.limits.max_value])
    s.vars.update(stuff=stuff, big=big, big1=big1, small=small, c=c)


def _unit_open(s: Story) -> None:
    v = s.vars
    q = s.num(2, s.limits.max_value // v["c"])
    said = s.say(f"{s.person.name} has {q} {v['big']} of {v['stuff']}", marked=False)
    s.say(f"One {v['big1']} is {v['c']} {v['small']}", marked=False)
    s.run = s.op("*", q, v["c"], f"{said}, which is", v["small"])


def _unit_open_mixed(s: Story) -> None:
    v = s.vars
    q = s.num(2, s.limits.max_value // v["c"] - 1)
    r = s.num(1, min(v["c"] * 2, s.limits.max_value - q * v["c"]))
    s.say(f"{s.person.name} has {q} {v['big']} and {r} {v['small']} of {v['stuff']}", marked=False)
    s.say(f"One {v['big1']} is {v['c']} {v['small']}", marked=False)
    sub = s.op("*", q, v["c"], f"{q} {v['big']} is", v["small"])
    s.run = s.op("+", sub, r, f"With the other {r} {v['small']}, {s.person.subj} has", v["small"])


def _unit_more(s: Story) -> None:
    p, v = s.person, s.vars
    a = s.addend(s.run.value, hi=s.part(0.3))
    verb = s.fresh("more_verb", ["gets", "finds"])
    said = s.say(f"{p.Subj} {verb} {a} more {v['small']}")
    s.run = s.op("+", s.run, a, f"{said}, so {p.subj} has", v["small"])


def _unit_more_big(s: Story) -> None:
    p, v = s.person, s.vars
    q = s.num(1, (s.limits.max_value - s.run.value) // v["c"])
    if q < 2:
        raise Reject("no room")
    said = s.say(f"{p.Subj} gets {q} more {v['big']}")
    sub = s.op("*", q, v["c"], f"{said}, which is", v["small"])
    s.run = s.op("+", s.run, sub, f"Now {p.subj} has", v["small"])


def _unit_use(s: Story) -> None:
    p, v = s.person, s.vars
    u = s.subtrahend(s.run.value)
    verb = s.fresh("use_verb", ["uses", "gives away"])
    said = s.say(f"{p.Subj} {verb} {u} {v['small']}")
    s.run = s.op("-", s.run, u, f"{said}, so {p.subj} has", f"{v['small']} left")


def _unit_split(s: Story) -> None:
    p, v = s.person, s.vars
    k = s.divisor_of(s.run.value)
    said = s.say(f"{p.Subj} splits it into {k} equal parts")
    s.question = f"How many {v['small']} are in each part?"
    s.run = s.op("/", s.run, k, f"{said}, so each part has", v["small"])


UNIT_CONVERSION = Family(
    "unit_conversion",
    _unit_setup,
    (Event(_unit_open, 1), Event(_unit_open_mixed, 2)),
    (Event(_unit_more, 1, max_uses=2), Event(_unit_more_big, 2), Event(_unit_use, 1, max_uses=2),
     Event(_unit_split, 1, final=True)),
    lambda s: f"How many {s.vars['small']} does {s.person.subj} have now?",
)


# ------------------------------------------------------------------------------- garden (held out: OOD)
def _garden_setup(s: Story) -> None:
    s.vars.update(plants=s.choice(vocab.PLANTS), box=s.choice(vocab.CONTAINERS))


def _garden_open_rows(s: Story) -> None:
    p, pl = s.person, s.vars["plants"]
    r, n = s.product_pair()
    said = s.say(f"{p.name} plants {r} rows of {n} {pl}", marked=False)
    s.run = s.op("*", r, n, f"{said}, so {p.subj} plants", pl)


def _garden_open_count(s: Story) -> None:
    p, pl = s.person, s.vars["plants"]
    x = s.start(0.1, 0.8)
    s.say(f"{p.name} has {x} {pl} in {p.poss} garden", marked=False)
    s.run = Operand(x)


def _garden_more(s: Story) -> None:
    p, pl = s.person, s.vars["plants"]
    a = s.addend(s.run.value, hi=s.part(0.3))
    said = s.say(f"{p.Subj} plants {a} more {pl}")
    s.run = s.op("+", s.run, a, f"{said}, so there are", pl)


def _garden_more_rows(s: Story) -> None:
    p, pl = s.person, s.vars["plants"]
    r, n = s.product_pair(big_hi=s.limits.max_value - s.run.value)
    said = s.say(f"{p.Subj} adds {r} rows of {n} {pl}")
    sub = s.op("*", r, n, f"{said}, so {p.subj} adds", pl)
    s.run = s.op("+", s.run, sub, "Now there are", pl)


def _garden_pests(s: Story) -> None:
    pl, pest = s.vars["plants"], s.fresh("pests", vocab.PESTS)
    d = s.subtrahend(s.run.value)
    said = s.say(f"{pest} eat {d} of the {pl}")
    s.run = s.op("-", s.run, d, f"{said}, so", f"{pl} are left")


def _garden_baskets(s: Story) -> None:
    p, box = s.person, s.vars["box"]
    k = s.divisor_of(s.run.value)
    said = s.say(f"{p.Subj} picks them and puts {k} in each of the {box}")
    s.question = f"How many {box} does {p.subj} fill?"
    s.run = s.op("/", s.run, k, f"{said}, so {p.subj} fills", box)


GARDEN = Family(
    "garden",
    _garden_setup,
    (Event(_garden_open_rows, 1), Event(_garden_open_count, 0)),
    (Event(_garden_more, 1), Event(_garden_more_rows, 2), Event(_garden_pests, 1, max_uses=2),
     Event(_garden_baskets, 1, final=True)),
    lambda s: f"How many {s.vars['plants']} are in the garden now?",
)

TRAIN_FAMILIES: tuple[Family, ...] = (SHOPPING, RATES_AND_TIME, SHARING_AND_GROUPS, AGES, MONEY_AND_CHANGE,
                                      UNIT_CONVERSION)
OOD_FAMILIES: tuple[Family, ...] = (GARDEN,)
FAMILIES: dict[str, Family] = {f.name: f for f in (*TRAIN_FAMILIES, *OOD_FAMILIES)}
