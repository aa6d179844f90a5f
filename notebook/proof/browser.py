"""The real JupyterLab in a real browser: Debian's Chromium, headless, driven
by Playwright (never a browser Playwright downloads), logged in through the
hub's login page as the user.

check() opens JupyterLab, right-clicks data.csv in the file browser and
opens the File menu, and reports every Download, Copy Download Link, Open in
New Browser Tab or Export entry; double-clicks data.csv and reports whether
the server's refusal is shown; the first time, opens nb.ipynb and runs its
cell (print(6 * 7)).
"""

from __future__ import annotations

import os

CHROMIUM = os.environ.get("HUBWARDEN_CHROMIUM", "/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
FORBIDDEN = ("Download", "Open in New Browser Tab", "Export")


class Browser:
    def __init__(self, hub, log):
        self.hub, self.log = hub, log
        self.contexts: dict[str, object] = {}

    async def start(self) -> None:
        from playwright.async_api import async_playwright

        self.pw = await async_playwright().start()
        # A fresh profile per context: Playwright gives each new context its
        # own temporary user data directory.
        self.browser = await self.pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)

    async def stop(self) -> None:
        await self.browser.close()
        await self.pw.stop()

    async def _context(self, user):
        ctx = self.contexts.get(user.name)
        if ctx is None:
            ctx = await self.browser.new_context(viewport={"width": 1400, "height": 900})
            page = await ctx.new_page()
            await page.goto(f"{self.hub.url}/hub/login", timeout=60000)
            await page.fill("#username_input", user.name)
            await page.fill("#password_input", user.password)
            await page.click("#login_submit")
            await page.wait_for_load_state()
            await page.close()
            self.contexts[user.name] = ctx
        return ctx

    async def _menu_labels(self, page) -> list[str]:
        menu = page.locator(".lm-Menu").last
        await menu.wait_for(state="visible", timeout=15000)
        labels = [t.strip() for t in await menu.locator(".lm-Menu-itemLabel").all_inner_texts()]
        await page.keyboard.press("Escape")
        return [t for t in labels if t]

    async def check(self, user, first: bool = False) -> list[str]:
        broken: list[str] = []
        ctx = await self._context(user)
        page = await ctx.new_page()
        try:
            await page.goto(f"{self.hub.url}/user/{user.name}/lab", timeout=90000)
            item = page.locator(".jp-DirListing-item", has_text="data.csv").first
            await item.wait_for(state="visible", timeout=90000)
            # Start-up dialogs (e.g. a build or news prompt) would take the clicks.
            for _ in range(5):
                dialogs = page.locator(".jp-Dialog")
                if not await dialogs.count():
                    break
                self.log(f"  browser {user.name}: dismissing dialog: {(await dialogs.first.inner_text())[:120]!r}")
                await page.keyboard.press("Escape")
                await page.wait_for_timeout(500)
            await item.click(button="right")
            context_menu = await self._menu_labels(page)
            await page.locator(".lm-MenuBar-itemLabel", has_text="File").first.click()
            file_menu = await self._menu_labels(page)
            bad = sorted({t for t in context_menu + file_menu if any(f in t for f in FORBIDDEN)})
            if bad:
                broken.append("browser shows " + ", ".join(bad))
            self.log(f"  browser {user.name}: context menu {context_menu}; File menu {file_menu}")
            await item.dblclick()
            dialog = page.locator(".jp-Dialog")
            try:
                await dialog.wait_for(state="visible", timeout=20000)
                text = await dialog.inner_text()
                await page.keyboard.press("Escape")
            except Exception:
                text = ""
            if "content not served" not in text:
                broken.append("double-clicking data.csv did not show the refusal")
            if first:
                nb = page.locator(".jp-DirListing-item", has_text="nb.ipynb").first
                await nb.dblclick()
                cell = page.locator(".jp-Notebook .jp-Cell").first
                await cell.wait_for(state="visible", timeout=60000)
                # The kernel must be idle before the cell runs.
                await page.locator(".jp-Notebook").first.wait_for(timeout=60000)
                await cell.click()
                await page.wait_for_timeout(1500)
                await page.keyboard.press("Shift+Enter")
                out = page.locator(".jp-OutputArea-output", has_text="42").first
                try:
                    await out.wait_for(state="visible", timeout=60000)
                except Exception:
                    broken.append("the notebook did not run in the browser")
        finally:
            await page.close()
        return broken
