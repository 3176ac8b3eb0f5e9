#!/usr/bin/env python3
"""The dtx web console (/ui/) in headless Chromium, driven by Selenium 4.

Run against a dtxd that has a token and the transactions named on the command line
(Tests/EndToEndTests/ConsoleBrowserTests.swift prepares them):

    python3 Tests/Browser/console_test.py --url http://127.0.0.1:PORT --token TOKEN \\
        --screenshots DIR --committed GID --aborted GID --stuck GID --open GID \\
        --participants a,b,c,d

Steps: a wrong token is refused; the list shows the four transactions and refreshes by
itself; the status filter; the committed transaction's sequence diagram; an operator's
abort of the open transaction; a by-hand resolution of the stuck one; the participants.
Each step ends with a screenshot DIR/NN-name.png. On a failure the script says which
step, what it expected and what it saw, saves DIR/failure.png and DIR/failure.html, and
exits 1; on success it prints "console test passed; screenshots in DIR" and exits 0.
"""

import argparse
import os
import sys
import urllib.parse

from selenium import webdriver
from selenium.common.exceptions import (NoSuchElementException, StaleElementReferenceException, TimeoutException,
                                        WebDriverException)
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select, WebDriverWait

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
WAIT = 20  # seconds, for every explicit wait


class StepFailed(Exception):
    pass


