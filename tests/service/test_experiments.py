"""Experiments end to end over HTTP: a baseline and a grid of variants per seed, read back as the
results table (JSON, Markdown, CSV) with drops from real runs, plots, and quantizer health."""

from __future__ import annotations

import functools
from pathlib import Path

import pytest

from api.service.errors import InvalidField
from api.service.experiments import plan as planning
from api.service.experiments import results, tables
from api.service.experiments.overrides import flatten
from api.service.experiments.request import CheckpointBaseline, ExperimentSpec
from lsq.archs import layer_names
from lsq.documents import read_document
from lsq.metrics import fixed

from .conftest import TINY, Service, tiny_spec

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"

pytestmark = pytest.mark.timeout(600)

BASE = {k: v for k, v in TINY.items()} | {"training": {"epochs": 2, "batch_size": 64, "lr": 0.05}}
TERNARY = [-1, 0, 1]


def experiment(**changes: object) -> dict:
    return {
        "name": "table",
        "base": BASE,
        "baseline": {"train": True, "training": {"epochs": 3}},
        "grid": {
            "quantization.weight": [TERNARY],
            "quantization.activation": [None, [0, 1, 2, 3]],
            "training.lr": [0.01],
        },
        "seeds": [0, 1],
    } | changes


def wait_experiment(service: Service, experiment_id: int, timeout: float = 300) -> dict:
    import time

    deadline = time.monotonic() + timeout
    while True:
        body = service.http.get(f"/v1/experiments/{experiment_id}").json()
        if body["status"] in ("succeeded", "failed", "cancelled"):
            return body
        assert time.monotonic() < deadline, (body, service.diagnostics())
        time.sleep(0.5)


@pytest.mark.slow
def test_a_baseline_and_a_grid_of_variants_per_seed_give_the_results_table(
    service: Service,
) -> None:
    submitted = service.http.post("/v1/experiments", json=experiment())
    assert submitted.status_code == 201, submitted.text
    body = submitted.json()
    assert body["total_jobs"] == 5 and body["status"] == "queued"  # 1 baseline + 2 x 2 seeds
    assert [(j["variant"], j["seed"]) for j in body["jobs"]] == [
        (None, 0), (0, 0), (0, 1), (1, 0), (1, 1),
    ]  # fmt: skip

    done = wait_experiment(service, body["id"])
    assert done["status"] == "succeeded", done
    baseline, weights, both = done["rows"]
    assert baseline["baseline"] and baseline["id"] == "FP" and baseline["epochs"] == 3
    fp = baseline["test_top1"]["mean"]
    assert fp > 30  # learned, on 10 classes
    for row in (weights, both):
        assert row["test_top1"]["n"] == 2 and row["test_top1"]["std"] is not None
        assert row["constr_w"] == "[-1,0,1]" and row["lr_base"] == 0.01 and row["epochs"] == 2
        seeds = []
        for job_id in row["jobs"]:
            job = service.job(job_id)
            seeds.append(job["result"]["final_top1"])
            assert job["result"]["init_top1"] == pytest.approx(fp)  # started from the baseline
            assert job["spec"]["model"]["init"] == {"job": baseline["jobs"][0]}
        assert row["test_top1"]["mean"] == pytest.approx(sum(seeds) / 2)
        assert row["drop_top1"]["mean"] == pytest.approx(fp - sum(seeds) / 2)
    assert (weights["constr_a"], both["constr_a"]) == ("none", "[0,1,2,3]")
    assert weights["settings"] == {
        "quantization.weight": TERNARY, "quantization.activation": None, "training.lr": 0.01,
    }  # fmt: skip
    assert weights["other_settings"] == ""  # every one of them has its column

    md = service.http.get(f"/v1/experiments/{body['id']}", params={"format": "md"})
    assert md.headers["content-type"].startswith("text/markdown")
    lines = md.text.splitlines()
    assert lines[0] == (
        "| ID | quan_lr | constr_w | constr_a | lr_base | epoch | test_acc | drop_acc "
        "| acc_top5 | drop_top5 |"
    )
    assert lines[2].startswith(f"| FP | no | none | none | 0.05 | 3 | {fixed(fp)} |")
    assert lines[4].startswith("| 2 | no | [-1,0,1] | [0,1,2,3] | 0.01 | 2 |") and " ± " in lines[4]
    csv = service.http.get(f"/v1/experiments/{body['id']}", params={"format": "csv"}).text
    assert csv.splitlines()[0].startswith("ID,quan_lr,constr_w") and len(csv.splitlines()) == 4

    plot = service.http.get(f"/v1/experiments/{body['id']}/plot.png")
    assert plot.status_code == 200 and plot.content[:4] == b"\x89PNG"
    assert service.http.get(f"/v1/experiments/{body['id']}/plot.svg").text.lstrip()[:5] == "<?xml"

    variant = both["jobs"][0]
    health = service.http.get(f"/v1/jobs/{variant}/quantizers").json()
    assert [h["epoch"] for h in health] == [1, 2]
    assert len(health[0]["quantizers"]) == 36  # 18 quantized layers, weight and input
    job = service.job(variant)
    assert isinstance(job["warnings"], list)
    for name in ("plot.png", "quantizers.png"):
        image = service.http.get(f"/v1/jobs/{variant}/{name}")
        assert image.status_code == 200 and image.content[:4] == b"\x89PNG"
    listed = service.http.get("/v1/experiments").json()["items"]
    assert listed[0]["id"] == body["id"] and listed[0]["finished_jobs"] == 5


