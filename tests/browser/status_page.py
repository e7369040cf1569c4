#!/usr/bin/python3
"""The status page of `ferrysync run --listen` in a real browser: Debian's chromium, headless,
driven by Selenium (python3-selenium) through Debian's chromedriver.

Run by the integration test `status_page::the_status_page_in_chromium`
(tests/integration/status_page.rs), which starts the agent with two jobs (GOOD transfers a
batch of files through a slow proxy once RELEASE is moved into its watched folder; BAD has a
wrong password) and passes their names. This script: loads the page; waits until the script
on the page is live and GOOD is idle; moves the batch into GOOD's folder; sees GOOD go running
with progress (files and bytes counting up, files in flight), then idle with outcome ok and the
batch moved; sees BAD failing with its error; opens GOOD's page and finds the batch's files
in its latest run; saves a screenshot (taken while GOOD runs); and checks that the browser
logged no error (console errors, CSP violations, failed loads). Exits 0 when all held, 1
otherwise, saying which step failed.
"""

import argparse
import os
import re
import shutil
import sys
import tempfile
import time

from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
# Flags that work on this kind of machine (no sandbox for root, no GPU, nothing fetched).
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1280,1100",
]


class Failed(Exception):
    pass


def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def wait(what, timeout, probe, every=0.1):
    """Calls probe() until it returns something true; returns that, or raises Failed."""
    deadline = time.monotonic() + timeout
    last_error = None
    while time.monotonic() < deadline:
        try:
            got = probe()
            if got:
                return got
        except StaleElementReferenceException as e:  # the page redrew meanwhile
            last_error = e
        time.sleep(every)
    raise Failed(f"not within {timeout}s: {what}" + (f" (last: {last_error})" if last_error else ""))


