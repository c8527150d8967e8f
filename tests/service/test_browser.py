"""The Centre's web UI in a real browser (Playwright driving Debian's chromium): sign-in to a downloaded export bundle."""

import os
import shutil
import tarfile
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]

JOB_TIMEOUT_MS = 240_000
EXPORT_TIMEOUT_MS = 240_000


def _chromium() -> str:
    found = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").is_file() else None)
    if found is None:
        if os.environ.get("MOEFORGE_REQUIRE_BROWSER") == "1":
            pytest.fail("MOEFORGE_REQUIRE_BROWSER=1 but no chromium binary is on PATH (apt-get install chromium)")
        pytest.skip("no chromium binary on PATH (Debian: apt-get install chromium); Playwright's own browsers cannot run here")
    return found


@pytest.fixture
def artifacts(tmp_path):
    folder = Path(os.environ.get("MOEFORGE_ARTIFACTS") or tmp_path / "screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture
def page(running_centre):
    from harness.browser import browser_page

    with browser_page(_chromium()) as page:
        yield page


def test_the_web_ui_signs_in_uploads_launches_watches_a_job_and_downloads_its_export(running_centre, maths_file, page,
                                                                                     artifacts, tmp_path):
    from playwright.sync_api import expect

    shots = []

    def shot(name):
        path = artifacts / f"{len(shots) + 1:02d}-{name}.png"
        page.screenshot(path=str(path), full_page=True)
        shots.append(path)

    page.goto(running_centre.url + "/")
    expect(page.get_by_role("heading", name="Sign in")).to_be_visible()

    # a wrong key (well-formed, wrong secret) is refused next to the field, and nothing else shows
    wrong = running_centre.key[:-4] + ("AAAA" if not running_centre.key.endswith("AAAA") else "BBBB")
    page.get_by_label("API key").fill(wrong)
    page.get_by_role("button", name="Sign in").click()
    expect(page.locator("#api-key-error")).to_contain_text("wrong API key")
    expect(page.locator("#app")).to_be_hidden()
    assert page.evaluate("sessionStorage.getItem('moeforge.key')") is None
    shot("wrong-key")

    # sign in by keyboard: type the key, Tab to the button, Enter
    page.get_by_label("API key").fill(running_centre.key)
    page.get_by_label("API key").focus()
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.id") == "signin-button"
    page.keyboard.press("Enter")
    expect(page.locator("#app")).to_be_visible()
    expect(page.locator("#api-key-error")).to_be_empty()
    assert page.evaluate("sessionStorage.getItem('moeforge.key')") == running_centre.key
    expect(page.locator("#job-model")).to_have_value(running_centre.model.name)
    shot("signed-in")

    # an upload the API refuses (its name is markup) shows error.message by the field, as text, not HTML
    hostile = '<img src=x onerror="window.__pwned=1">.jsonl'
    page.get_by_label("Data file", exact=False).set_input_files({"name": hostile, "mimeType": "application/json",
                                                                 "buffer": b'{"question": "1+1", "answer": "2"}\n'})
    page.get_by_role("button", name="Upload").click()
    expect(page.locator("#upload-file-error")).to_contain_text("file name '<img src=x")
    assert page.evaluate("window.__pwned") is None and page.locator("#upload img").count() == 0

    # the maths file: uploaded, validated by the worker, its report shown next to the upload field
    shot("refused-upload")
    page.get_by_label("Data file", exact=False).set_input_files(str(maths_file))
    page.get_by_role("button", name="Upload").click()
    report = page.locator("#upload-report")
    expect(report).to_be_visible(timeout=120_000)
    expect(page.locator("#upload-file-error")).to_be_empty()
    expect(report.locator("dt:text-is('Records') + dd")).to_have_text("300")
    expect(report.locator("dt:text-is('Skipped') + dd")).to_have_text("0")
    expect(report).to_contain_text("question → prompt, answer → response")
    expect(page.locator("#files-table tbody")).to_contain_text("maths.jsonl")
    expect(page.locator("#job-file option")).to_have_count(1)
    shot("uploaded")

    # a bad domain: the API's error lands next to the domain field, not at the form
    page.get_by_label("Domain", exact=False).fill("Bad Domain!")
    page.get_by_label("Goal", exact=False).fill("solve grade-school word problems")
    page.get_by_label("Rounds", exact=False).fill("2")
    page.get_by_role("button", name="Launch job").click()
    expect(page.locator("#job-domain-error")).to_contain_text("problem.domain")
    expect(page.locator("#job-domain")).to_have_attribute("aria-invalid", "true")
    expect(page.locator("#job-form-error")).to_be_empty()
    expect(page.locator("#job-detail")).to_be_hidden()
    shot("bad-domain")

    # the real job, watched live to its end
    page.get_by_label("Domain", exact=False).fill("maths")
    page.get_by_role("button", name="Launch job").click()
    expect(page.locator("#job-domain-error")).to_be_empty()
    detail = page.locator("#job-detail")
    expect(detail).to_be_visible()
    job_id = page.locator("#job-heading").inner_text().removeprefix("Job ").strip()
    assert job_id.startswith("ftjob")
    expect(page.locator("#jobs-table tbody")).to_contain_text(job_id)
    expect(page.locator("#plan-memory")).to_be_visible(timeout=JOB_TIMEOUT_MS)
    expect(page.locator("#job-plan")).to_contain_text("Experts selected")
    shot("planned")
    expect(page.locator("#job-status")).to_have_text("succeeded", timeout=JOB_TIMEOUT_MS)
    expect(page.locator("#job-cancel")).to_be_hidden()
    expect(page.locator("#job-events li").first).to_contain_text("job created")
    expect(page.locator("#job-events")).to_contain_text("job succeeded")
    points = page.locator("#round-chart .series .point")
    expect(points.first).to_be_attached()
    assert points.count() >= 1
    expect(page.locator("#round-chart")).to_contain_text("held-out loss")  # the legend and the axis label
    expect(page.locator("#round-chart")).to_contain_text("round")
    expect(page.locator("#job-heatmap")).to_be_visible()
    assert page.evaluate("document.getElementById('job-heatmap').naturalWidth") > 0
    shot("succeeded")

    # the export bundle: downloaded through the page (fetched with the key, saved from a blob)
    button = page.locator("#job-exports button.download")
    expect(button).to_be_visible(timeout=EXPORT_TIMEOUT_MS)
    with page.expect_download() as info:
        button.click()
    saved = tmp_path / "bundle.tar"
    info.value.save_as(saved)
    assert info.value.suggested_filename.endswith(".tar")
    assert tarfile.is_tarfile(saved)
    with tarfile.open(saved) as tar:
        assert any(Path(n).name == "SHA256SUMS" for n in tar.getnames())
    expect(page.locator("#job-export-error")).to_be_empty()
    shot("exported")

    # the library: the job's model, its card and its heatmap
    model_id = running_centre.client().fine_tuning.jobs.retrieve(job_id).fine_tuned_model
    assert model_id
    page.get_by_role("button", name="Refresh library").click()
    page.locator(f"#models-table button[data-model='{model_id}']").click()
    expect(page.locator("#model-detail")).to_be_visible()
    expect(page.locator("#model-heading")).to_contain_text(model_id)
    expect(page.locator("#model-card")).to_contain_text("maths")
    assert page.locator("#model-card *").count() == 0  # the markdown card is text, never parsed into elements
    expect(page.locator("#model-heatmap")).to_be_visible()
    shot("library")

    assert page.errors == [], page.errors
    assert len(shots) == 9 and all(p.is_file() and p.stat().st_size > 1000 for p in shots), shots