def test_a_failed_baseline_cancels_its_variants_and_says_why(service: Service) -> None:
    missing = f"{service.env['LSQ_DATA_ROOTS']}/nowhere"
    base = BASE | {"dataset": {"name": "cifar10", "root": missing}}
    body = service.http.post(
        "/v1/experiments", json=experiment(base=base, seeds=None, name="broken")
    ).json()
    done = wait_experiment(service, body["id"])
    assert done["status"] == "failed"
    baseline_id = done["rows"][0]["jobs"][0]
    for job in done["jobs"][1:]:
        variant = service.job(job["id"])
        assert variant["status"] == "cancelled"
        assert variant["error"] == f"the experiment's baseline, job {baseline_id}, ended failed"


def test_variants_listed_one_by_one_carry_their_reference(service: Service) -> None:
    request = experiment(
        name="listed",
        grid=None,
        seeds=None,
        baseline={"train": True},
        variants=[
            {
                "name": "ternary",
                "quantization": {"weight": TERNARY},
                "reference": {"test_top1": 89.69},
            },
        ],  # fmt: skip
    )
    key = {"Idempotency-Key": f"listed-{service.name}"}
    first = service.http.post("/v1/experiments", json=request, headers=key)
    again = service.http.post("/v1/experiments", json=request, headers=key)
    assert (first.status_code, again.status_code) == (201, 200)
    body = first.json()
    assert again.json()["id"] == body["id"] and again.json()["total_jobs"] == 2
    other = service.http.post("/v1/experiments", json={**request, "name": "x"}, headers=key)
    assert other.json()["error"]["fields"][0]["field"] == "Idempotency-Key"
    service.http.post(f"/v1/experiments/{body['id']}/cancel").raise_for_status()
    cancelled = wait_experiment(service, body["id"])  # a running baseline stops at a batch
    assert cancelled["status"] == "cancelled"
    assert {j["status"] for j in cancelled["jobs"]} == {"cancelled"}
    row = cancelled["rows"][1]
    assert (row["label"], row["reference"]) == ("ternary", {"test_top1": 89.69, "test_top5": None})


@pytest.mark.slow
def test_with_distill_the_baseline_teaches_every_variant(service: Service) -> None:
    request = experiment(
        name="distilled",
        grid=None,
        seeds=None,
        baseline={"train": True},
        variants=[{"quantization": {"weight": TERNARY, "activation": [0, 1, 2, 3]}}],
        distill={"temperature": 2.0, "alpha": 0.5},
    )
    body = service.http.post("/v1/experiments", json=request).json()
    done = wait_experiment(service, body["id"])
    assert done["status"] == "succeeded", done
    baseline_id, variant_id = done["rows"][0]["jobs"][0], done["rows"][1]["jobs"][0]
    variant = service.job(variant_id)
    assert variant["spec"]["training"]["distill"] == {
        "teacher": {"job": baseline_id}, "temperature": 2.0, "alpha": 0.5,
    }  # fmt: skip
    assert all(e["teacher_seconds"] > 0 for e in variant["epochs"])  # its cost, per epoch
    assert service.job(baseline_id)["epochs"][0]["teacher_seconds"] is None
    assert variant["result"]["final_top1"] > 20  # learned, on 10 classes


