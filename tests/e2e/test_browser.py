"""The status pages in a real headless Chromium (Debian's `chromium` and `chromium-driver`,
driven by Selenium), against real Mosquitto, sandbox and adapter processes.

Selenium never fetches a browser or a driver here: both paths are given, and Selenium
Manager is told to stay offline. Without /usr/bin/chromium and /usr/bin/chromedriver the
module is skipped (`.ci/run` installs them). Every test saves screenshots in its tmp_path.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote

import paho.mqtt.client as mqtt
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from paho.mqtt.enums import CallbackAPIVersion

from adapter.web import add_status_page
from sepl_dev.broker import Broker, free_port
from sepl_dev.stack import SandboxProcess
from tests.peers import FakeTasmota, events_of, http_json, publish
from tests.processes import REPO, AdapterProcess, wait_until

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
    pytest.skip(
        f"browser tests need {CHROMIUM} and {CHROMEDRIVER} (apt-get install chromium "
        "chromium-driver; .ci/run installs them)",
        allow_module_level=True,
    )
pytest.importorskip("selenium", reason="browser tests need selenium (the dev extra)")

# Selenium Manager would download a browser or driver it cannot find: never.
os.environ.setdefault("SE_OFFLINE", "true")
os.environ.setdefault("SE_AVOID_STATS", "true")

from selenium import webdriver  # noqa: E402
from selenium.common.exceptions import TimeoutException  # noqa: E402
from selenium.webdriver import ActionChains, Keys  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.remote.webelement import WebElement  # noqa: E402
from selenium.webdriver.support.ui import Select, WebDriverWait  # noqa: E402

pytestmark = pytest.mark.slow

T = TypeVar("T")
TOKEN = "s3cret-t0ken/with+odd=chars"
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1280,900",
)


def sensor(power: float, voltage: float = 230.0) -> str:
    return json.dumps(
        {"Time": "2024-05-01T12:00:00", "ENERGY": {"Power": power, "Voltage": voltage}}
    )


# --- fixtures ----------------------------------------------------------------------------


class Browser:
    """A Chromium driven by chromedriver, with helpers that fail with what the page logged."""

    def __init__(self, profile: Path, shots: Path) -> None:
        options = webdriver.ChromeOptions()
        options.binary_location = str(CHROMIUM)
        for flag in CHROMIUM_FLAGS:
            options.add_argument(flag)
        options.add_argument(f"--user-data-dir={profile}")
        options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
        service = Service(
            executable_path=str(CHROMEDRIVER), log_output=str(shots / "chromedriver.log")
        )
        self.driver = webdriver.Chrome(service=service, options=options)
        self.shots = shots
        self.console: list[dict[str, Any]] = []

    def get(self, url: str) -> None:
        self.driver.get(url)

    def css(self, selector: str) -> list[WebElement]:
        return self.driver.find_elements(By.CSS_SELECTOR, selector)

    def one(self, selector: str) -> WebElement:
        return self.driver.find_element(By.CSS_SELECTOR, selector)

    def logs(self) -> list[dict[str, Any]]:
        entries: list[dict[str, Any]] = self.driver.get_log("browser")  # type: ignore[no-untyped-call]
        self.console.extend(entries)
        return self.console

    def errors(self, allowed: tuple[str, ...] = ()) -> list[str]:
        return [
            str(entry["message"])
            for entry in self.logs()
            if entry["level"] == "SEVERE" and not any(a in entry["message"] for a in allowed)
        ]

    def wait(self, condition: Callable[[], T], what: str, timeout: float = 15) -> T:
        try:
            result: T = WebDriverWait(self.driver, timeout, poll_frequency=0.1).until(
                lambda _: condition()
            )
        except TimeoutException:
            self.screenshot("failure")
            console = "\n".join(str(e["message"]) for e in self.logs())
            raise AssertionError(
                f"timed out after {timeout} s waiting for {what} on {self.driver.current_url}\n"
                f"--- browser console ---\n{console}"
            ) from None
        return result

    def text(self, selector: str) -> str:
        found = self.css(selector)
        return found[0].text if found else ""

    def screenshot(self, name: str, width: int = 1280) -> Path:
        """The whole page at `width` CSS pixels, as tmp_path/screenshots/<name>.png."""
        height = self.driver.execute_script(
            "return Math.max(document.documentElement.scrollHeight, 600)"
        )
        self.driver.set_window_size(width, min(int(height) + 120, 6000))
        path = self.shots / f"{name}.png"
        self.driver.save_screenshot(str(path))
        return path

    def quit(self) -> None:
        self.driver.quit()


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Browser]:
    shots = tmp_path / "screenshots"
    shots.mkdir()
    b = Browser(tmp_path / "chromium-profile", shots)
    try:
        yield b
    finally:
        b.quit()


def start_adapter(
    broker: Broker, sandbox: SandboxProcess, tmp_path: Path, env: dict[str, str]
) -> AdapterProcess:
    process = AdapterProcess(
        mqtt_port=broker.port,
        connector_url=sandbox.ws_url,
        state_dir=tmp_path / "adapter-state",
        log_path=tmp_path / "adapter.log",
        env=env,
    )
    process.start()
    process.wait_for_log("local API on", 10)
    return process


@pytest.fixture
def api(broker: Broker, sandbox: SandboxProcess, tmp_path: Path) -> Iterator[str]:
    """The adapter with its local API on a free loopback port, no token; yields its URL."""
    port = free_port()
    process = start_adapter(broker, sandbox, tmp_path, {"ADAPTER_HTTP": f"127.0.0.1:{port}"})
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        process.stop()


def publish_devices(broker: Broker, sandbox: SandboxProcess, readings: dict[str, float]) -> None:
    for topic, power in readings.items():
        publish(broker.port, f"tele/{topic}/SENSOR", sensor(power))
    for topic in readings:
        wait_until(partial(events_of, sandbox, f"tasmota:{topic}"), 15, f"{topic}'s event")


def fetch(url: str, headers: dict[str, str] | None = None) -> tuple[int, str, bytes]:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return answer.status, answer.headers.get("Content-Type", ""), answer.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers.get("Content-Type", ""), exc.read()


# --- the adapter's page ------------------------------------------------------------------


def test_overview_and_devices_show_the_published_devices(
    broker: Broker, sandbox: SandboxProcess, api: str, browser: Browser
) -> None:
    publish_devices(broker, sandbox, {"kitchen": 42.5, "desk": 7.25})
    publish(broker.port, "stat/kitchen/RESULT", '{"Time": "2024-05-01T12:00:00"}')  # unmapped

    browser.get(f"{api}/")
    browser.wait(
        lambda: len(browser.css("#overview-devices li[data-uri]")) == 2, "both devices listed"
    )
    listed = [li.get_attribute("data-uri") for li in browser.css("#overview-devices li")]
    assert listed == ["tasmota:desk", "tasmota:kitchen"]
    assert browser.text("#card-mqtt [data-field=state]") == "connected"
    assert browser.text("#card-platform [data-field=state]") == "connected"
    browser.wait(
        lambda: browser.text("#card-outbox [data-field=state]") == "0 waiting",
        "the outbox to be empty",
    )
    assert "up to date" in browser.text("#card-outbox [data-field=detail]")
    browser.wait(lambda: "stat/kitchen/RESULT" in browser.text("#unmapped"), "the unmapped topic")
    assert browser.driver.title.startswith("Overview")
    browser.screenshot("overview")
    browser.driver.execute_cdp_cmd(
        "Emulation.setEmulatedMedia",
        {"features": [{"name": "prefers-color-scheme", "value": "dark"}]},
    )
    background = browser.driver.execute_script(
        "return getComputedStyle(document.body).backgroundColor"
    )
    assert background == "rgb(13, 17, 23)"  # the dark scheme
    browser.screenshot("overview-dark")
    browser.driver.execute_cdp_cmd("Emulation.setEmulatedMedia", {"features": []})

    # The devices table, then the filter.
    browser.one('a[data-nav="devices"]').click()
    browser.wait(lambda: len(browser.css("#devices tr[data-uri]")) == 2, "the devices table")
    row = browser.one('#devices tr[data-uri="tasmota:kitchen"]')
    cells = [td.text for td in row.find_elements(By.TAG_NAME, "td")]
    assert cells[0] == "Tasmota kitchen" and cells[1] == "tasmota:kitchen"
    assert cells[2] == "tasmota" and "42.5 W" in cells[6] and "power (primary)" in cells[6]
    assert browser.one('a[data-nav="devices"]').get_attribute("aria-current") == "page"
    browser.one("#device-filter").send_keys("desk")
    browser.wait(lambda: len(browser.css("#devices tr[data-uri]")) == 1, "the filter")
    assert browser.css("#devices tr[data-uri]")[0].get_attribute("data-uri") == "tasmota:desk"
    assert browser.text("#device-count") == "1 of 2 devices"
    browser.screenshot("devices-filtered")

    # Readable on a phone: nothing wider than the screen.
    browser.one("#device-filter").clear()
    browser.driver.set_window_size(390, 844)
    browser.get(f"{api}/#/devices")
    browser.wait(lambda: len(browser.css("#devices tr[data-uri]")) == 2, "the table on a phone")
    overflow = browser.driver.execute_script(
        "return document.documentElement.scrollWidth - window.innerWidth"
    )
    assert overflow <= 0, f"the page is {overflow} px wider than a phone screen"
    browser.screenshot("devices-phone", width=390)
    assert browser.errors() == []


def chart_points(browser: Browser) -> list[dict[str, Any]]:
    return [
        {
            "time_stamp": p.get_attribute("data-time-stamp"),
            "result": float(p.get_attribute("data-result") or "nan"),
            "data_points": int(p.get_attribute("data-data-points") or "-1"),
        }
        for p in browser.css("#chart svg.chart .point")
    ]


def test_device_page_chart_matches_the_average_endpoint(
    broker: Broker, sandbox: SandboxProcess, api: str, browser: Browser
) -> None:
    for power, voltage in ((100.0, 229.0), (250.5, 231.5), (80.25, 230.0), (1200.0, 228.0)):
        publish(broker.port, "tele/plug1/SENSOR", sensor(power, voltage))
        time.sleep(1.05)  # a bucket per second: several points
    wait_until(lambda: len(events_of(sandbox, "tasmota:plug1")) == 4, 15, "the 4 events")

    def expected(query: str) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = http_json(f"{api}/devices/tasmota%3Aplug1/average?{query}")
        return rows

    browser.get(f"{api}/#/device/{quote('tasmota:plug1')}?window=1h&granularity=second")
    want = expected("time_window=1h&granularity=second")
    assert len(want) >= 2
    browser.wait(lambda: len(chart_points(browser)) == len(want), "the chart's points")
    assert chart_points(browser) == want
    assert browser.one("#chart svg.chart").get_attribute("role") == "img"
    assert browser.one("#chart-measurement").get_attribute("value") == "power"
    assert browser.text("#device-title") == "Tasmota plug1"
    # Every reading with its unit and age, and the commands the device accepts.
    power_text = browser.one('#device-readings li[data-reading="power"]').text
    assert "power (primary)" in power_text and " W" in power_text
    assert "ago" in power_text or "just now" in power_text
    assert "on, off, toggle" in browser.text("#device-facts")
    assert len(browser.css("#chart svg.chart path.line")) == 1
    browser.screenshot("device-chart")

    # Another reading, and bars for the whole window.
    Select(browser.one("#chart-measurement")).select_by_value("voltage")
    want = expected("time_window=1h&granularity=second&measurement=voltage")
    browser.wait(lambda: chart_points(browser) == want, "the voltage chart")
    Select(browser.one("#chart-granularity")).select_by_value("all")
    Select(browser.one("#chart-kind")).select_by_value("bar")
    want = expected("time_window=1h&granularity=all&measurement=voltage")
    assert len(want) == 1 and want[0]["data_points"] == 4
    browser.wait(
        lambda: chart_points(browser) == want and browser.css("#chart rect.point"),
        "one bar for the whole window",
    )
    # The settings are in the address, so the view can be shared or reloaded.
    assert "measurement=voltage" in browser.driver.current_url
    assert "granularity=all" in browser.driver.current_url
    browser.screenshot("device-bars")

    # On a phone the chart is redrawn to the screen's width.
    browser.driver.set_window_size(390, 844)
    browser.wait(
        lambda: int(browser.one("#chart svg.chart").get_attribute("width") or 0) < 390,
        "the chart redrawn for a phone",
    )
    overflow = browser.driver.execute_script(
        "return document.documentElement.scrollWidth - window.innerWidth"
    )
    assert overflow <= 0, f"the page is {overflow} px wider than a phone screen"
    assert chart_points(browser) == want
    browser.screenshot("device-phone", width=390)
    assert browser.errors() == []


def test_explain_form_shows_the_matching_rule(api: str, browser: Browser) -> None:
    # With the keyboard only: skip link, Overview, Devices, Explain; Enter; the view's
    # heading takes the focus, the next Tab reaches the topic field.
    browser.get(f"{api}/")
    browser.wait(lambda: browser.css("#overview-devices li"), "the overview")
    keys = ActionChains(browser.driver)
    keys.send_keys(Keys.TAB * 4).perform()
    assert browser.driver.switch_to.active_element.text == "Explain"
    keys.send_keys(Keys.ENTER).perform()
    browser.wait(
        lambda: browser.driver.switch_to.active_element.get_attribute("id") == "explain-title",
        "the focus on the explain heading",
    )
    keys.send_keys(Keys.TAB, "tele/kitchen/SENSOR", Keys.TAB, sensor(12.5)).perform()
    topic = browser.one("#explain-topic")
    assert topic.get_attribute("value") == "tele/kitchen/SENSOR"
    assert json.loads(browser.one("#explain-payload").get_attribute("value") or "")
    keys.send_keys(Keys.TAB, Keys.ENTER).perform()  # the Explain button
    browser.wait(
        lambda: browser.one("#explain-result").get_attribute("data-outcome") == "event",
        "the explanation",
    )
    assert "tasmota-sensor" in browser.text("#explain-rule")
    assert "tasmota.yaml" in browser.text("#explain-rule")
    assert "tasmota:kitchen" in browser.text("#explain-device")
    assert "12.5" in browser.text("#explain-readings")
    assert "power (primary)" in browser.text("#explain-readings")
    assert "takes this message" in browser.text("#explain-outcome")
    browser.screenshot("explain-event")

    # A topic no rule takes says why.
    topic.clear()
    topic.send_keys("garage/door/state")
    browser.one("#explain-form button[type=submit]").click()
    browser.wait(
        lambda: browser.one("#explain-result").get_attribute("data-outcome") == "unmapped",
        "the unmapped explanation",
    )
    assert browser.text("#explain-outcome") == "No rule takes this message"
    browser.screenshot("explain-unmapped")
    assert browser.errors() == []


# --- the sandbox's page ------------------------------------------------------------------


class Subscriber:
    """A plain paho client on a topic filter, recording what arrives."""

    def __init__(self, port: int, topic_filter: str) -> None:
        self.seen: list[tuple[str, bytes]] = []
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="test-cmnd-watcher")
        self.client.on_message = lambda c, u, m: self.seen.append((m.topic, bytes(m.payload)))
        subscribed: list[int] = []
        self.client.on_subscribe = lambda c, u, mid, codes, props: subscribed.append(mid)
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        self.client.subscribe(topic_filter, qos=1)
        wait_until(lambda: subscribed, 5, "the subscription")

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def test_sandbox_page_sends_a_command_that_reaches_mqtt(
    broker: Broker, sandbox: SandboxProcess, api: str, browser: Browser
) -> None:
    publish_devices(broker, sandbox, {"desk": 15.0})
    watcher = Subscriber(broker.port, "cmnd/#")
    device = FakeTasmota(broker.port, "desk")  # answers POWER like Tasmota
    try:
        browser.get(f"{sandbox.url}/")
        browser.wait(
            lambda: browser.css('#command-device option[value="tasmota:desk"]'),
            "the attached device in the command form",
        )
        browser.wait(lambda: browser.css('#events tr[data-device="tasmota:desk"]'), "the event")
        assert browser.css('#devices tr[data-uri="tasmota:desk"]')
        assert len(browser.css("#gateways tr[data-gateway]")) == 1
        connected = browser.one("#gateways tr[data-gateway] td:nth-child(4)")
        assert connected.text == "connected"
        Select(browser.one("#command-device")).select_by_value("tasmota:desk")
        browser.one("#command-service").send_keys("on")
        browser.one("#command-send").click()
        browser.wait(
            lambda: browser.one("#command-result").get_attribute("data-status") == "200",
            "the command's response",
        )
        wait_until(lambda: ("cmnd/desk/POWER", b"ON") in watcher.seen, 5, "the MQTT command")
    finally:
        device.close()
        watcher.close()
    assert watcher.seen == [("cmnd/desk/POWER", b"ON")]
    assert browser.text("#command-outcome") == "The device answered"
    assert json.loads(browser.text("#command-part-data")) == {"POWER": "ON"}
    answer = json.loads(browser.one("#command-answer").get_attribute("textContent") or "")
    assert answer["request"]["device_url"] == "tasmota:desk" and answer["response"]
    browser.screenshot("sandbox")
    assert browser.errors() == []


# --- what add_status_page serves, in process ---------------------------------------------


Answer = tuple[int, dict[str, str], bytes]


async def _requests(app: web.Application, *requests: tuple[str, str]) -> list[Answer]:
    answers = []
    async with TestClient(TestServer(app)) as client:
        for method, path in requests:
            answer = await client.request(method, path)
            answers.append((answer.status, dict(answer.headers), await answer.read()))
    return answers


def test_only_the_listed_files_are_served() -> None:
    app = web.Application()
    add_status_page(app, "adapter")
    outside = ("/ui/login.html", "/ui/__init__.py", "/ui/../__init__.py", "/ui/%2e%2e/web")
    page, script, *others = asyncio.run(
        _requests(app, ("GET", "/"), ("HEAD", "/ui/app.js"), *(("GET", p) for p in outside))
    )
    status, headers, body = page
    assert status == 200 and headers["Content-Type"] == "text/html; charset=utf-8"
    assert "script-src 'self'" in headers["Content-Security-Policy"]
    assert headers["X-Content-Type-Options"] == "nosniff" and b'src="ui/app.js"' in body
    status, headers, body = script
    assert status == 200 and headers["Content-Type"].startswith("text/javascript") and not body
    assert [answer[0] for answer in others] == [404] * len(outside)
    with pytest.raises(ValueError, match="adapter, sandbox"):
        add_status_page(web.Application(), "platform")


def test_the_sandbox_page_shares_its_root_with_the_websocket() -> None:
    async def websocket(request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse()
        if not ws.can_prepare(request).ok:
            return web.Response(text="connect with a websocket")
        await ws.prepare(request)
        await ws.send_str("hello")
        await ws.close()
        return ws

    async def scenario(app: web.Application) -> tuple[int, bytes, int, str]:
        async with TestClient(TestServer(app)) as client:
            page = await client.get("/")
            head = await client.head("/")
            ws = await client.ws_connect("/")
            first = await ws.receive_str()
            await ws.close()
            return page.status, await page.read(), head.status, first

    app = web.Application()
    app.router.add_get("/", websocket)
    add_status_page(app, "sandbox")
    status, body, head_status, first = asyncio.run(scenario(app))
    assert status == 200 and b"SEPL sandbox platform" in body
    assert head_status == 200 and first == "hello"


# --- the token ---------------------------------------------------------------------------


def test_non_loopback_bind_without_a_token_does_not_start(
    broker: Broker, sandbox: SandboxProcess, tmp_path: Path
) -> None:
    port = free_port()
    env = {
        **os.environ,
        "MQTT_PORT": str(broker.port),
        "CONNECTOR_URL": sandbox.ws_url,
        "ADAPTER_STATE_DIR": str(tmp_path / "adapter-state"),
        "MAPPINGS_DIR": str(REPO / "mappings"),
        "ADAPTER_HTTP": f"0.0.0.0:{port}",
    }
    env.pop("ADAPTER_HTTP_TOKEN", None)
    env.pop("ADAPTER_HTTP_TOKEN_FILE", None)
    env.pop("ADAPTER_HTTP_ALLOW_UNAUTHENTICATED", None)
    result = subprocess.run(
        [sys.executable, "-m", "adapter", "run"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2, result.stderr
    assert "ADAPTER_HTTP" in result.stderr and "ADAPTER_HTTP_TOKEN" in result.stderr
    with pytest.raises(OSError):  # nothing listens: no page, no API
        urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2)


def test_with_a_token_nothing_is_served_without_it(
    broker: Broker, sandbox: SandboxProcess, tmp_path: Path, browser: Browser
) -> None:
    port = free_port()
    process = start_adapter(
        broker,
        sandbox,
        tmp_path,
        {"ADAPTER_HTTP": f"0.0.0.0:{port}", "ADAPTER_HTTP_TOKEN": TOKEN},
    )
    try:
        url = f"http://127.0.0.1:{port}"
        publish_devices(broker, sandbox, {"kitchen": 42.5})
        bearer = {"Authorization": f"Bearer {TOKEN}"}
        for path in ("/", "/ui/app.js", "/ui/style.css", "/ui/chart.js", "/devices"):
            status, _, body = fetch(url + path)
            assert status == 401, path
            assert b"kitchen" not in body and b"Tasmota" not in body
            assert fetch(url + path, {"Authorization": "Bearer wrong"})[0] == 401
            assert fetch(url + path, bearer)[0] == 200, path
        status, content_type, body = fetch(url + "/")
        assert content_type.startswith("text/html") and b'id="login"' in body
        # The cookie the login form sets opens the page's files, never the API.
        cookie = {"Cookie": f"sepl_adapter_token={quote(TOKEN, safe='')}"}
        assert fetch(url + "/", cookie)[:2] == (200, "text/html; charset=utf-8")
        assert fetch(url + "/ui/app.js", cookie)[0] == 200
        assert fetch(url + "/devices", cookie)[0] == 401
        assert fetch(url + "/api/overview", cookie)[0] == 401
        assert fetch(url + "/", {"Cookie": "sepl_adapter_token=wrong"})[0] == 401

        # In the browser: the login form, a wrong token, the right one, then the page.
        browser.get(f"{url}/")
        field = browser.wait(lambda: browser.one("#token"), "the login form")
        assert browser.driver.switch_to.active_element == field
        browser.screenshot("login")
        field.send_keys("wrong")
        browser.one("#login button").click()
        browser.wait(lambda: "not accepted" in browser.text("#message"), "the refusal")
        field.clear()
        field.send_keys(TOKEN)
        browser.one("#login button").click()
        browser.wait(
            lambda: browser.css('#overview-devices li[data-uri="tasmota:kitchen"]'),
            "the overview behind the token",
        )
        assert browser.text("#card-platform [data-field=state]") == "connected"
        assert browser.one("#forget-token").is_displayed()
        assert browser.one("#token-panel").get_attribute("hidden") is not None
        browser.screenshot("overview-with-token")
        # Forgetting the token shows the login form again.
        browser.one("#forget-token").click()
        browser.wait(lambda: browser.css("#login #token"), "the login form after forgetting")
        assert browser.driver.execute_script("return sessionStorage.length") == 0
        assert "sepl_adapter_token" not in browser.driver.execute_script("return document.cookie")
    finally:
        process.stop()
    # The only errors are the refused requests of the login above.
    assert browser.errors(allowed=("401",)) == []
    assert TOKEN not in process.log_text()
