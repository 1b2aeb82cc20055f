"""The dashboard in a real browser: Debian's Chromium, headless, driven by Selenium against a
real API and worker. Screenshots go to LSQ_TEST_ARTIFACTS (default test-artifacts/)."""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import model_files as mf
import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service as Driver
from selenium.webdriver.common.by import By

from .conftest import ROOT, Service, embedded_service

pytestmark = pytest.mark.timeout(600)
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
SHOTS = Path(os.environ.get("LSQ_TEST_ARTIFACTS", ROOT / "test-artifacts"))
QUICK_JOB = """name: browser-job
dataset: {name: synthetic, train_size: 1024, test_size: 256}
model: {arch: resnet20}
quantization: {weight: [-1, 0, 1], activation: [0, 1, 2, 3]}
training: {epochs: 4, batch_size: 64, lr: 0.05}
"""
EXPERIMENT = {
    "name": "browser-table",
    "base": {
        "dataset": {"name": "synthetic", "train_size": 512, "test_size": 128},
        "model": {"arch": "resnet20"},
        "training": {"epochs": 2, "batch_size": 64, "lr": 0.01},
    },
    "baseline": {"train": True, "training": {"epochs": 3, "lr": 0.05}},
    # two variants that differ where no reference column looks: a settings column tells them apart
    "grid": {
        "quantization.weight": [[-1, 0, 1]],
        "quantization.activation": [[0, 1, 2, 3]],
        "quantization.weight_init": ["lsq", "mse"],
    },
}


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    with embedded_service(tmp_path_factory, "dashboard") as running:
        yield running


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[webdriver.Chrome]:
    if not (shutil.which(CHROMIUM) and shutil.which(CHROMEDRIVER)):
        pytest.fail("Chromium and chromium-driver are missing (scripts/services installs them)")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu",
                 "--disable-background-networking", "--disable-component-update",
                 "--no-first-run", "--window-size=1280,1100",
                 # offline: no name resolves but the service's, so a CDN's file never loads
                 "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
                 f"--user-data-dir={tmp_path_factory.mktemp('chromium')}"):  # fmt: skip
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})  # the console, for errors
    driver = webdriver.Chrome(options=options, service=Driver(executable_path=CHROMEDRIVER))
    try:
        yield driver
    finally:
        driver.quit()


def until(check: Callable[[], object], timeout: float = 120, what: str = "") -> object:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if value := check():
                return value
        except Exception:  # the page is between two renders
            pass
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def text(browser: webdriver.Chrome, css: str) -> str:
    return browser.find_element(By.CSS_SELECTOR, css).text


def shot(browser: webdriver.Chrome, name: str) -> Path:
    SHOTS.mkdir(parents=True, exist_ok=True)
    path = SHOTS / f"{name}.png"
    browser.save_screenshot(str(path))
    return path


def console_errors(browser: webdriver.Chrome) -> list[str]:
    """The console's errors since the last call (a refused inline script or style is one)."""
    return [e["message"] for e in browser.get_log("browser") if e["level"] == "SEVERE"]


def selection(browser: webdriver.Chrome) -> str:
    """The text selected in the form's text area."""
    return browser.execute_script(
        "const a = document.getElementById('spec');"
        "return a.value.slice(a.selectionStart, a.selectionEnd)"
    )


