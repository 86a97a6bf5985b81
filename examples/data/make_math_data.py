"""Generate the shipped arithmetic word-problem data set (``math_train.jsonl``, ``math_test.jsonl``).

Where the data comes from: nothing is downloaded. Every problem is built by this script from the
story frames below with a fixed seed, so anyone can regenerate the files byte for byte:

    python examples/data/make_math_data.py

The worked answers are deliberately written in a terse, calculator-annotated style
("3 * 4 = 12 apples. ... The answer is 17.") in the format of the paper's pre-processed GSM8K
files: the last line is always ``The answer is N.``. A chat model answers in a chattier style of its
own, which is exactly the distribution gap SDFT is about.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

NAMES = ["Ava", "Ben", "Chloe", "Dev", "Elena", "Farid", "Grace", "Hugo", "Ines", "Jamal", "Kira",
         "Liam", "Maya", "Noah", "Olga", "Priya", "Quinn", "Rosa", "Sam", "Tariq", "Uma", "Victor"]
ITEMS = ["apples", "pencils", "stickers", "marbles", "cookies", "books", "cards", "shells",
         "stamps", "coins", "buttons", "oranges"]


def _buy_groups(r: random.Random) -> tuple[str, list[str], int]:
    n, g, k = r.randint(2, 9), r.randint(2, 12), r.randint(1, 20)
    name, item = r.choice(NAMES), r.choice(ITEMS)
    total = n * g + k
    q = (f"{name} buys {n} bags of {item}. Each bag holds {g} {item}. {name} already had {k} {item}. "
         f"How many {item} does {name} have now?")
    steps = [f"Bags: {n} * {g} = {n * g} {item}.", f"Total: {n * g} + {k} = {total} {item}."]
    return q, steps, total


def _share(r: random.Random) -> tuple[str, list[str], int]:
    friends, each, extra = r.randint(2, 8), r.randint(2, 15), r.randint(1, 9)
    name, item = r.choice(NAMES), r.choice(ITEMS)
    start = friends * each + extra
    q = (f"{name} has {start} {item}. {name} keeps {extra} and shares the rest equally among "
         f"{friends} friends. How many {item} does each friend get?")
    steps = [f"To share: {start} - {extra} = {start - extra}.", f"Each: {start - extra} / {friends} = {each}."]
    return q, steps, each


def _spend(r: random.Random) -> tuple[str, list[str], int]:
    price, qty, budget_extra = r.randint(2, 25), r.randint(2, 9), r.randint(1, 60)
    name, item = r.choice(NAMES), r.choice(ITEMS)
    cost = price * qty
    budget = cost + budget_extra
    q = (f"{name} has ${budget}. {item.capitalize()} cost ${price} each. {name} buys {qty} {item}. "
         f"How many dollars does {name} have left?")
    steps = [f"Cost: {qty} * {price} = ${cost}.", f"Left: {budget} - {cost} = ${budget_extra}."]
    return q, steps, budget_extra


def _weeks(r: random.Random) -> tuple[str, list[str], int]:
    per_day, days, weeks = r.randint(2, 30), r.randint(2, 7), r.randint(2, 6)
    name = r.choice(NAMES)
    per_week = per_day * days
    total = per_week * weeks
    q = (f"{name} reads {per_day} pages a day, {days} days a week. How many pages does {name} "
         f"read in {weeks} weeks?")
    steps = [f"Per week: {per_day} * {days} = {per_week} pages.", f"{weeks} weeks: {per_week} * {weeks} = {total} pages."]
    return q, steps, total


def _two_people(r: random.Random) -> tuple[str, list[str], int]:
    a, times, minus = r.randint(3, 20), r.randint(2, 5), r.randint(1, 10)
    n1, n2 = r.sample(NAMES, 2)
    item = r.choice(ITEMS)
    b = a * times - minus
    total = a + b
    q = (f"{n1} has {a} {item}. {n2} has {minus} fewer than {times} times as many as {n1}. "
         f"How many {item} do they have together?")
    steps = [f"{n2}: {a} * {times} - {minus} = {b}.", f"Together: {a} + {b} = {total}."]
    return q, steps, total


def _percent(r: random.Random) -> tuple[str, list[str], int]:
    price = r.choice([20, 40, 50, 60, 80, 100, 120, 150, 200, 250])
    pct = r.choice([10, 20, 25, 50])
    name = r.choice(NAMES)
    off = price * pct // 100
    q = f"A jacket costs ${price}. {name} gets a {pct}% discount. How much does {name} pay in dollars?"
    steps = [f"Discount: {price} * {pct} / 100 = ${off}.", f"Pays: {price} - {off} = ${price - off}."]
    return q, steps, price - off


FRAMES = [_buy_groups, _share, _spend, _weeks, _two_people, _percent]


def make(n: int, r: random.Random, prefix: str, seen: set[str]) -> list[dict]:
    rows = []
    while len(rows) < n:
        q, steps, ans = r.choice(FRAMES)(r)
        if q in seen:
            continue
        seen.add(q)
        rows.append({"id": f"{prefix}-{len(rows):04d}", "question": q,
                     "answer": "\n".join(steps) + f"\nThe answer is {ans}."})
    return rows


def main() -> None:
    r = random.Random(20240214)
    seen: set[str] = set()
    here = Path(__file__).parent
    for name, n, prefix in [("math_train.jsonl", 240, "train"), ("math_test.jsonl", 60, "test")]:
        with open(here / name, "w") as f:
            for row in make(n, r, prefix, seen):
                f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