def sensitivity(**options: object) -> dict:
    """A sensitivity experiment on a trained baseline: ternary weights, 2-bit inputs."""
    base = BASE | {"quantization": {"weight": TERNARY, "activation": [0, 1, 2, 3]}}
    return experiment(
        name="layers", kind="sensitivity", grid=None, seeds=None, base=base,
        sensitivity={"layers": ["layer1.0.*", "layer3.2.conv2"]} | options,
    )  # fmt: skip


def until_drawn(service: Service, path: str, timeout: float = 20):
    import time

    deadline = time.monotonic() + timeout
    while (image := service.http.get(path)).status_code == 404 and time.monotonic() < deadline:
        time.sleep(0.2)
    return image


@pytest.mark.slow
def test_a_sensitivity_experiment_probes_every_layer_in_one_job(service: Service) -> None:
    body = service.http.post("/v1/experiments", json=sensitivity()).json()
    assert body["total_jobs"] == 2, body  # the baseline and one probe job
    done = wait_experiment(service, body["id"])
    assert done["status"] == "succeeded", done
    baseline, every, *layers = done["rows"]
    assert [r["label"] for r in layers] == ["layer1.0.conv1", "layer1.0.conv2", "layer3.2.conv2"]
    probe_job = service.job(every["jobs"][0])
    result = probe_job["result"]
    baseline_spec = service.job(baseline["jobs"][0])["spec"]
    assert baseline_spec["quantization"]["weight"] is None  # float, though the base quantizes
    assert baseline_spec["sensitivity"] is None and baseline["constr_w"] == "none"
    after = tiny_spec("after-probe", model={"arch": "resnet20", "init": {"job": probe_job["id"]}})
    refused = service.http.post("/v1/jobs", json=after)  # a probe writes no model
    assert refused.status_code == 422 and "sensitivity probe" in refused.text
    assert probe_job["spec"]["model"]["init"] == {"job": baseline["jobs"][0]}
    assert probe_job["progress"] == {"epoch": 1, "fraction": 1.0, "epochs": 1}
    fp = baseline["test_top1"]["mean"]
    assert every["test_top1"]["mean"] == result["final_top1"] and every["layer"] is None
    for row, probe in zip(layers, result["sensitivity"], strict=True):
        assert row["layer"] == probe["layer"] and row["jobs"] == every["jobs"]
        assert (row["constr_w"], row["constr_a"]) == ("[-1,0,1]", "[0,1,2,3]") == (
            probe["weight"], probe["activation"]
        )  # fmt: skip
        assert row["test_top1"]["mean"] == probe["test_top1"]
        assert row["drop_top1"]["mean"] == pytest.approx(fp - probe["test_top1"])
        assert row["settings"] == {"layer": row["layer"], "mode": "quantize_one", "fine_tune": 0}
        assert row["other_settings"] == ""  # its layer has a column of its own
    md = service.http.get(f"/v1/experiments/{body['id']}", params={"format": "md"}).text
    lines = md.splitlines()
    assert lines[0].startswith("| ID | layer | constr_w | constr_a | epoch | test_acc | drop_acc")
    assert lines[3].startswith("| all | every layer | [-1,0,1] | [0,1,2,3] | 0 |")
    assert lines[4].startswith("| 1 | layer1.0.conv1 | [-1,0,1] | [0,1,2,3] | 0 |")
    for path in (
        f"/v1/experiments/{body['id']}/plot.png",
        f"/v1/jobs/{probe_job['id']}/sensitivity.png",
    ):  # the experiment's is drawn once the result is stored: a moment later
        image = until_drawn(service, path)
        assert image.status_code == 200 and image.content[:4] == b"\x89PNG", path