@pytest.mark.slow
def test_submit_a_job_in_the_browser_and_watch_it_run(
    service: Service, browser: webdriver.Chrome
) -> None:
    browser.get(f"{service.url}/#token={service.token}")
    until(lambda: "Jobs" in text(browser, "main"), 30, "the home page")
    assert "token" not in browser.current_url  # kept in the browser, out of the address bar

    browser.get(f"{service.url}/#/new")
    until(lambda: browser.find_element(By.ID, "spec-form"), 10, "the form").is_displayed()
    browser.find_element(By.ID, "show-yaml").click()  # this test types YAML
    area = until(lambda: browser.find_element(By.ID, "spec"), 10, "the YAML view")
    area.clear()
    area.send_keys(QUICK_JOB.replace("epochs: 4", "epochs: 0"))
    browser.find_element(By.ID, "submit").click()
    errors = until(lambda: text(browser, "#errors"), 10, "the 422 shown by the form")
    assert "training.epochs" in errors and "greater than or equal to 1" in errors
    assert browser.execute_script("return document.activeElement.id") == "spec"  # on its line
    shot(browser, "dashboard-form-error")

    # a layer pattern's field, dots and all, and its own `weight` (not the job's) selected
    area.clear()
    area.send_keys(QUICK_JOB.replace("3]}", '3], layers: {"layer1.0.*": {weight: x}}}'))
    browser.find_element(By.ID, "submit").click()
    errors = until(lambda: "layers" in text(browser, "#errors") and text(browser, "#errors"), 10)
    assert 'quantization.layers."layer1.0.*".weight' in errors
    assert selection(browser).startswith("weight: x}}}"), selection(browser)

    # a list's item: the second variant's `weight`, though the first variant has none
    browser.find_element(By.CSS_SELECTOR, "input[name=kind][value=experiment]").click()
    base = EXPERIMENT["base"] | {"quantization": {"weight": [-1, 0, 1]}}
    area.clear()
    area.send_keys(f"name: e\nbase: {json.dumps(base)}\nbaseline: {{train: true}}\n"
                   "variants:\n  - {name: a}\n  - quantization: {weight: x}\n")  # fmt: skip
    browser.find_element(By.ID, "submit").click()
    errors = until(lambda: "variants" in text(browser, "#errors") and text(browser, "#errors"), 10)
    assert "variants.1.quantization.weight" in errors
    assert selection(browser).startswith("weight: x}"), selection(browser)
    browser.find_element(By.CSS_SELECTOR, "input[name=kind][value=job]").click()

    area.clear()
    area.send_keys(QUICK_JOB)
    browser.find_element(By.ID, "submit").click()
    until(lambda: "#/jobs/" in browser.current_url, 10, "the new job's page")
    seen = set()

    def finished() -> bool:
        seen.add(text(browser, "main p .muted"))  # "1.3/4 epochs"
        return "succeeded" in text(browser, "h1")

    until(finished, 180, "the job to succeed")
    assert len(seen) >= 2, seen  # the progress moved while the page was open, without a reload
    until(lambda: browser.execute_script(
        "const i = document.getElementById('plot'); return i.complete && i.naturalWidth > 0"
    ), 30, "the curves")  # fmt: skip
    rows = browser.find_elements(By.CSS_SELECTOR, "#epochs tr")
    assert len(rows) == 5  # the header and 4 epochs
    assert "model-int.pt" in until(lambda: text(browser, "#files"), 10, "the files")
    assert shot(browser, "dashboard-job").stat().st_size > 10_000
    assert len(browser.find_elements(By.CSS_SELECTOR, "#classes tr")) == 11  # header, 10 classes
    assert browser.find_elements(By.CSS_SELECTOR, "#confusions tr")
    browser.execute_script("document.getElementById('classes').scrollIntoView()")
    assert shot(browser, "dashboard-job-classes").stat().st_size > 10_000
    refused = [e for e in console_errors(browser) if "Content Security Policy" in e]
    assert refused == []  # no inline script or style: the progress bar is a <progress>


def test_the_api_docs_render_offline_under_the_policy(
    service: Service, browser: webdriver.Chrome
) -> None:
    """Swagger UI from a package the API serves (no CDN: this browser resolves no other name),
    set up by a script file: nothing the Content-Security-Policy refuses."""
    browser.get(f"{service.url}/docs")
    until(lambda: len(browser.find_elements(By.CSS_SELECTOR, ".opblock")) >= 10, 30, "Swagger UI")
    assert "LSQ job service" in text(browser, ".info .title")
    browser.find_element(By.CSS_SELECTOR, ".opblock-summary").click()  # opens, scripts run
    until(lambda: browser.find_elements(By.CSS_SELECTOR, ".opblock-body"), 10, "an operation")
    time.sleep(0.5)
    assert console_errors(browser) == []
    assert shot(browser, "api-docs").stat().st_size > 10_000


