"""A page in headless Debian chromium driven by Playwright, collecting the page's uncaught errors in `page.errors`."""

from contextlib import contextmanager


@contextmanager
def browser_page(executable: str):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable, args=["--no-sandbox"])
        context = browser.new_context(viewport={"width": 1200, "height": 900}, accept_downloads=True)
        page = context.new_page()
        page.errors = []
        page.on("pageerror", lambda exc: page.errors.append(str(exc)))
        try:
            yield page
        finally:
            context.close()
            browser.close()