@pytest.mark.slow
def test_a_fine_tuned_sensitivity_experiment_runs_a_job_per_layer(service: Service) -> None:
    request = sensitivity(mode="float_one", fine_tune=1, layers=["layer3.2.conv2"])
    body = service.http.post("/v1/experiments", json=request).json()
    assert body["total_jobs"] == 3, body  # baseline, every layer, layer3.2.conv2 float
    done = wait_experiment(service, body["id"])
    assert done["status"] == "succeeded", done
    _, every, layer = done["rows"]
    assert (every["label"], layer["label"], layer["epochs"]) == ("every layer", "layer3.2.conv2", 1)
    spec = service.job(layer["jobs"][0])["spec"]
    assert spec["name"] == "layers/layer3.2.conv2" and spec["training"]["epochs"] == 1
    levels = spec["quantization"]["layers"]
    assert levels["layer3.2.conv2"] == {"weight": None, "activation": None}
    assert levels["layer3.2.conv1"] == {"weight": TERNARY, "activation": [0, 1, 2, 3]}
    assert levels["conv1"] == levels["fc"] == {"weight": None, "activation": None}  # first/last
    health = service.http.get(f"/v1/jobs/{layer['jobs'][0]}/quantizers").json()
    quantized = {h["layer"] for h in health[0]["quantizers"]}
    assert "layer3.2.conv2" not in quantized and len(quantized) == 17
    assert layer["test_top1"]["n"] == 1 and layer["drop_top1"] is not None


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"sensitivity": {"layers": ["conv9"]}}, "sensitivity.layers"),
        ({"sensitivity": {"layers": ["conv9"], "fine_tune": 1}}, "sensitivity.layers"),
        ({"sensitivity": {"mode": "all"}}, "sensitivity.mode"),
        ({"grid": {"training.lr": [0.1]}}, "grid"),
        ({"distill": True}, "distill"),
        ({"kind": "variants"}, "sensitivity"),
        ({"base": BASE}, "sensitivity"),  # nothing quantized (the probe job's own check)
        ({"base": BASE, "sensitivity": {"fine_tune": 1}}, "base.quantization"),
    ],
)
def test_a_bad_sensitivity_experiment_gets_422_naming_the_field(
    service: Service, change: dict, field: str
) -> None:
    response = service.http.post("/v1/experiments", json=sensitivity() | change)
    assert response.status_code == 422, response.text
    assert response.json()["error"]["fields"][0]["field"] == field, response.json()


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (
            {"distill": True, "grid": None, "variants": [{"training": {"distill": {"alpha": 1}}}]},
            "variants.0.training.distill.alpha",
        ),  # the experiment sets it
        ({"distill": {"alpha": 2}}, "distill.alpha"),
        (  # a job the base names must exist and be this owner's (not a future variant's)
            {"base": BASE | {"training": {"distill": {"teacher": {"job": 999999}}}}},
            "training.distill.teacher.job",
        ),
        (
            {"base": BASE | {"model": {"arch": "resnet20", "init": {"job": 999999}}}},
            "model.init.job",
        ),
        ({"grid": {"quantization.weight": [[0, 2]]}}, "grid.quantization.weight"),
        ({"grid": {"training.epochs": [2, 0]}}, "grid.training.epochs"),
        ({"grid": {"a b": [1]}}, "grid.a b"),
        ({"grid": {"quantization.weight_init": "mse"}}, "grid.quantization.weight_init"),
        ({"grid": {"quantization.weight": [TERNARY, [1, 0, -1]]}}, "grid"),  # one set twice
        ({"grid": None, "variants": [{"training": {"lr": 0.1}}] * 2}, "variants.1"),
        ({"variants": [{"quantization": {"weight": TERNARY}}]}, "grid"),  # both
        ({"grid": None}, "grid"),  # neither
        ({"variants": [{"training": {"lrr": 1}}], "grid": None}, "variants.0.training.lrr"),
        ({"baseline": {"job": 999999}}, "baseline.job"),
        ({"baseline": {"job": "x"}}, "baseline.job"),  # not baseline.job.job
        ({"base": BASE | {"name": "x"}}, "base.name"),  # the experiment's name names its jobs
        (  # ImageNet weights for a network that has none, among a grid's (a 500 once)
            {
                "base": BASE | {"model": {"arch": "resnet18"}},
                "baseline": {"pretrained": True},
                "grid": {"model.arch": ["resnet18", "resnet20"]},
            },
            "grid.model.arch",
        ),  # fmt: skip
        ({"grid": {"model.arch": ["resnet20", "resnet32"]}}, "grid.model.arch"),  # a failed job
        (
            {"grid": None, "variants": [{}, {"dataset": {"name": "cifar10"}}]},
            "variants.1.dataset.name",
        ),
        ({"baseline": {"checkpoint": "/etc/passwd"}}, "baseline.checkpoint"),
        ({"baseline": {"nope": 1}}, "baseline"),
        (
            {
                "grid": {
                    "training.lr": [i / 100 for i in range(1, 17)],
                    "training.momentum": [0, 0.5, 0.6, 0.7, 0.8],
                }
            },
            "grid",
        ),  # 80 jobs: over the limit
    ],
)
def test_a_bad_experiment_gets_422_naming_the_field(
    service: Service, change: dict, field: str
) -> None:
    before = len(service.http.get("/v1/experiments").json()["items"])
    response = service.http.post("/v1/experiments", json=experiment(**change))
    assert response.status_code == 422, response.text
    assert response.json()["error"]["fields"][0]["field"] == field, response.json()
    assert len(service.http.get("/v1/experiments").json()["items"]) == before


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("experiment-*.yaml")), ids=lambda p: p.stem)
def test_every_example_experiment_plans_its_table(path) -> None:
    spec = ExperimentSpec.model_validate(read_document(path))
    plan = planning.plan(spec, max_jobs=64)
    if spec.kind == "sensitivity":  # one untrained probe job, from a float baseline
        assert len(plan.variants) == 1 and plan.variants[0].specs[0].sensitivity is not None
        assert not plan.baseline.quantization.enabled and plan.baseline.sensitivity is None
        return
    if "mobilenet" in path.stem:  # another network: W4A4 and W[-1,0,1]/A[0,1,2,3]
        assert [v.specs[0].model.arch for v in plan.variants] == ["mobilenet_v2"] * 2
        assert plan.variants[1].specs[0].quantization.weight.levels == [-1, 0, 1]
        return
    assert len(plan.variants) == 4 and all(len(v.specs) == 1 for v in plan.variants)
    rows = {(v.specs[0].quantization.first_last, v.specs[0].quantization.activation is None)
            for v in plan.variants}  # fmt: skip
    assert rows == {("float", True), ("same", True), ("float", False), ("same", False)}
    assert all(v.specs[0].quantization.weight.levels == [-1, 0, 1] for v in plan.variants)
    if path.stem.split("-")[1] in ("cifar10", "imagenet"):  # the published tables
        assert all(v.reference is not None for v in plan.variants)
        assert all(v.specs[0].training.epochs == 90 for v in plan.variants)
    if "distill" in path.stem:
        assert plan.distill == {"temperature": 1.0, "alpha": 0.5}