class ConsoleTest:
    def __init__(self, driver, args):
        self.driver = driver
        self.args = args
        self.step_name = "start"
        self.shots = 0

    # ---- helpers ------------------------------------------------------------------

    def js(self, script, *arguments):
        return self.driver.execute_script(script, *arguments)

    def error_text(self):
        """The console's visible error area, which shows every failed request's message."""
        return self.js("const e = document.getElementById('error'); return e && !e.hidden ? e.textContent : '';") or ""

    def wait_until(self, expected, check, seen, timeout=WAIT):
        """Waits for check() to be truthy; fails the step saying what was expected and seen."""
        def probe(_):
            try:
                return check()
            except (StaleElementReferenceException, NoSuchElementException):
                return False  # the page re-rendered meanwhile: look again
        try:
            return WebDriverWait(self.driver, timeout, poll_frequency=0.1).until(probe)
        except TimeoutException:
            try:
                saw = seen()
            except WebDriverException as e:
                saw = f"(could not read the page: {e.msg})"
            error = self.error_text()
            raise StepFailed(f"expected {expected} within {timeout} s; saw {saw}"
                             + (f"; the console's error area says: {error!r}" if error else "")) from None

    def element(self, element_id, what=None):
        return self.wait_until(what or f"an element #{element_id}",
                               lambda: self.driver.find_element(By.ID, element_id),
                               lambda: f"no #{element_id} (hash {self.hash()!r})")

    def click(self, element_id):
        """Clicks an element by id, again if the page re-rendered it in between."""
        def attempt():
            self.driver.find_element(By.ID, element_id).click()
            return True
        self.wait_until(f"a clickable #{element_id}", attempt, lambda: f"no clickable #{element_id} (hash {self.hash()!r})")

    def hash(self):
        return self.js("return location.hash;")

    def listed(self):
        return self.js("return [...document.querySelectorAll('#transactions tr[data-gid]')].map(r => r.dataset.gid);") or []

    def row(self, gid):
        """status text and stuck badge of a listed transaction, or None."""
        return self.js("""
            const row = [...document.querySelectorAll('#transactions tr[data-gid]')].find(r => r.dataset.gid === arguments[0]);
            if (!row) return null;
            const status = row.querySelector('.status');
            return {status: status ? status.textContent.trim() : null, stuck: !!row.querySelector('.stuck-badge')};
        """, gid)

    def transaction_state(self):
        return self.js("""
            const t = document.getElementById('transaction');
            return t ? {gid: (t.querySelector('h1') || t).textContent, status: t.dataset.status, stuck: t.dataset.stuck} : null;
        """)

    def audit_rows(self):
        return self.js("return [...document.querySelectorAll('#audit tbody tr')].map(r => r.textContent);") or []

    def open_transaction(self, gid, status=None):
        self.driver.get(f"{self.args.url}/ui/#/transactions/{urllib.parse.quote(gid, safe='')}")
        self.wait_until(f"the page of {gid}" + (f" with status {status!r}" if status else ""),
                        lambda: (s := self.transaction_state()) and gid in s["gid"] and (status is None or s["status"] == status),
                        lambda: f"transaction view {self.transaction_state()!r}")

    def no_error(self):
        error = self.error_text()
        if error:
            raise StepFailed(f"expected no error shown; the console's error area says {error!r}")

    def screenshot(self, name):
        self.shots += 1
        path = os.path.join(self.args.screenshots, f"{self.shots:02d}-{name}.png")
        self.driver.save_screenshot(path)

    # ---- the steps ------------------------------------------------------------------

    def run(self):
        a = self.args
        self.step_name = "1 token: a wrong token is refused"
        self.driver.get(a.url + "/ui/")
        self.wait_until("the token form", lambda: self.driver.find_element(By.ID, "token-form").is_displayed(),
                        lambda: f"no token form (hash {self.hash()!r}, page: {self.driver.find_element(By.ID, 'page').text[:200]!r})")
        self.element("token-input").send_keys("wrong-" + a.token)
        self.click("token-submit")
        self.wait_until("token-error saying the token was refused",
                        lambda: "refused" in self.driver.find_element(By.ID, "token-error").text,
                        lambda: f"token-error {self.driver.find_element(By.ID, 'token-error').text!r}")
        if self.driver.find_elements(By.ID, "transactions"):
            raise StepFailed("expected no transactions table after a refused token; saw one")
        self.screenshot("token-refused")

        self.step_name = "2 list: the right token shows the transactions"
        token_input = self.element("token-input")
        token_input.clear()
        token_input.send_keys(a.token)
        self.click("token-submit")
        gids = [a.committed, a.aborted, a.stuck, a.open]
        self.wait_until(f"the list showing {gids}", lambda: set(gids) <= set(self.listed()),
                        lambda: f"listed {self.listed()}, token form shown: {self.driver.find_element(By.ID, 'token-form').is_displayed()}")
        expectations = [(a.committed, "status 'committed'", lambda r: r["status"] == "committed"),
                        (a.aborted, "status 'aborted'", lambda r: r["status"] == "aborted"),
                        (a.stuck, "a stuck badge", lambda r: r["stuck"])]
        for gid, what, check in expectations:
            self.wait_until(f"the row of {gid} with {what}", lambda: (r := self.row(gid)) and check(r),
                            lambda: f"row {self.row(gid)!r}")
        self.wait_until("count-stuck >= 1", lambda: self.driver.find_element(By.ID, "count-stuck").text.isdigit()
                        and int(self.driver.find_element(By.ID, "count-stuck").text) >= 1,
                        lambda: f"count-stuck {self.driver.find_element(By.ID, 'count-stuck').text!r}")
        before = self.driver.find_element(By.ID, "last-refresh").text
        self.wait_until(f"last-refresh to change from {before!r} by itself", timeout=5,
                        check=lambda: self.driver.find_element(By.ID, "last-refresh").text != before,
                        seen=lambda: f"last-refresh {self.driver.find_element(By.ID, 'last-refresh').text!r}")
        self.no_error()
        self.screenshot("list")

        self.step_name = "3 filter: status committed, then stuck"
        Select(self.element("filter-status")).select_by_value("committed")
        self.wait_until(f"{a.committed} listed without {a.aborted} and {a.stuck}",
                        lambda: a.committed in (l := self.listed()) and a.aborted not in l and a.stuck not in l,
                        lambda: f"listed {self.listed()}")
        if "status=committed" not in self.hash():
            raise StepFailed(f"expected the URL hash to carry status=committed; saw {self.hash()!r}")
        self.no_error()
        self.screenshot("filter-committed")
        Select(self.element("filter-status")).select_by_value("stuck")
        others = [a.committed, a.aborted, a.open]
        self.wait_until(f"only {a.stuck} listed among the four",
                        lambda: a.stuck in (l := self.listed()) and not any(g in l for g in others),
                        lambda: f"listed {self.listed()}")
        if "status=stuck" not in self.hash():
            raise StepFailed(f"expected the URL hash to carry status=stuck; saw {self.hash()!r}")
        self.no_error()
        self.screenshot("filter-stuck")

        self.step_name = "4 diagram of the committed transaction"
        Select(self.element("filter-status")).select_by_value("")
        self.wait_until(f"{a.committed} listed again", lambda: a.committed in self.listed(), lambda: f"listed {self.listed()}")

        def click_link():
            link = self.js("""
                const row = [...document.querySelectorAll('#transactions tr[data-gid]')].find(r => r.dataset.gid === arguments[0]);
                return row && row.querySelector('a');""", a.committed)
            if not link:
                return False
            link.click()
            return True
        self.wait_until(f"a link to {a.committed} to click", click_link, lambda: f"listed {self.listed()}")
        self.wait_until(f"the page of {a.committed}", lambda: (s := self.transaction_state()) and s["status"] == "committed",
                        lambda: f"transaction view {self.transaction_state()!r}, hash {self.hash()!r}")

        def diagram():
            return self.js("""
                const d = document.querySelector('svg#diagram');
                return d && {arrows: d.querySelectorAll('.arrow').length, logs: d.querySelectorAll('.forced-log').length,
                             lanes: d.querySelectorAll('.lane-head').length};""")
        self.wait_until("a diagram with 8 arrows, at least one forced-log marker and 3 lanes",
                        lambda: (d := diagram()) and d["arrows"] == 8 and d["logs"] >= 1 and d["lanes"] == 3,
                        lambda: f"diagram {diagram()!r}")
        self.no_error()
        self.js("document.getElementById('diagram').scrollIntoView({block: 'center'});")
        self.screenshot("committed-diagram")

        self.step_name = "5 an operator aborts the open transaction"
        operator = self.element("operator")
        operator.clear()
        operator.send_keys("browser-test")
        self.open_transaction(a.open, "active")
        self.click("action-abort")
        self.element("action-form", "the action form")
        submit = self.element("action-submit")
        if submit.is_enabled():
            raise StepFailed("expected action-submit to be disabled while the reason is empty; it is enabled")
        reason = "browser test: operator abort"
        self.element("action-reason").send_keys(reason)
        self.wait_until("action-submit enabled once a reason is typed",
                        lambda: self.driver.find_element(By.ID, "action-submit").is_enabled(), lambda: "still disabled")
        self.screenshot("open-abort-form")
        self.click("action-submit")
        self.wait_until("the transaction aborted", lambda: (s := self.transaction_state()) and s["status"] == "aborted",
                        lambda: f"transaction view {self.transaction_state()!r}")
        self.wait_until(f"an audit row with {reason!r}, 'abort' and the operator's name",
                        lambda: any(reason in r and "abort" in r and "browser-test" in r for r in self.audit_rows()),
                        lambda: f"audit rows {self.audit_rows()!r}")
        self.no_error()
        self.screenshot("open-aborted")

        self.step_name = "6 resolve the stuck transaction's branch 1 by hand"
        self.open_transaction(a.stuck, "committing")
        self.wait_until("the transaction shown stuck, with a reason",
                        lambda: self.transaction_state()["stuck"] == "true"
                        and self.driver.find_element(By.ID, "stuck-reason").text.strip() != "",
                        lambda: f"transaction view {self.transaction_state()!r}")
        self.click("action-resolve-1")
        self.element("action-form", "the action form")
        Select(self.element("action-outcome")).select_by_value("committed")
        reason = "browser test: fixed b by hand"
        self.element("action-reason").send_keys(reason)
        self.screenshot("stuck-resolve-form")
        self.click("action-submit")
        self.wait_until("the transaction committed", lambda: (s := self.transaction_state()) and s["status"] == "committed",
                        lambda: f"transaction view {self.transaction_state()!r}")
        self.wait_until(f"an audit row with {reason!r}", lambda: any(reason in r for r in self.audit_rows()),
                        lambda: f"audit rows {self.audit_rows()!r}")
        self.no_error()
        self.screenshot("stuck-resolved")

        self.step_name = "7 participants"
        self.driver.get(a.url + "/ui/#/participants")
        names = [n for n in a.participants.split(",") if n]

        def rows():
            return self.js("return [...document.querySelectorAll('#participants tr[data-name]')].map(r => r.dataset.name);") or []
        self.wait_until(f"a row for each of {names}", lambda: set(names) <= set(rows()), lambda: f"rows {rows()}")
        self.no_error()
        self.screenshot("participants")


