"""Pareto fronts of placements: the ones no other placement beats on both cost and speed.

A point is a dict; `cost` names the key to keep low (params, macs) and `speed` the key to
keep high (train or inference img/s). Ties count as not beaten, so equal points share a front.
"""
from __future__ import annotations


def dominates(a: dict, b: dict, cost: str, speed: str) -> bool:
    """`a` is at least as cheap and as fast as `b`, and strictly better in one."""
    return a[cost] <= b[cost] and a[speed] >= b[speed] and (a[cost] < b[cost] or a[speed] > b[speed])


def front(points: list[dict], cost: str, speed: str) -> list[dict]:
    """The non-dominated points, cheapest first (O(n²): 2^7 placements at most)."""
    kept = [p for p in points if not any(dominates(q, p, cost, speed) for q in points)]
    return sorted(kept, key=lambda p: (p[cost], -p[speed]))


def layers(points: list[dict], cost: str, speed: str) -> list[list[dict]]:
    """The front, then the front of what is left, and so on until every point is placed."""
    rest, out = list(points), []
    while rest:
        out.append(front(rest, cost, speed))
        ids = {id(p) for p in out[-1]}
        rest = [p for p in rest if id(p) not in ids]
    return out


def spread(items: list, k: int) -> list:
    """`k` items evenly spaced along `items`, both ends included (all of them if k >= len)."""
    if k >= len(items):
        return list(items)
    if k == 1:
        return [items[len(items) // 2]]
    return [items[round(i * (len(items) - 1) / (k - 1))] for i in range(k)]


def pick_along_front(points: list[dict], k: int, cost: str, speed: str) -> list[dict]:
    """`k` points spread along the front; when the front is shorter than `k`, all of it and
    then points spread along the next layers, so the choice stays as close to the front as it can."""
    chosen: list[dict] = []
    for layer in layers(points, cost, speed):
        chosen += spread(layer, k - len(chosen))
        if len(chosen) >= k:
            break
    return chosen