DEEP = functools.reduce(lambda inner, _: [inner], range(700), [])  # JSON allows 1000 levels


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"grid": {"training." * 900 + "lr": [1]}}, "grid"),  # a RecursionError once
        ({"grid": {"training.seed": [1, 2]}}, "grid.training.seed"),  # `seeds` sets it
        ({"grid": {"model.init": [{"job": 1}]}}, "grid.model.init"),
        ({"seeds": [0, 0]}, "seeds"),
        ({"grid": {}}, "grid"),
        ({"grid": None, "variants": []}, "variants"),
        ({"base": {"model": {"arch": "resnet20"}}}, "base.dataset"),
        ({"grid": None, "variants": [{"name": "a\x1bb"}]}, "variants.0.name"),
        (
            {"grid": None, "variants": [{"training": {"epochs": 5000}}]},
            "variants.0.training.epochs",
        ),
        # 16^8 = 4.3e9 rows from a body under 1 KB: refused on the count, nothing built
        ({"grid": {f"training.k{i}": list(range(16)) for i in range(8)}}, "grid"),
        ({"grid": None, "variants": [{"training": 5}]}, "variants.0.training"),  # a 500 once
        ({"grid": {"training": [1]}}, "grid.training"),
        (  # ImageNet's teacher
            {
                "base": BASE | {"model": {"arch": "resnet18"}},
                "baseline": {"pretrained": True},
                "distill": True,
            },
            "distill",
        ),  # fmt: skip
        ({"name": "x" * 150}, "name"),  # its jobs' names would pass 200
        ({"baseline": {"train": True, "training": {"x": DEEP}}}, "baseline"),  # a 500 once
        ({"baseline": {"pretrained": True}}, "baseline.pretrained"),  # resnet20 has none
        ({"base": BASE | {"k" * 20_000: 1}}, "base.kkk"),  # echoed in full (40 KB) once
    ],
)
def test_what_a_hostile_client_found_in_experiments_is_a_clean_422(
    service: Service, change: dict, field: str
) -> None:
    response = service.http.post("/v1/experiments", json=experiment(**change))
    assert response.status_code == 422, response.text
    assert response.json()["error"]["fields"][0]["field"].startswith(field), response.json()
    assert len(response.content) < 5000