@pytest.mark.slow
def test_an_experiment_page_shows_the_live_table_and_its_plot(
    service: Service, browser: webdriver.Chrome
) -> None:
    experiment = service.http.post("/v1/experiments", json=EXPERIMENT).json()
    browser.get(f"{service.url}/#/experiments/{experiment['id']}")
    until(lambda: "browser-table" in text(browser, "h1"), 30, "the experiment page")

    def filled() -> bool:
        cells = [td.text for td in browser.find_elements(By.CSS_SELECTOR, "#results td")]
        return (
            "succeeded" in text(browser, "h1")
            and all("%" not in c for c in cells)
            and cells.count("") < 8
        )

    until(filled, 300, "the table to fill in")
    rows = browser.find_elements(By.CSS_SELECTOR, "#results tr")
    assert len(rows) == 4  # header, baseline, two variants
    head = [th.text for th in rows[0].find_elements(By.TAG_NAME, "th")]
    assert head[-2:] == ["settings", "runs"], head
    assert "[-1,0,1]" in rows[2].text and "[0,1,2,3]" in rows[3].text
    assert "quantization.weight_init=lsq" in rows[2].text
    assert "quantization.weight_init=mse" in rows[3].text
    until(lambda: browser.execute_script(
        "const i = document.getElementById('plot'); return i.complete && i.naturalWidth > 0"
    ), 30, "the plot")  # fmt: skip
    browser.get(f"{service.url}/#/")
    until(lambda: "browser-table" in text(browser, "main"), 10, "the home page's list")
    shot(browser, "dashboard-home")
    browser.get(f"{service.url}/#/experiments/{experiment['id']}")
    until(lambda: "browser-table" in text(browser, "h1"), 10, "the experiment page")
    time.sleep(1)  # its plot
    assert shot(browser, "dashboard-experiment").stat().st_size > 10_000


@pytest.mark.slow
def test_a_sensitivity_experiment_shows_the_drop_per_layer(
    service: Service, browser: webdriver.Chrome
) -> None:
    """From a float model an earlier job trained: the baseline row shows what is known of it."""
    float_job = {
        "name": "browser-float",
        **EXPERIMENT["base"],
        "training": EXPERIMENT["base"]["training"] | EXPERIMENT["baseline"]["training"],
    }
    trained = service.wait(service.http.post("/v1/jobs", json=float_job).json()["id"])
    quantized = {"weight": [-1, 0, 1], "activation": [0, 1, 2, 3], "first_last": "same"}
    request = EXPERIMENT | {
        "name": "browser-layers", "kind": "sensitivity", "grid": None,
        "base": EXPERIMENT["base"] | {"quantization": quantized},
        "baseline": {"job": trained["id"]},
        "sensitivity": {"layers": ["conv1", "layer1.0.*", "fc"]},
    }  # fmt: skip
    experiment = service.http.post("/v1/experiments", json=request).json()
    browser.get(f"{service.url}/#token={service.token}")  # also when run alone
    browser.get(f"{service.url}/#/experiments/{experiment['id']}")
    heading = f"Experiment {experiment['id']}: browser-layers succeeded"
    until(lambda: text(browser, "h1") == heading, 300, "the experiment to succeed")
    until(lambda: "per layer" in text(browser, "main"), 10, "the plot's heading")
    expected = [f"full precision (job {trained['id']})", "every layer", "conv1", "layer1.0.conv1",
                "layer1.0.conv2", "fc"]  # fmt: skip

    def labels() -> list[str]:  # read again if the page re-renders meanwhile
        rows = browser.find_elements(By.CSS_SELECTOR, "#results tr")[1:]
        return [r.find_elements(By.CSS_SELECTOR, "td")[1].text for r in rows]

    until(lambda: labels() == expected, 30, f"the rows {expected}")
    cells = browser.find_elements(By.CSS_SELECTOR, "#results tr")[1].find_elements(
        By.TAG_NAME, "td"
    )
    fp = [td.text for td in cells]
    assert fp[2:7] == ["no", "none", "none", "", ""]  # unquantized; lr and epochs: its own job
    assert fp[-1] == ""  # none of the experiment's jobs trained it
    until(lambda: browser.execute_script(
        "const i = document.getElementById('plot'); return i.complete && i.naturalWidth > 0"
    ), 30, "the bar plot")  # fmt: skip
    time.sleep(1)
    assert shot(browser, "dashboard-sensitivity").stat().st_size > 10_000

    probe_job = [j for j in experiment["jobs"] if j["variant"] == 0][0]["id"]
    browser.get(f"{service.url}/#/jobs/{probe_job}")
    # The experiment's own page said "succeeded" too: wait for the job's heading.
    heading = f"Job {probe_job}: "
    until(lambda: text(browser, "h1").startswith(heading), 30, "the probe job's page")
    assert "succeeded" in text(browser, "h1")
    probes = browser.find_elements(By.CSS_SELECTOR, "#probes tr")
    assert len(probes) == 5 and probes[1].text.startswith("conv1 [-1,0,1] [-2,-1,0,1] 432")
    until(lambda: browser.execute_script(
        "const i = document.getElementById('bars'); return i.complete && i.naturalWidth > 0"
    ), 30, "the probe job's bars")  # fmt: skip
    time.sleep(1)
    assert shot(browser, "dashboard-probe-job").stat().st_size > 10_000


