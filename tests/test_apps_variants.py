"""Apps whose nodes have variants: the config, the accuracy data, request accuracy and the accuracy served."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from omegaconf import OmegaConf, open_dict

from harness.apps import VARIANTS_FILE, App, AppNode, variant_accuracies
from harness.assembly import assemble
from harness.config import AppConfig
from harness.errors import HarnessError
from harness.metrics import Window, accuracy_served
from harness.search import compose

TRAFFIC_VARIANTS = {"detect": ["vit_b_16", "resnet50", "efficientnet_b0"],
                    "car": ["resnet50", "efficientnet_b0", "mobilenet_v3_large"],
                    "person": ["efficientnet_b0", "mobilenet_v3_large"]}


def assembled(*overrides: str, apps: dict | None = None):
    cfg = compose(["runtime=sim", "system=eager", "models=vision", "cluster=h200x1", *overrides])
    if apps is not None:
        with open_dict(cfg):
            cfg.apps = {name: OmegaConf.merge(OmegaConf.structured(AppConfig), app) for name, app in apps.items()}
    return assemble(cfg)


def test_the_variants_file_holds_torchvision_metadata_with_provenance():
    doc = json.loads(VARIANTS_FILE.read_text())
    assert doc["torchvision"] and "without downloading" in doc["source"]
    for name, m in doc["models"].items():
        assert m["weights"].split(".")[0].endswith("_Weights") and 0 < m["accuracy"] < 100
        assert m["metric"] == ("acc@1" if m["task"] == "classification" else "box_map")
    accuracy = variant_accuracies()
    assert accuracy["resnet50"] == 80.858                        # ResNet50_Weights.IMAGENET1K_V2, acc@1
    assert accuracy["fasterrcnn_resnet50_fpn_v2"] == 46.7       # COCO val2017 box mAP
    # Every model profiled on the H200 has its accuracy: each can be a variant.
    profiled = json.loads((VARIANTS_FILE.parent / "h200" / "whole.json").read_text())["models"]
    assert set(profiled) <= set(accuracy)


def test_shipped_apps_compose_with_their_variants_and_targets():
    apps = assembled("+apps=[traffic,moderation]").apps
    traffic = apps["traffic"]
    assert traffic.slo == 0.25 and traffic.accuracy == 0.95 and traffic.paths == ((0, 1), (0, 2))
    assert {n.name: list(n.variants) for n in traffic.nodes} == TRAFFIC_VARIANTS
    # Tasks name the most accurate variant; variants are compared relative to it.
    assert [n.model for n in traffic.nodes] == ["vit_b_16", "resnet50", "efficientnet_b0"]
    car = traffic.nodes[1]
    assert car.relative_accuracy("resnet50") == 1.0
    assert car.relative_accuracy("mobilenet_v3_large") == pytest.approx(75.274 / 80.858)
    moderation = apps["moderation"]
    assert moderation.paths == ((0, 1, 3), (0, 2, 3)) and moderation.nodes[3].after == (1, 2)


def test_a_plain_node_still_names_one_model():
    apps = {"pair": {"slo_ms": 300, "nodes": [{"name": "a", "model": "resnet50"},
                                              {"name": "b", "model": "vit_b_16", "after": ["a"]}]}}
    pair = assembled(apps=apps).apps["pair"]
    assert [n.variants for n in pair.nodes] == [("resnet50",), ("vit_b_16",)]
    assert pair.accuracy == 1.0 and pair.nodes[0].relative_accuracy("resnet50") == 1.0


@pytest.mark.parametrize("node, app_fields, words", [
    ({"name": "a", "model": "resnet50", "variants": ["resnet50"]}, {}, "either `model` or a list of distinct"),
    ({"name": "a"}, {}, "either `model` or a list of distinct"),
    ({"name": "a", "variants": ["resnet50", "resnet50"]}, {}, "either `model` or a list of distinct"),
    ({"name": "a", "variants": ["resnet50", "resnet18"]}, {}, "runs ['resnet18'], not served"),
    ({"name": "a", "variants": ["resnet50", "vit_b_16"]}, {"accuracy": 1.5}, "apps.x.accuracy must be in (0, 1]"),
])
def test_bad_app_nodes_are_one_line_errors(node, app_fields, words):
    with pytest.raises(HarnessError) as err:
        assembled(apps={"x": {"slo_ms": 100, **app_fields, "nodes": [node]}})
    assert words in str(err.value) and "\n" not in str(err.value)


def test_a_variant_without_accuracy_data_is_named():
    with pytest.raises(HarnessError, match=r"no accuracy for variants \['m0', 'm1'\] in profiles/variants.json"):
        assembled("models=sleep10", "cluster=sleep1000",
                  apps={"x": {"slo_ms": 100, "nodes": [{"name": "a", "variants": ["m0", "m1"]}]}})


def test_request_accuracy_is_the_weakest_path_product():
    nodes = (AppNode("root", "r"), AppNode("left", "p", after=(0,), variants=("p", "q"), accuracy=(80.0, 60.0)),
             AppNode("right", "s", after=(0,)))
    app = App("fan", 0.1, nodes, accuracy=0.8)
    assert app.accuracy_of([1.0, 0.75, 1.0]) == 0.75
    assert app.accuracy_of([0.9, 1.0, 0.5]) == pytest.approx(0.45)
    with pytest.raises(HarnessError):
        App("fan", 0.1, nodes, accuracy=0.0)


def test_accuracy_served_follows_the_variants_the_batches_ran():
    app = App("fan", 0.1, (AppNode("root", "r"),
                           AppNode("cls", "p", after=(0,), variants=("p", "q"), accuracy=(80.0, 60.0))))
    # Request 0: two cls tasks, one on p and one on q -> node accuracy (1 + 0.75) / 2; request 1: p only;
    # request 2: q only but it failed (not counted); request 3: no cls task at all (zero copies) -> 1.0.
    requests = pd.DataFrame({"id": [0, 1, 2, 3], "model": ["fan"] * 4, "t_sched": [1.0, 1.1, 1.2, 1.3],
                             "status": ["ok", "ok", "dropped", "ok"]})
    batches = pd.DataFrame({"id": [0, 1, 2], "model": ["r", "p", "q"]})
    tasks = pd.DataFrame({"request_id": [0, 0, 0, 1, 1, 2, 2, 3], "node": [0, 1, 1, 0, 1, 0, 1, 0],
                          "batch_id": [0, 1, 2, 0, 1, 0, 2, 0]})
    got = accuracy_served(requests, tasks, batches, Window(0.0, 2.0), {"fan": app})
    assert got == {"fan": pytest.approx(np.mean([0.875, 1.0, 1.0]))}
    # An app none of whose requests finished ok has no accuracy served: NaN (null in summary.json), not absent.
    none_ok = accuracy_served(requests.assign(status="dropped"), tasks, batches, Window(0.0, 2.0), {"fan": app})
    assert list(none_ok) == ["fan"] and np.isnan(none_ok["fan"])


def test_a_system_that_does_not_choose_variants_serves_full_accuracy(tmp_path):
    from harness.run import execute

    cfg = compose(["runtime=sim", "system=eager", "models=vision", "cluster=h200x1", "+apps=[traffic]",
                   "workload=poisson", "workload.rate=200", "duration_s=4", "warmup_s=1", "cooldown_s=1"])
    execute(cfg, tmp_path, [])
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["accuracy_served"] == {"traffic": 1.0}
