"""The Redis commands that Grafana's Redis data source (redis-datasource) sends for the targets of
a dashboard, built the way the plugin builds them, so tests can run them against a real Redis."""

from __future__ import annotations

import json
from pathlib import Path


def targets(dashboard: dict):
    """(panel, target) for every query of every panel, rows included."""
    for panel in dashboard["panels"]:
        for inner in [panel] + panel.get("panels", []):
            for target in inner.get("targets", []):
                yield inner, target


def variables(dashboard: dict, overrides: dict[str, str] | None = None) -> dict[str, str]:
    values = {v["name"]: v["current"]["value"] for v in dashboard["templating"]["list"]}
    values.update(overrides or {})
    return values


def interpolate(text: str, values: dict[str, str]) -> str:
    for name in sorted(values, key=len, reverse=True):
        text = text.replace(f"${{{name}}}", values[name]).replace(f"${name}", values[name])
    return text


def command(target: dict, values: dict[str, str], time_range_ms: tuple[int, int]) -> list[str]:
    """The command line the plugin runs for `target` (its query model: command, keyName, ...)."""
    if target.get("query"):
        return interpolate(target["query"], values).split()
    name = target["command"]
    key = interpolate(target["keyName"], values)
    if name in ("get", "hgetall", "hkeys", "smembers", "type", "ttl", "hlen", "xlen", "llen", "scard"):
        return [name.upper(), key]
    if name == "hget":
        return ["HGET", key, interpolate(target["field"], values)]
    if name == "zrange":
        line = ["ZRANGE", key, target["min"], target["max"]]
        if target.get("zrangeQuery"):
            line.append(target["zrangeQuery"])
        return line + ["WITHSCORES"]
    if name in ("xrange", "xrevrange"):
        # Without start and end the plugin uses the dashboard's time range, in milliseconds.
        start = target.get("start") or str(time_range_ms[0])
        end = target.get("end") or str(time_range_ms[1])
        if name == "xrevrange":
            start, end = end, start
        line = [name.upper(), key, start, end]
        if target.get("count"):
            line += ["COUNT", str(target["count"])]
        return line
    raise ValueError(f"no Redis command known for the plugin command {name!r}")


def load(path: Path) -> dict:
    return json.loads(path.read_text())