def test_a_link_the_cli_prints_opens_its_page_and_keeps_the_token(
    service: Service, browser: webdriver.Chrome
) -> None:
    """`lsq submit --wait` on a terminal prints `URL/#/jobs/ID?token=T`: the job's page opens
    in a browser that had no token, and the token leaves the address bar."""
    job = service.submit({**EXPERIMENT["base"], "name": "linked"})
    browser.get(f"{service.url}/#/")
    browser.execute_script("localStorage.clear()")
    browser.get(f"{service.url}/#/jobs/{job['id']}?token={service.token}")
    until(lambda: text(browser, "h1").startswith(f"Job {job['id']}: linked"), 30, "its page")
    assert browser.execute_script("return location.hash") == f"#/jobs/{job['id']}"
    assert browser.execute_script("return localStorage.getItem('lsq-token')") == service.token


# A 256-image test set measures in steps of 100/256 = 0.390625 points: a drop of 3.125 is one;
# Python's format rounded such a half to even (3.12), the dashboard away from zero (3.13).
NUMBERS = [3.125, -3.125, 0.375, 66.40625, 1.005, 2.675, 12.5, 0.0, -0.001, 99.995]


def test_numbers_read_the_same_in_the_cli_and_on_the_dashboard(
    service: Service, browser: webdriver.Chrome
) -> None:
    from lsq.metrics import EpochMetrics, RunResult, summary_line, table_row

    browser.get(f"{service.url}/#token={service.token}")
    until(lambda: "Jobs" in text(browser, "main"), 30, "the home page")
    dashboard = browser.execute_script("return arguments[0].map((x) => pct(x))", NUMBERS)
    numbers = dict(train_loss=1, test_loss=1, lr=0.1, seconds=1, images_per_second=1)
    epochs = [EpochMetrics(epoch=1, train_top1=x, test_top1=x, test_top5=x, **numbers)
              for x in NUMBERS]  # fmt: skip
    assert [f"{table_row(e).split()[4]}%" for e in epochs] == dashboard  # test_top1
    results = [RunResult(final_top1=50, final_top5=90, best_top1=50, best_top5=90, best_epoch=1,
                         epochs=1, init_top1=50 + x, drop_top1=x) for x in NUMBERS]  # fmt: skip
    drops = [summary_line("job", r).split("drop ")[1].split()[0] for r in results]
    assert drops == browser.execute_script("return arguments[0].map((x) => x.toFixed(2))", NUMBERS)