def main():
    parser = argparse.ArgumentParser(description="Browser test of dtxd's web console.")
    parser.add_argument("--url", required=True, help="dtxd's base URL, e.g. http://127.0.0.1:7070")
    parser.add_argument("--token", required=True)
    parser.add_argument("--screenshots", required=True, help="directory for the screenshots")
    for name in ("committed", "aborted", "stuck", "open"):
        parser.add_argument(f"--{name}", required=True, metavar="GID")
    parser.add_argument("--participants", required=True, help="comma-separated participant names")
    args = parser.parse_args()
    args.url = args.url.rstrip("/")
    os.makedirs(args.screenshots, exist_ok=True)
    print(f"screenshots in {args.screenshots}", flush=True)

    for path in (CHROMIUM, CHROMEDRIVER):
        if not os.path.exists(path):
            print(f"console test cannot start: {path} is missing (apt-get install chromium chromium-driver)", flush=True)
            return 1
    options = Options()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1000"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = None
    test = None
    try:
        driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
        test = ConsoleTest(driver, args)
        test.run()
        print(f"console test passed; screenshots in {args.screenshots}", flush=True)
        return 0
    except (StepFailed, WebDriverException, AssertionError) as failure:
        step = test.step_name if test else "starting the browser"
        message = failure.msg if isinstance(failure, WebDriverException) else str(failure)
        print(f"console test FAILED at step {step}: {message}", flush=True)
        if driver:
            try:
                print(f"  page: {driver.current_url}", flush=True)
                driver.save_screenshot(os.path.join(args.screenshots, "failure.png"))
                with open(os.path.join(args.screenshots, "failure.html"), "w", encoding="utf-8") as f:
                    f.write(driver.page_source)
                print(f"  saved failure.png and failure.html in {args.screenshots}", flush=True)
                for entry in driver.get_log("browser"):
                    if entry.get("level") == "SEVERE":
                        print(f"  browser console: {entry.get('message')}", flush=True)
            except WebDriverException as e:
                print(f"  (could not save the page: {e.msg})", flush=True)
        return 1
    finally:
        if driver:
            driver.quit()


if __name__ == "__main__":
    sys.exit(main())
