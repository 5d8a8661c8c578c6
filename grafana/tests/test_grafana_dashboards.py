"""grafana/: the provisioning is consistent, the dashboard reads only documented Redis keys, and
every one of its queries returns what the pipeline wrote after a real load."""

from __future__ import annotations

import re
import time
from collections import Counter, defaultdict

import pytest
import requests
import yaml

from dashboard_queries import command, load, targets, variables

DASHBOARD = "grafana/dashboards/bandvote-votes.json"


@pytest.fixture(scope="module")
def dashboard(repo):
    return load(repo / DASHBOARD)


@pytest.fixture(scope="module")
def datasource(repo):
    provisioning = yaml.safe_load((repo / "grafana/provisioning/datasources/redis.yaml").read_text())
    (source,) = provisioning["datasources"]
    return source


def documented_keys(repo) -> set[str]:
    """The key names (after `bandvote:`) in the table of docs/redis-keys.md."""
    text = (repo / "docs/redis-keys.md").read_text()
    return set(re.findall(r"^\| `bandvote:([a-z_:]+)", text, flags=re.M))


def test_the_data_source_is_the_redis_plugin(datasource):
    assert datasource["type"] == "redis-datasource"
    assert datasource["url"].startswith("redis://redis.datastores.svc.cluster.local:6379")
    # The read-only Redis user `grafana` (k8s/base/redis.yaml), not the default user.
    assert (datasource["jsonData"]["acl"], datasource["jsonData"]["user"]) == (True, "grafana")
    assert datasource["secureJsonData"]["password"] == "$REDIS_GRAFANA_PASSWORD"


def test_the_provider_loads_the_mounted_dashboards(repo):
    provider = yaml.safe_load((repo / "grafana/provisioning/dashboards/bandvote.yaml").read_text())
    (entry,) = provider["providers"]
    assert entry["type"] == "file"
    assert entry["options"]["path"] == "/var/lib/grafana/dashboards/bandvote"
    grafana = (repo / "k8s/base/grafana.yaml").read_text()
    assert "mountPath: /var/lib/grafana/dashboards/bandvote" in grafana


def test_every_panel_queries_a_documented_key_through_the_provisioned_source(dashboard, datasource, repo):
    documented = documented_keys(repo)
    assert {"votes:total", "votes:band", "votes:album", "leaderboard"} <= documented
    for panel, target in targets(dashboard):
        assert panel["datasource"]["uid"] == datasource["uid"], panel["title"]
        assert target["datasource"]["uid"] == datasource["uid"], panel["title"]
        key = target["keyName"]
        assert key.startswith("$prefix:"), f"{panel['title']}: {key} does not use the prefix variable"
        assert key.removeprefix("$prefix:") in documented, f"{panel['title']}: {key} is not in docs/redis-keys.md"


def test_panels_fit_the_grid_without_overlapping(dashboard):
    taken = {}
    for panel in dashboard["panels"]:
        pos = panel["gridPos"]
        assert 0 <= pos["x"] and pos["x"] + pos["w"] <= 24, f"{panel['title']} is wider than the grid"
        for x in range(pos["x"], pos["x"] + pos["w"]):
            for y in range(pos["y"], pos["y"] + pos["h"]):
                assert (x, y) not in taken, f"{panel['title']} overlaps {taken[(x, y)]}"
                taken[(x, y)] = panel["title"]
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"


def test_the_prefix_variable_defaults_to_the_consumers_default(dashboard):
    (prefix,) = [v for v in dashboard["templating"]["list"] if v["name"] == "prefix"]
    assert prefix["current"]["value"] == "bandvote"


def test_the_dashboard_has_the_original_charts_and_the_new_ones(dashboard):
    panels = {(p["type"], t["command"], t["keyName"].split(":", 1)[1]) for p, t in targets(dashboard)}
    for expected in [
        ("barchart", "hgetall", "votes:band"),  # the original's bars
        ("piechart", "hgetall", "votes:album"),  # the original's pie
        ("timeseries", "xrange", "votes:timeline"),  # votes per second
        ("bargauge", "zrange", "leaderboard"),
        ("piechart", "hgetall", "votes:route"),
        ("bargauge", "hgetall", "rank:avg"),
    ]:
        assert expected in panels, f"missing panel {expected}"


# --- against the real pipeline ------------------------------------------------------------------

BANDS = {
    "Alux Nahual": ["Conquista", "Hora Cero"],
    "Bohemia Suburbana": ["Las Oxidadas Ramas del Mal", "Mil palabras"],
    "Viernes Verde": ["Hijos del Maíz"],
    "Malacates Trebol Shop": ["Resistiré", "Vueltas"],
}


