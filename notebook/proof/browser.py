"""The real JupyterLab in a real browser: Debian's Chromium (never a browser
Playwright downloads), headless, started inside the proof's network
namespace, driven by Playwright; each user logs in through the hub's login
page in a browser context of their own (Playwright starts Chromium with a
fresh temporary profile, --user-data-dir, every launch).

check() opens JupyterLab and reports every Download, Copy Download Link,
Open in New Browser Tab or Export entry in the file browser's context menu
of data.csv and nb.ipynb and in the File menu; double-clicks data.csv and
reports whether the server's refusal is not what JupyterLab shows. With
first=True (the baseline) it also opens nb.ipynb, runs its cell
(print(6 * 7)) and looks for 42, and, with the notebook active, reads the
File menu again (Download and Save and Export Notebook As… act on the
active document). Screenshots go to the artifacts directory: the steps of
the baseline, and the page whenever a step fails.
"""

from __future__ import annotations

import os
import re

CHROMIUM = os.environ.get("HWNB_CHROMIUM", "/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
FORBIDDEN = re.compile(r"Download|Open in New Browser Tab|Export", re.I)
REFUSAL_TEXT = "content not served"
KERNEL_IDLE = re.compile(r"Python 3 \(ipykernel\) \| Idle")


class StepFailed(Exception):
    pass


class Browser:
    def __init__(self, hub, log, artifacts: str | None):
        self.hub, self.log, self.artifacts = hub, log, artifacts
        self.contexts: dict[str, object] = {}

    async def start(self) -> None:
        from playwright.async_api import async_playwright

        if not os.access(CHROMIUM, os.X_OK):
            raise RuntimeError(f"no Chromium at {CHROMIUM} (make setup installs Debian's chromium)")
        self.pw = await async_playwright().start()
        self.browser = await self.pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
        self.log(f"browser: {CHROMIUM} {self.browser.version}")

    async def stop(self) -> None:
        for ctx in self.contexts.values():
            await ctx.close()
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

    async def _shot(self, page, name: str) -> None:
        if self.artifacts:
            path = os.path.join(self.artifacts, name + ".png")
            await page.screenshot(path=path)
            self.log(f"  browser: screenshot {path}")

    async def _dismiss_dialogs(self, page, user) -> None:
        """Start-up dialogs (a build prompt, news) would take the clicks."""
        for _ in range(5):
            dialogs = page.locator(".jp-Dialog")
            if not await dialogs.count():
                return
            self.log(f"  browser {user.name}: dismissing dialog: {(await dialogs.first.inner_text())[:160]!r}")
            await page.keyboard.press("Escape")
            await page.wait_for_timeout(500)

    async def _accept_kernel_dialog(self, page, user) -> None:
        dialog = page.locator(".jp-Dialog", has_text="Select Kernel")
        if await dialog.count():
            self.log(f"  browser {user.name}: accepting the kernel JupyterLab proposes")
            await dialog.first.locator(".jp-mod-accept").click()
            await dialog.first.wait_for(state="hidden", timeout=15000)

    async def _dismiss_news(self, page) -> None:
        """JupyterLab's "official Jupyter news?" notification: No (it covers the page's corner)."""
        toast = page.locator(".Toastify__toast", has_text="Jupyter news")
        if await toast.count():
            await toast.first.get_by_role("button", name="No", exact=True).click()

    async def _menu_labels(self, page, shot: str | None = None) -> list[str]:
        menu = page.locator(".lm-Menu").last
        await menu.wait_for(state="visible", timeout=15000)
        labels = [t.strip() for t in await menu.locator(".lm-Menu-itemLabel").all_inner_texts()]
        if shot:
            await self._shot(page, shot)
        await page.keyboard.press("Escape")
        await menu.wait_for(state="hidden", timeout=15000)
        return [t for t in labels if t]

    async def _file_menu(self, page, shot: str | None = None) -> list[str]:
        await page.locator(".lm-MenuBar-itemLabel", has_text="File").first.click()
        return await self._menu_labels(page, shot)

    async def check(self, user, first: bool = False) -> list[str]:
        broken: list[str] = []
        ctx = await self._context(user)
        page = await ctx.new_page()
        step = "opening JupyterLab"
        tag = f"{user.name}-{'baseline' if first else 'attempt'}"
        try:
            await page.goto(f"{self.hub.url}/user/{user.name}/lab", timeout=90000)
            csv = page.locator(".jp-DirListing-item", has_text="data.csv").first
            await csv.wait_for(state="visible", timeout=90000)
            await self._dismiss_dialogs(page, user)
            await self._dismiss_news(page)
            step = "the context menu of data.csv"
            await csv.click(button="right")
            seen = {"data.csv context menu": await self._menu_labels(page, f"{tag}-context-menu")}
            step = "the context menu of nb.ipynb"
            nb = page.locator(".jp-DirListing-item", has_text="nb.ipynb").first
            await nb.click(button="right")
            seen["nb.ipynb context menu"] = await self._menu_labels(page)
            step = "the File menu"
            seen["File menu"] = await self._file_menu(page)
            step = "double-clicking data.csv"
            await csv.dblclick()
            dialog = page.locator(".jp-Dialog")
            text = ""
            try:
                await dialog.first.wait_for(state="visible", timeout=20000)
                text = await dialog.first.inner_text()
                if first:
                    await self._shot(page, f"{tag}-csv-refused")
                await page.keyboard.press("Escape")
            except Exception:
                await self._shot(page, f"{tag}-csv-no-dialog")
            if REFUSAL_TEXT not in text:
                broken.append(f"double-clicking data.csv did not show the server's refusal (dialog: {text[:120]!r})")
            self.log(f"  browser {user.name}: refusal dialog: {text[:200]!r}")
            if first:
                step = "opening and running nb.ipynb"
                await self._dismiss_dialogs(page, user)
                await nb.dblclick()
                panel = page.locator(".jp-NotebookPanel:not(.lm-mod-hidden)").first
                await panel.wait_for(state="visible", timeout=60000)
                # The kernel is ready when the status bar says so.
                await page.get_by_text(KERNEL_IDLE).first.wait_for(timeout=90000)
                await self._dismiss_news(page)
                # Run the first cell. A run asked for while the session is
                # still connecting its kernel is dropped, or JupyterLab asks
                # which kernel to start (accepted: the notebook's own): ask
                # again, a bounded number of times.
                cell = panel.locator(".jp-Cell").first
                out = panel.locator(".jp-OutputArea-output", has_text="42").first
                ran = False
                for _ in range(4):
                    await self._accept_kernel_dialog(page, user)
                    await cell.locator(".jp-InputArea-editor").click()
                    await page.keyboard.press("Control+Enter")
                    try:
                        await out.wait_for(state="visible", timeout=20000)
                        ran = True
                        break
                    except Exception:
                        self.log(f"  browser {user.name}: no output yet, running the cell again")
                if not ran:
                    broken.append("the notebook did not run in the browser (no 42)")
                    await self._shot(page, f"{tag}-notebook-did-not-run")
                step = "the File menu with the notebook active"
                seen["File menu, notebook active"] = await self._file_menu(page, f"{tag}-file-menu-notebook")
                await self._shot(page, f"{tag}-notebook-ran")
            for where, labels in seen.items():
                self.log(f"  browser {user.name}: {where}: {labels}")
                bad = sorted({t for t in labels if FORBIDDEN.search(t)})
                if bad:
                    broken.append(f"browser shows {', '.join(bad)} in the {where}")
        except Exception as e:
            broken.append(f"browser: {step} failed: {str(e).splitlines()[0][:200]}")
            await self._shot(page, f"{tag}-failed")
        finally:
            await page.close()
        return broken