def test_a_whole_epoch_reads_as_a_whole_number(service: Service, browser: webdriver.Chrome) -> None:
    browser.get(f"{service.url}/#token={service.token}")
    until(lambda: "Jobs" in text(browser, "main"), 30, "the home page")
    done, halfway = browser.execute_script(
        "return [progress({epoch: 2, fraction: 1, epochs: 2}, 'succeeded'),"
        " progress({epoch: 2, fraction: 0.5, epochs: 3}, 'running')]"
    )
    assert ">2/2 epochs<" in done and ">1.5/3 epochs<" in halfway


@pytest.mark.slow
def test_upload_a_model_in_the_browser_and_train_on_it(
    service: Service, browser: webdriver.Chrome, tmp_path: Path
) -> None:
    """A pickle refused beside the file input, then an ONNX classifier sent, listed, and put in
    a job with one click; the job trains on it."""
    browser.get(f"{service.url}/#token={service.token}")
    until(lambda: "Jobs" in text(browser, "main"), 30, "the home page")
    browser.get(f"{service.url}/#/new")
    chooser = until(lambda: browser.find_element(By.ID, "model-file"), 10, "the upload form")
    chooser.send_keys(str(mf.plain_pickle(tmp_path / "model.pt")))
    browser.find_element(By.ID, "upload").click()
    errors = until(lambda: text(browser, "#upload-errors"), 30, "the refusal")
    assert "file" in errors and "never read here" in errors

    chooser = browser.find_element(By.ID, "model-file")
    chooser.send_keys(str(mf.onnx_classifier(tmp_path / "resnet20.onnx")))
    browser.find_element(By.ID, "upload").click()
    until(lambda: "resnet20.onnx" in text(browser, "#uploads"), 60, "the upload listed")
    assert "3 × 16 px, 10 classes" in text(browser, "#uploads")
    browser.find_element(By.CSS_SELECTOR, "button[data-use]").click()
    spec = browser.find_element(By.ID, "spec").get_attribute("value")
    assert "model: {upload: " in spec and "image_size: 16" in spec

    def chosen() -> str:  # the form is drawn again for it, with the upload listed
        return field(browser, "model").find_element(By.CSS_SELECTOR, "option:checked").text

    network = until(lambda: chosen().startswith("upload ") and chosen(), 20, "the form redrawn")
    assert network.endswith("resnet20.onnx")
    assert field(browser, "dataset.image_size").get_attribute("value") == "16"
    browser.execute_script("document.getElementById('uploads').scrollIntoView()")
    assert shot(browser, "dashboard-uploads").stat().st_size > 10_000
    browser.find_element(By.ID, "submit").click()
    until(lambda: "#/jobs/" in browser.current_url, 10, "the new job's page")
    until(lambda: "succeeded" in text(browser, "h1"), 180, "the job on the upload to succeed")


def field(browser: webdriver.Chrome, path: str) -> object:
    return browser.find_element(By.CSS_SELECTOR, f'#spec-form [data-path="{path}"]')


def choose(browser: webdriver.Chrome, path: str, text: str) -> None:
    """Pick the option showing `text` in the form's select (or level set) at `path`."""
    from selenium.webdriver.support.ui import Select

    element = field(browser, path)
    if element.tag_name != "select":
        element = element.find_element(By.TAG_NAME, "select")
    Select(element).select_by_visible_text(text)


def type_into(browser: webdriver.Chrome, path: str, value: str) -> None:
    element = field(browser, path)
    element.clear()
    element.send_keys(value)