def load_plan():
    """A deterministic set of votes with a distinct count per band, spread over routes."""
    votes = []
    for weight, (band, albums) in zip((17, 13, 8, 5), BANDS.items()):
        for i in range(weight):
            album = albums[i % len(albums)]
            rank = f"{(i * 7) % 10}.{i % 4 * 25:02d}"
            votes.append({"name": band, "album": album, "year": str(1985 + i % 20), "rank": rank})
    return votes


def send(pipeline, votes):
    """Half through the HTTP route's original path, half through the gRPC route's HTTP front,
    plus one batch; returns the route of every accepted vote."""
    routes = []
    session = requests.Session()
    batch = votes[:6]
    reply = session.post(f"{pipeline.http_url}/votes/batch", json=batch, timeout=10)
    assert reply.status_code == 200, reply.text
    routes += ["http"] * len(batch)
    for i, vote in enumerate(votes[6:]):
        path, route = ("/rust/send_data", "http") if i % 2 else ("/grpc/insert", "grpc")
        reply = session.post(f"{pipeline.http_url}{path}", json=vote, timeout=10)
        assert reply.status_code == 200 and reply.json()["status"] == "accepted", reply.text
        routes.append(route)
    return routes


def test_every_dashboard_query_returns_what_the_pipeline_wrote(dashboard, pipeline):
    votes = load_plan()
    start_ms = int(time.time() * 1000) - 1000
    routes = send(pipeline, votes)
    pipeline.wait_for_total(len(votes))
    end_ms = int(time.time() * 1000) + 1000

    bands = Counter(v["name"] for v in votes)
    albums = Counter(f"{v['name']} / {v['album']}" for v in votes)
    rank_sum = defaultdict(float)
    for v in votes:
        rank_sum[f"{v['name']} / {v['album']}"] += float(v["rank"])
    expected_avg = {album: rank_sum[album] / count for album, count in albums.items()}

    values = variables(dashboard, {"prefix": pipeline.prefix})
    checked = set()
    for panel, target in targets(dashboard):
        line = command(target, values, (start_ms, end_ms))
        reply = pipeline.redis.execute_command(*line)
        key = target["keyName"].removeprefix("$prefix:")
        where = f"{panel['title']}: {' '.join(line)}"
        if key == "votes:total":
            assert int(reply) == len(votes), where
        elif key == "dead_letters":
            assert reply is None or int(reply) == 0, where
        elif key == "votes:band":
            assert {k: int(v) for k, v in reply.items()} == dict(bands), where
            assert sum(int(v) for v in reply.values()) == len(votes), where
        elif key == "votes:album":
            assert {k: int(v) for k, v in reply.items()} == dict(albums), where
        elif key == "votes:route":
            assert {k: int(v) for k, v in reply.items()} == dict(Counter(routes)), where
        elif key == "leaderboard":
            leader_first = [band for band, _ in bands.most_common()]
            assert [member for member, _ in reply] == leader_first[: len(reply)], where
            assert [int(score) for _, score in reply] == [bands[b] for b in leader_first[: len(reply)]], where
        elif key == "votes:timeline":
            assert reply, f"{where}: no entries in the dashboard's time range"
            assert sum(int(fields["votes"]) for _, fields in reply) == len(votes), where
            assert all(start_ms <= int(entry_id.split("-")[0]) <= end_ms for entry_id, _ in reply), where
        elif key == "rank:avg":
            assert set(reply) == set(expected_avg), where
            for album, avg in reply.items():
                assert float(avg) == pytest.approx(expected_avg[album], rel=1e-9), f"{where}: {album}"
        elif key == "votes:second":
            assert sum(int(v) for v in reply.values()) == len(votes), where
        else:
            pytest.fail(f"{where}: the test has no expectation for key {key}; add one")
        checked.add(key)
    assert {"votes:total", "votes:band", "votes:album", "votes:route", "leaderboard", "votes:timeline", "rank:avg"} <= checked


def test_grafana_and_the_plugin_are_the_documented_pair(repo):
    """Both containers run one Grafana, the init container installs one pinned plugin version, and
    that pair is the one grafana/README.md says is known to load together."""
    deployment = next(d for d in yaml.safe_load_all((repo / "k8s/base/grafana.yaml").read_text())
                      if d and d.get("kind") == "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    images = {c["image"] for c in pod["initContainers"] + pod["containers"]}
    assert len(images) == 1, f"the plugin is installed by the Grafana that runs it: {images}"
    grafana_version = images.pop().split(":")[1]
    install = next(c for c in pod["initContainers"] if c["name"] == "install-redis-datasource")["command"]
    assert install[-2] == "redis-datasource" and re.fullmatch(r"\d+\.\d+\.\d+", install[-1]), install
    readme = (repo / "grafana/README.md").read_text()
    assert f"pins Grafana {grafana_version} with `redis-datasource` {install[-1]}" in readme