def test_a_dollar_in_a_name_is_text_not_math(tmp_path: Path) -> None:
    from lsq.metrics import EpochMetrics
    from lsq.plot import run_curves

    e = EpochMetrics(epoch=1, train_loss=1, train_top1=50, test_loss=1, test_top1=40,
                     test_top5=90, lr=0.1, seconds=1, images_per_second=100)  # fmt: skip
    run_curves([e], [tmp_path / "plot.png"], title=r"a $\frac{a$ b")
    assert (tmp_path / "plot.png").stat().st_size > 1000


def test_a_fine_tuned_probe_plan_writes_long_level_sets_short() -> None:
    """Every probe job names every layer's levels: a 40 002-level list is written as
    {min, max}, not repeated layer by layer (a 250 KB request once planned gigabytes)."""
    wide = {"weight": list(range(-1, 40001)), "activation": [0, 1, 2, 3]}
    spec = ExperimentSpec.model_validate(
        sensitivity(fine_tune=1) | {"base": BASE | {"quantization": wide}}
    )
    plan = planning.plan(spec, max_jobs=64)
    assert len(plan.variants) == 4  # every layer, then the three probed
    for variant in plan.variants:
        written = variant.specs[0].model_dump_json()
        assert len(written) < 6000 and '{"min":-1,"max":40000}' in written


def test_a_fine_tuned_probe_warms_up_within_its_own_epochs() -> None:
    request = sensitivity(fine_tune=1)
    request["base"]["training"] = {**request["base"]["training"], "warmup_epochs": 1.5}
    plan = planning.plan(ExperimentSpec.model_validate(request), max_jobs=64)
    assert plan.baseline.training.warmup_epochs == 1.5  # the baseline trains 2 epochs
    assert {v.specs[0].training.warmup_epochs for v in plan.variants} == {1.0}


def test_rows_that_differ_only_where_no_column_looks_get_a_settings_column() -> None:
    from api.service.models import Job, JobStatus
    from lsq.spec import SPEC_VERSION

    grid = {"quantization.weight": [TERNARY], "quantization.weight_init": ["lsq", "mse"]}
    spec = ExperimentSpec.model_validate(experiment(grid=grid, seeds=None))
    plan = planning.plan(spec, max_jobs=64)
    jobs = [
        Job(id=i + 2, status=JobStatus.queued, variant=v.index, spec_version=SPEC_VERSION,
            spec=v.specs[0].model_dump(mode="json"))
        for i, v in enumerate(plan.variants)
    ]  # fmt: skip
    table_rows = results.rows(spec, jobs)
    assert [r.model_dump()["other_settings"] for r in table_rows] == [  # the dashboard's column
        "quantization.weight_init=lsq",
        "quantization.weight_init=mse",
    ]
    head, *body = tables.table(table_rows)
    assert head[-1] == "settings" and [line[-1] for line in body] == [
        "quantization.weight_init=lsq",
        "quantization.weight_init=mse",
    ]
    plain = ExperimentSpec.model_validate(experiment(seeds=None))
    assert "settings" not in tables.table(results.rows(plain, []))[0]