@pytest.mark.slow
def test_the_form_submits_a_job_and_an_experiment_without_yaml(
    service: Service, browser: webdriver.Chrome
) -> None:
    """Fields from the API's schema and the service's data; a 422 beside its field; the YAML
    view in sync both ways."""
    browser.get(f"{service.url}/#token={service.token}")
    until(lambda: "Jobs" in text(browser, "main"), 30, "the home page")
    browser.get(f"{service.url}/#/new")
    until(lambda: field(browser, "training.epochs"), 20, "the form's fields")
    networks = [o.text for o in field(browser, "model").find_elements(By.TAG_NAME, "option")]
    assert {"resnet20", "mobilenet_v2", "vit_tiny"} <= set(networks)  # the schema's networks
    type_into(browser, "name", "form-job")
    choose(browser, "dataset", "synthetic")
    choose(browser, "quantization.weight", "2-bit signed")
    choose(browser, "quantization.activation", "2-bit [0, 1, 2, 3]")
    type_into(browser, "training.epochs", "0")
    browser.find_element(By.ID, "submit").click()
    beside = until(lambda: text(browser, ".field-error"), 10, "the 422 beside epochs")
    assert "greater than or equal to 1" in beside
    label = browser.find_element(By.CSS_SELECTOR, ".field-error").find_element(By.XPATH, "..")
    assert label.find_element(By.TAG_NAME, "input").get_attribute("data-path") == "training.epochs"
    shot(browser, "dashboard-form-field-error")

    type_into(browser, "training.epochs", "1e400")  # the browser reads no number there
    assert "not a number this form can send" in text(browser, ".field-error")
    type_into(browser, "training.epochs", "1")
    browser.find_element(By.ID, "show-yaml").click()  # the YAML view says what the form does
    yaml_text = browser.find_element(By.ID, "spec").get_attribute("value")
    assert "name: form-job" in yaml_text and "bits: 2" in yaml_text and "epochs: 1" in yaml_text
    area = browser.find_element(By.ID, "spec")
    area.send_keys("\nbroken: [")  # no document: the form would lose it, so it is not shown
    browser.find_element(By.ID, "show-form").click()
    assert "does not read as a document" in text(browser, "#errors") and area.is_displayed()
    area.clear()
    area.send_keys(yaml_text)
    browser.find_element(By.ID, "show-form").click()
    assert not area.is_displayed()
    browser.find_element(By.ID, "submit").click()
    until(lambda: "#/jobs/" in browser.current_url, 10, "the new job's page")
    job = service.job(int(browser.current_url.rsplit("/", 1)[1]))
    assert job["spec"]["quantization"]["weight"] == [-2, -1, 0, 1]  # {bits: 2, signed: true}
    assert job["spec"]["training"]["epochs"] == 1

    browser.get(f"{service.url}/#/new")
    until(lambda: field(browser, "training.epochs"), 20, "the form")
    browser.find_element(By.CSS_SELECTOR, "input[name=kind][value=experiment]").click()
    until(lambda: field(browser, "base.training.epochs"), 20, "the experiment's fields")
    type_into(browser, "name", "form-table")
    browser.find_element(By.ID, "add-row").click()  # a third row: the example has two
    choose(browser, "variants.2.quantization.weight", "2-bit signed")
    choose(browser, "variants.2.quantization.activation", "4-bit unsigned")
    type_into(browser, "seeds", "0")
    browser.execute_script("document.getElementById('rows').scrollIntoView()")
    assert shot(browser, "dashboard-form-experiment").stat().st_size > 10_000
    browser.find_element(By.ID, "submit").click()
    until(lambda: "#/experiments/" in browser.current_url, 10, "the new experiment's page")
    experiment_id = int(browser.current_url.rsplit("/", 1)[1])
    spec = service.http.get(f"/v1/experiments/{experiment_id}").json()["spec"]
    assert [v["quantization"] for v in spec["variants"]] == [
        {"weight": [-1, 0, 1], "activation": None},
        {"weight": [-1, 0, 1], "activation": [0, 1, 2, 3]},
        {"weight": {"bits": 2, "signed": True}, "activation": {"bits": 4}},
    ]
    assert [e for e in console_errors(browser) if "Uncaught" in e] == []