def job(driver, name):
    """The job's card as a dict of what the page shows (None if the page has no such card)."""
    cards = [c for c in driver.find_elements(By.CSS_SELECTOR, "article.job")
             if c.get_attribute("data-job") == name]
    if not cards:
        return None
    card = cards[0]

    def texts(css):
        return [e.text for e in card.find_elements(By.CSS_SELECTOR, css)]

    return {
        "state": card.get_attribute("data-state"),
        "outcome": card.get_attribute("data-outcome"),
        "files": texts(".progress .files"),
        "bytes": texts(".progress .bytes"),
        "rate": texts(".progress .rate"),
        "eta": texts(".progress .eta"),
        "in_flight": texts(".progress .in-flight li"),
        "progress_bars": len(card.find_elements(By.CSS_SELECTOR, ".progress progress")),
        "moved": texts(".moved"),
        "last_error": texts(".last-error span"),
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", required=True)
    ap.add_argument("--good", required=True)
    ap.add_argument("--bad", required=True)
    ap.add_argument("--release", nargs=2, metavar=("FROM", "TO"), required=True,
                    help="the batch to move into the good job's watched folder")
    ap.add_argument("--files", type=int, required=True, help="files in the batch")
    ap.add_argument("--screenshot", required=True)
    ap.add_argument("--job-screenshot", help="also save the good job's page here")
    args = ap.parse_args()

    profile = tempfile.mkdtemp(prefix="ferrysync-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in FLAGS + [f"--user-data-dir={profile}"]:
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = None
    try:
        driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
        driver.set_page_load_timeout(30)
        run(driver, args)
        return 0
    except Failed as e:
        log(f"FAILED: {e}")
        if driver is not None:
            try:
                log("page text at the failure:\n" + driver.find_element(By.TAG_NAME, "body").text)
                for entry in driver.get_log("browser"):
                    log(f"browser log: {entry}")
            except Exception as e2:  # the report is best effort
                log(f"(no page text: {e2})")
        return 1
    finally:
        if driver is not None:
            driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def run(driver, args):
    driver.get(args.url)
    log(f"loaded {driver.current_url}: {driver.title!r}")
    wait("the page's script reports live updates", 15,
         lambda: driver.find_element(By.ID, "live").text.startswith("live:"))
    wait(f"job {args.good} shown idle", 60,
         lambda: (job(driver, args.good) or {}).get("state") == "idle")
    log(f"{args.good} is idle: {job(driver, args.good)}")

    os.rename(args.release[0], args.release[1])
    log(f"moved the batch of {args.files} files into {args.good}'s folder")

    seen_done = set()
    shot = [False]

    def running_with_progress():
        j = job(driver, args.good)
        if not j or j["state"] != "running" or not j["files"]:
            return None
        m = re.fullmatch(r"(\d+) / (\d+) files", j["files"][0])
        if not m:
            raise Failed(f"progress text {j['files'][0]!r} is not 'N / M files'")
        done, total = int(m.group(1)), int(m.group(2))
        seen_done.add(done)
        if total != args.files:
            return None
        if 0 < done < total and j["in_flight"] and not shot[0]:
            driver.save_screenshot(args.screenshot)
            shot[0] = True
            log(f"screenshot while running: {args.screenshot}: {j}")
        return j if shot[0] and len(seen_done) >= 2 else None

    j = wait(f"{args.good} shown running with progress counting up", 90, running_with_progress)
    if j["progress_bars"] != 1 or not j["bytes"] or not j["rate"] or not j["eta"]:
        raise Failed(f"the running job lacks a progress bar, bytes, rate or ETA: {j}")
    if not re.fullmatch(r"[\d.]+ (B|KiB|MiB|GiB) / [\d.]+ (B|KiB|MiB|GiB)", j["bytes"][0]):
        raise Failed(f"bytes shown as {j['bytes'][0]!r}")
    log(f"{args.good} running, files done seen: {sorted(seen_done)}")

    def finished_ok():
        j = job(driver, args.good)
        return j if j and j["state"] == "idle" and j["outcome"] == "ok" else None

    j = wait(f"{args.good} shown idle again with outcome ok", 120, finished_ok)
    if not j["moved"] or not j["moved"][0].startswith(f"{args.files} up"):
        raise Failed(f"the finished run does not show {args.files} files up: {j['moved']}")
    if j["files"]:
        raise Failed(f"a finished job still shows progress: {j}")
    log(f"{args.good} finished: {j['moved'][0]}")

    def failing():
        b = job(driver, args.bad)
        return b if b and b["state"] == "failing" and b["last_error"] and b["last_error"][0] else None

    b = wait(f"{args.bad} shown failing with its error", 60, failing)
    log(f"{args.bad} failing: {b['last_error'][0]}")

    # The good job's page: its latest run lists the batch's files.
    driver.find_element(By.LINK_TEXT, args.good).click()
    wait(f"{args.good}'s page", 15, lambda: driver.current_url.endswith(f"/jobs/{args.good}"))

    def batch_listed():
        rows = driver.find_elements(By.CSS_SELECTOR, "#runs .run:first-of-type table.files tbody tr")
        return rows if len(rows) >= args.files else None

    rows = wait(f"the latest run on {args.good}'s page lists its {args.files} files", 15, batch_listed)
    uploaded = [r for r in rows if r.find_element(By.CSS_SELECTOR, "td").text == "uploaded"]
    if len(uploaded) < args.files:
        raise Failed(f"{len(uploaded)} rows say uploaded, not {args.files}")
    log(f"{args.good}'s page lists {len(rows)} files in its latest run")
    if args.job_screenshot:
        driver.save_screenshot(args.job_screenshot)
    # Stay a moment, so the page's polling runs here too before the log is read.
    wait("the job page's script reports live updates", 15,
         lambda: driver.find_element(By.ID, "live").text.startswith("live:"))
    time.sleep(2)

    errors = [e for e in driver.get_log("browser") if e.get("level") == "SEVERE"]
    if errors:
        raise Failed(f"the browser logged errors: {errors}")
    log("no errors in the browser's log")


if __name__ == "__main__":
    sys.exit(main())
