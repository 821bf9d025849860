"""The console in a real headless browser: Chromium from the OS packages (/usr/bin/chromium), driven by
Playwright, against ``presso serve`` in a subprocess (API + a real worker + SQLite + local store).

Sign in, submit two jobs through the form on a tiny model, watch them finish (live progress), open the
report, download a file and check its sha256, compare the two jobs; CSRF (a forged token, a cross-site
form), cookie flags, another tenant's 404; /docs and /redoc with every request off this machine blocked.

Skips only when /usr/bin/chromium is absent (install: ``apt-get install -y chromium chromium-driver``).
Every page is screenshotted into the test's temp dir; ``PRESSO_UPDATE_SCREENSHOTS=1`` also writes them to
docs/img/console_*.png (the README's pictures).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from svc_helpers import ADMIN_KEY, free_port, presso_process

CHROMIUM = Path("/usr/bin/chromium")
pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(),
    reason="no /usr/bin/chromium: the console's browser tests need the OS Chromium "
           "(apt-get install -y chromium chromium-driver)",
)
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright (dev extra) is not installed")
expect = sync_api.expect

ROOT = Path(__file__).resolve().parents[3]
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]
VIEWPORT = {"width": 1360, "height": 900}
JOB_TIMEOUT_MS = 300_000


class Served:
    def __init__(self, url: str, key: str, models: Path, shots: Path, log: Path):
        self.url, self.key, self.models, self.shots, self.log = url, key, models, shots, log

    def api(self, method: str, path: str, key: str | None = None, **kw: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {key or self.key}"}
        return httpx.request(method, f"{self.url}{path}", headers=headers, timeout=30, **kw)

    def shot(self, page: Any, name: str, full_page: bool = True) -> None:
        path = self.shots / f"console_{name}.png"
        page.screenshot(path=str(path), full_page=full_page)
        if os.environ.get("PRESSO_UPDATE_SCREENSHOTS") == "1":
            shutil.copyfile(path, ROOT / "docs" / "img" / path.name)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, tiny_llama_dir: Path) -> Iterator[Served]:
    tmp = tmp_path_factory.mktemp("console-browser")
    models = tmp / "models"
    shutil.copytree(tiny_llama_dir, models / "tiny-llama")
    data = tmp / "data"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PRESSO_")}
    env.update({"PRESSO_DATA_DIR": str(data), "PRESSO_ALLOWED_FILE_ROOTS": str(models),
                "PRESSO_REAPER_INTERVAL_S": "2", "PRESSO_ADMIN_KEY": ADMIN_KEY,
                "PRESSO_CONSOLE_POLL_INTERVAL_S": "0.5"})
    log_path = tmp / "serve.log"
    with presso_process(["serve"], env, log_path) as (_proc, url):
        shots = tmp / "screenshots"
        shots.mkdir()
        yield Served(url, (data / "dev-api-key").read_text().strip(), models, shots, log_path)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with sync_api.sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        yield chromium
        chromium.close()


def _sign_in(browser: Any, served: Served, key: str) -> tuple[Any, Any]:
    context = browser.new_context(viewport=VIEWPORT)
    page = context.new_page()
    page.goto(f"{served.url}/console/jobs")
    expect(page).to_have_url(f"{served.url}/console/login?next=%2Fconsole%2Fjobs")
    page.fill("#api_key", key)
    page.click("#login-form button[type=submit]")
    expect(page).to_have_url(f"{served.url}/console/jobs")
    return context, page


def _submit_form(page: Any, served: Served, steps: list[tuple[str, dict[str, str]]], **extra: str) -> str:
    page.goto(f"{served.url}/console/submit")
    page.fill("#model_uri", (served.models / "tiny-llama").as_uri())
    for slot, (method, params) in enumerate(steps):
        page.select_option(f"select[name='s{slot}.method']", method)
        for name, value in params.items():
            page.fill(f"input[name='s{slot}.{method}.{name}']", value)
    for name, value in {"evaluation.windows": "2", "evaluation.seq_len": "32", **extra}.items():
        page.fill(f"input[name='{name}']", value)
    page.click("#submit-job")
    page.wait_for_url(f"{served.url}/console/jobs/*")
    return str(page.url.rsplit("/", 1)[1])


def _wait_succeeded(page: Any, served: Served) -> None:
    """The job page polls the progress endpoint and reloads when the job is done."""
    try:
        expect(page.locator("#job-head .state")).to_have_text("succeeded", timeout=JOB_TIMEOUT_MS)
    except AssertionError:
        print(served.log.read_text()[-6000:])
        raise


def test_sign_in_submit_watch_report_download_compare(browser: Any, served: Served, tmp_path: Path) -> None:
    page0 = browser.new_page(viewport=VIEWPORT)
    page0.goto(f"{served.url}/console")
    expect(page0.locator("#login-form")).to_be_visible()
    served.shot(page0, "login", full_page=False)
    page0.close()

    context, page = _sign_in(browser, served, served.key)
    (cookie,) = [c for c in context.cookies() if c["name"] == "presso_console"]
    assert cookie["httpOnly"] and cookie["sameSite"] == "Lax" and cookie["path"] == "/console"
    assert not cookie["secure"]  # plain http on 127.0.0.1; Secure over https (test_console.py)
    assert served.key not in cookie["value"]
    assert page.evaluate("() => document.cookie") == ""  # HttpOnly: no script sees it

    # submit form: the API's validation messages, beside the field
    page.goto(f"{served.url}/console/submit")
    page.select_option("select[name='s0.method']", "gptq")
    expect(page.locator(".method-fields[data-slot='0'][data-method='gptq']")).to_be_visible()
    expect(page.locator(".method-fields[data-slot='0'][data-method='rtn']")).to_be_hidden()
    page.fill("#model_uri", (served.models / "tiny-llama").as_uri())
    page.fill("input[name='s0.gptq.bits']", "12")
    page.click("#submit-job")
    expect(page.locator("#submit-errors")).to_contain_text("recipe.steps.0.bits")
    expect(page.locator("[data-for='s0.gptq.bits']")).to_have_text("Input should be less than or equal to 8")

    progress_polls: list[str] = []
    page.on("request", lambda r: "/console/api/progress" in r.url and progress_polls.append(r.url))
    first = _submit_form(page, served, [("wanda", {"sparsity": "0.5"}), ("gptq", {"bits": "4", "group_size": "32"})],
                         **{"calibration.samples": "8", "calibration.seq_len": "32"})
    expect(page.locator("#live progress")).to_be_attached()  # live progress while queued / running
    served.shot(page, "job_running", full_page=False)
    _wait_succeeded(page, served)
    assert progress_polls, "the job page never polled its progress"
    expect(page.locator("#live")).to_have_count(0)

    # the job page: metrics, per-layer charts, gate attempts, timings, downloads with sha256
    expect(page.locator("#metrics-table")).to_contain_text("perplexity after")
    assert page.locator("[data-chart='sparsity'] rect.bar").count() == 14  # one column per linear layer
    assert page.locator("[data-chart='bits'] rect.bar").count() == 14
    assert page.locator("[data-chart='rel_error'] rect.bar").count() == 14
    expect(page.locator("#attempts-table")).to_contain_text("published")
    expect(page.locator("#timings svg.chart")).to_be_visible()
    expect(page.locator("#recipe-json")).to_contain_text('"wanda"')
    manifest = served.api("GET", f"/v1/jobs/{first}/artifact").json()
    rows = page.locator("#files-table tbody tr")
    assert rows.count() == len(manifest["files"])
    for f in manifest["files"]:
        expect(page.locator("#files-table")).to_contain_text(f["sha256"])
    served.shot(page, "job")
    with page.expect_download() as info:
        page.click("#files-table a:text-is('config.json')")
    saved = tmp_path / "config.json"
    info.value.save_as(saved)
    (entry,) = [f for f in manifest["files"] if f["path"] == "config.json"]
    assert hashlib.sha256(saved.read_bytes()).hexdigest() == entry["sha256"]

    second = _submit_form(page, served, [("rtn", {"bits": "8", "group_size": "32"})])
    _wait_succeeded(page, served)

    # the jobs list: both, newest first; choose both and compare
    page.goto(f"{served.url}/console/jobs")
    ids = page.locator("#jobs-table tbody tr").evaluate_all("rows => rows.map(r => r.dataset.jobId)")
    assert ids[:2] == [second, first]
    expect(page.locator("#jobs-table")).not_to_contain_text("running")
    served.shot(page, "jobs", full_page=False)
    page.check(f"input[name=ids][value='{first}']")
    page.check(f"input[name=ids][value='{second}']")
    page.click("#compare-selected")
    expect(page.locator("#compare-chart svg")).to_be_visible()
    assert page.locator("#compare-chart circle.pt").count() == 2
    assert page.locator("#compare-chart circle.ref").count() == 1  # the original model
    expect(page.locator("#compare-chart svg")).to_contain_text("perplexity after against weight bytes")
    page.select_option("#metric", "kl")
    page.click("#compare-controls button[type=submit]")
    expect(page.locator("#compare-chart svg")).to_contain_text("KL")
    assert page.locator("#compare-chart circle.pt").count() == 2
    page.select_option("#metric", "ppl_after")
    page.click("#compare-controls button[type=submit]")
    served.shot(page, "compare")
    page.click(f"#compare-chart a[href='/console/jobs/{first}'] circle", force=True)
    expect(page).to_have_url(f"{served.url}/console/jobs/{first}")

    page.goto(f"{served.url}/console/submit")
    page.select_option("select[name='s0.method']", "gptq")
    served.shot(page, "submit")
    context.close()


class _AttackPage(BaseHTTPRequestHandler):
    """Another site (``localhost`` is not the same site as 127.0.0.1) with a form that posts to the console."""

    target = ""

    def do_GET(self) -> None:  # noqa: N802
        body = (f'<form method="post" action="{self.target}/console/logout" id="attack">'
                f'<input type="hidden" name="csrf_token" value="guess"><button id="go">win a prize</button>'
                f"</form>").encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


def test_csrf_cookie_scope_and_another_tenants_404(browser: Any, served: Served) -> None:
    job = served.api("POST", "/v1/jobs", json={"model_uri": (served.models / "tiny-llama").as_uri(),
                                               "recipe": {"steps": [{"method": "rtn", "bits": 4}]},
                                               "evaluation": {"windows": 2, "seq_len": 32}}).json()
    context, page = _sign_in(browser, served, served.key)

    # a forged token on a real form of the console: refused, nothing cancelled
    page.goto(f"{served.url}/console/jobs/{job['id']}")
    if page.locator("#cancel-form").count():
        page.locator("#cancel-form input[name=csrf_token]").evaluate("el => { el.value = 'forged'; }")
        page.click("#cancel-form button")
        expect(page.locator("#error-code")).to_have_text("csrf_failed")
        assert not served.api("GET", f"/v1/jobs/{job['id']}").json()["cancel_requested"]

    # a form on another site posting to the console: the session cookie is not sent, nothing happens
    _AttackPage.target = served.url
    attacker = ThreadingHTTPServer(("127.0.0.1", free_port()), _AttackPage)
    threading.Thread(target=attacker.serve_forever, daemon=True).start()
    try:
        page.goto(f"http://localhost:{attacker.server_address[1]}/")
        page.click("#go")
        page.wait_for_load_state()
        assert "/console/jobs" not in page.url
    finally:
        attacker.shutdown()
    page.goto(f"{served.url}/console/jobs")
    expect(page).to_have_url(f"{served.url}/console/jobs")  # still signed in
    expect(page.locator(f"tr[data-job-id='{job['id']}']")).to_have_count(1)

    # another tenant: the job is a 404, as in the API, and absent from its list
    admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
    tenant = httpx.post(f"{served.url}/v1/admin/tenants", json={"name": "other-team"}, headers=admin).json()
    key = httpx.post(f"{served.url}/v1/admin/tenants/{tenant['id']}/keys", json={"name": "b"},
                     headers=admin).json()["secret"]
    other_context, other = _sign_in(browser, served, key)
    expect(other.locator("#tenant-name")).to_have_text("other-team")
    expect(other.locator(f"tr[data-job-id='{job['id']}']")).to_have_count(0)
    response = other.goto(f"{served.url}/console/jobs/{job['id']}")
    assert response is not None and response.status == 404
    expect(other.locator("#error-code")).to_have_text("not_found")
    served.shot(other, "not_found", full_page=False)
    other_context.close()
    context.close()


def test_api_docs_work_offline(browser: Any, served: Served) -> None:
    context = browser.new_context(viewport=VIEWPORT)
    left: list[str] = []

    def block(route: Any) -> None:
        left.append(route.request.url)
        route.abort()

    context.route(lambda url: not url.startswith(served.url), block)
    page = context.new_page()
    page.goto(f"{served.url}/docs")
    expect(page.locator(".swagger-ui .info .title")).to_contain_text("Presso")
    expect(page.locator(".swagger-ui .opblock").first).to_be_visible()
    expect(page.locator(".swagger-ui button.authorize")).to_be_visible()  # the declared security schemes
    page.goto(f"{served.url}/redoc")
    expect(page.locator("h1").first).to_contain_text("Presso")
    expect(page.get_by_text("Missing, unknown or revoked key").first).to_be_attached()  # the 401 error body
    expect(page.get_by_text("bearerAuth").first).to_be_attached()
    assert left == [], left
    context.close()