def test_variants_that_differ_only_in_the_order_of_their_layer_patterns_both_run() -> None:
    """The first pattern that matches a layer gives its levels: the order is the variant."""
    two, four = {"weight": {"bits": 2, "signed": True}}, {"weight": {"bits": 4, "signed": True}}
    first = {"quantization": {"layers": {"layer1.0.*": two, "layer?.?.conv1": four}}}
    second = {"quantization": {"layers": {"layer?.?.conv1": four, "layer1.0.*": two}}}

    def plan(*variants: dict) -> planning.Plan:
        request = experiment(grid=None, seeds=None, variants=list(variants))
        return planning.plan(ExperimentSpec.model_validate(request), max_jobs=64)

    conv1 = [v.specs[0].quantization.levels_by_layer(layer_names("resnet20"))["layer1.0.conv1"]
             for v in plan(first, second).variants]  # fmt: skip
    assert conv1[0] != conv1[1]
    with pytest.raises(InvalidField, match=r"variant 2 \(quantization.layers=.*\) would"):
        plan(first, first)
    grid = {"quantization.weight": [TERNARY, [1, 0, -1]]}  # one level set, written twice
    request = ExperimentSpec.model_validate(experiment(grid=grid, seeds=None))
    with pytest.raises(InvalidField) as e:
        planning.plan(request, max_jobs=64)
    assert str(e.value) == (
        "variant 2 (quantization.weight=[1,0,-1]) would run the same jobs as variant 1 "
        "(quantization.weight=[-1,0,1]); seeds repeat a variant"
    )
    # a row's settings keep the patterns whole, in their order
    assert flatten(second) == {"quantization.layers": second["quantization"]["layers"]}


def test_a_drop_in_json_has_no_float_noise() -> None:
    """91.23 - 92.18 is -0.9500000000000028 in floats: the row says -0.95."""
    from api.service.models import Job, JobStatus
    from lsq.spec import SPEC_VERSION

    spec = ExperimentSpec.model_validate(experiment(seeds=None, grid={"training.lr": [0.01]}))
    plan = planning.plan(spec, max_jobs=64)
    stored = {"status": JobStatus.succeeded, "spec_version": SPEC_VERSION}
    jobs = [
        Job(id=1, variant=None, spec=plan.baseline.model_dump(mode="json"), **stored,
            result={"final_top1": 91.23, "final_top5": 99.1}),
        Job(id=2, variant=0, spec=plan.variants[0].specs[0].model_dump(mode="json"), **stored,
            result={"final_top1": 92.18, "final_top5": 99.3}),
    ]  # fmt: skip
    _, variant = results.rows(spec, jobs)
    numbers = variant.model_dump(mode="json")
    assert (numbers["drop_top1"]["mean"], numbers["drop_top5"]["mean"]) == (-0.95, -0.2)


def test_sensitivity_rows_survive_a_result_without_some_probes() -> None:
    """Rows are read from stored results: one missing a layer (or its probes) gives empty
    cells, never a 500."""
    from api.service.models import Job, JobStatus
    from lsq.spec import SPEC_VERSION

    spec = ExperimentSpec.model_validate(sensitivity())
    plan = planning.plan(spec, max_jobs=64)
    probe_spec = plan.variants[0].specs[0].model_dump(mode="json")
    probe_spec["model"]["init"] = {"job": 1}
    whole = {"final_top1": 50.0, "final_top5": 90.0, "init_top1": 80.0, "init_top5": 99.0}
    one = {"layer": "layer1.0.conv1", "test_top1": 70.0, "test_top5": 95.0}
    stored = {"status": JobStatus.succeeded, "variant": 0, "spec": probe_spec,
              "spec_version": SPEC_VERSION}  # fmt: skip
    jobs = [
        Job(id=2, **stored, result=whole | {"sensitivity": [one]}),
        Job(id=3, **stored, result=whole),
    ]
    fp, every, conv1, conv2, last = results.rows(spec, jobs)
    assert fp.test_top1.mean == 80.0 and every.id == "all" and every.test_top1.n == 2
    # a baseline trained elsewhere: float, named by where it came from, measured by the probes
    from_file = spec.model_copy(update={"baseline": CheckpointBaseline(checkpoint="/d/fp.pt")})
    fp = results.rows(from_file, jobs)[0]
    assert (fp.label, fp.constr_w, fp.constr_a, fp.quan_lr, fp.epochs, fp.lr_base, fp.jobs) == (
        "full precision (checkpoint)", "none", "none", "no", None, None, []
    )  # fmt: skip
    assert fp.test_top1.mean == 80.0
    assert conv1.test_top1.mean == 70.0 and conv1.drop_top1.mean == 10.0
    assert conv2.test_top1 is None and last.test_top1 is None
    md = tables.markdown(results.rows(from_file, jobs))
    assert "| FP | full precision (checkpoint) | none | none |  | 80.00 |" in md
    assert "| 2 | layer1.0.conv2 |" in md
