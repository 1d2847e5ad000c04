"""Installing and operating the adapter: the wheel and sdist, `--version`, `init`, the log
formats, the systemd unit and the Home Assistant add-on files (issue [9]).

The slow test builds the sdist and the wheel from a copy of the project (`python -m build`,
as a release would), installs the wheel with pip into a new virtual environment outside
the source tree, and runs the installed `sepl-adapter` there.
"""

from __future__ import annotations

import argparse
import ast
import io
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import sysconfig
import tarfile
import tomllib
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml

from adapter import cli, config, logs
from adapter.starter import CONFIG_NAME, bundled, installed_version, starter_config

REPO = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
VERSION = PYPROJECT["project"]["version"]
UNIT = REPO / "contrib" / "sepl-adapter.service"
FLEET_UNIT = REPO / "contrib" / "sepl-adapter@.service"
ADDON = REPO / "contrib" / "home-assistant"
HOME = {"HOME": "/home/u"}
MAPPING_FILES = sorted(p.name for p in (REPO / "mappings").glob("*.yaml"))
# The wheel's top-level packages: the runtime and the dev tools.
PACKAGE_ROOTS = ("adapter", "sepl_dev")
# What a build needs; the rest of the tree (tests, .venv, bench) stays out of the copy.
BUILD_INPUTS = (
    "pyproject.toml",
    "README.md",
    "CHANGELOG.md",
    *PACKAGE_ROOTS,
    "mappings",
    "mosquitto",
)


def flags(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    config.add_arguments(parser)
    return parser.parse_args(list(argv))


def uncomment(text: str) -> str:
    """Every `#key: value` line of a starter config set as written."""
    return re.sub(r"^(\s*)#([a-z0-9_]+:)", r"\1\2", text, flags=re.MULTILINE)


# --- packaging configuration


def test_every_package_directory_is_listed_in_pyproject() -> None:
    """The package list is explicit (for the bundled directories): a new package directory
    under adapter/ or sepl_dev/ must be added to it, or the wheel would miss it."""
    listed = set(PYPROJECT["tool"]["setuptools"]["packages"])
    found = {
        ".".join(init.parent.relative_to(REPO).parts)
        for root in PACKAGE_ROOTS
        for init in (REPO / root).rglob("__init__.py")
        if "__pycache__" not in init.parts
    }
    assert found <= listed, f"add to [tool.setuptools] packages: {sorted(found - listed)}"
    package_dir = PYPROJECT["tool"]["setuptools"]["package-dir"]
    assert package_dir == {
        "adapter.bundled.mappings": "mappings",
        "adapter.bundled.mosquitto": "mosquitto",
    }


def test_the_runtime_does_not_import_the_dev_tools() -> None:
    """Only the command line (the top layer) may reach sepl_dev, by import or by name."""
    reaching = []
    for path in sorted((REPO / "adapter").rglob("*.py")):
        if path == REPO / "adapter" / "cli.py":
            continue
        for node in ast.walk(ast.parse(path.read_bytes(), str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            elif isinstance(node, ast.Constant) and isinstance(node.value, str):
                names = [node.value]  # importlib.import_module("sepl_dev...")
            else:
                continue
            if any(name == "sepl_dev" or name.startswith("sepl_dev.") for name in names):
                reaching.append(f"{path.relative_to(REPO)}:{node.lineno}")
    assert not reaching, f"the runtime imports the dev tools: {reaching}"


def test_the_source_tree_uses_its_own_directories() -> None:
    assert bundled("mappings") == REPO / "mappings"
    assert bundled("mosquitto") == REPO / "mosquitto"


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    """The installed distribution's version (the wheel test checks it is pyproject's)."""
    version = installed_version()
    assert re.fullmatch(r"\d+\.\d+\.\d+\S*", version), version
    with pytest.raises(SystemExit) as info:
        cli.main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out == f"sepl-adapter {version}\n"


# --- init


def test_the_starter_config_lists_every_setting_with_its_default(tmp_path: Path) -> None:
    text = starter_config(tmp_path / "mappings", version="9.9")
    for spec in config.SPECS:
        assert f"[{spec.env}]" in text, spec.env
    assert "version 9.9" in text

    # As written: only MAPPINGS_DIR is set.
    path = tmp_path / "as-written.yaml"
    path.write_text(text, encoding="utf-8")
    settings = config.load(flags("--config", str(path)), HOME)
    assert settings.mappings_dir == tmp_path / "mappings"
    assert {env for env, source in settings.sources.items() if source == "file"} == {"MAPPINGS_DIR"}

    # Every commented setting set as written gives the defaults: the file cannot drift.
    path = tmp_path / "uncommented.yaml"
    path.write_text(uncomment(text), encoding="utf-8")
    every = config.load(flags("--config", str(path)), HOME)
    defaults = config.load(None, HOME)
    for spec in config.SPECS:
        if spec.env == "MAPPINGS_DIR":
            continue
        assert getattr(every, spec.attr) == getattr(defaults, spec.attr), spec.env
    from_file = {env for env, source in every.sources.items() if source == "file"}
    with_default = {s.env for s in config.SPECS if s.default is not None}
    assert from_file == with_default | {"MAPPINGS_DIR"}


def test_the_starter_config_quotes_what_yaml_would_misread(tmp_path: Path) -> None:
    odd = tmp_path / "a dir #1" / "yes"
    path = tmp_path / "c.yaml"
    path.write_text(starter_config(odd), encoding="utf-8")
    assert config.load(flags("--config", str(path)), HOME).mappings_dir == odd


def test_init_writes_the_config_and_the_mappings(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = tmp_path / "etc"
    assert cli.main(["init", str(target)]) == 0
    out = capsys.readouterr().out
    assert f"sepl-adapter check {target / 'mappings'}" in out
    assert f"sepl-adapter --config {target / CONFIG_NAME}" in out
    assert sorted(p.name for p in (target / "mappings").iterdir()) == MAPPING_FILES
    for name in MAPPING_FILES:
        assert (target / "mappings" / name).read_bytes() == (REPO / "mappings" / name).read_bytes()
    settings = config.load(flags("--config", str(target / CONFIG_NAME)), HOME)
    assert settings.mappings_dir == target / "mappings"


def test_init_refuses_to_overwrite_without_force(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mappings").mkdir()
    (tmp_path / "mappings" / "tasmota.yaml").write_text("# mine\n", encoding="utf-8")
    assert cli.main(["init"]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert "1 file exists already" in err and "--force" in err
    assert not (tmp_path / CONFIG_NAME).exists()  # nothing written, not even the others
    assert (tmp_path / "mappings" / "tasmota.yaml").read_text(encoding="utf-8") == "# mine\n"

    assert cli.main(["init", "--force"]) == 0
    assert (tmp_path / CONFIG_NAME).exists()
    assert (tmp_path / "mappings" / "tasmota.yaml").read_bytes() == (
        REPO / "mappings" / "tasmota.yaml"
    ).read_bytes()


# --- logs


def record(level: int = logging.WARNING, message: str = "outbox %d") -> logging.LogRecord:
    args = (3,) if "%" in message else ()
    return logging.LogRecord("adapter.outbox", level, __file__, 1, message, args, None)


def test_json_lines_carry_time_level_logger_message_and_exception() -> None:
    formatter = logs.JsonFormatter()
    line = formatter.format(record())
    document = json.loads(line)
    assert set(document) == {"time", "level", "logger", "message"}
    assert document["level"] == "WARNING" and document["logger"] == "adapter.outbox"
    assert document["message"] == "outbox 3"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", document["time"])

    try:
        raise ValueError("broken\nacross lines")
    except ValueError:
        failing = logging.LogRecord(
            "adapter", logging.ERROR, __file__, 1, "failed", (), sys.exc_info()
        )
    line = formatter.format(failing)
    assert "\n" not in line
    document = json.loads(line)
    assert document["exception"].startswith("Traceback")
    assert "ValueError: broken\nacross lines" in document["exception"]


def test_an_instance_of_a_fleet_is_named_in_every_line() -> None:
    text = logs.formatter_for("text", io.StringIO(), {}, instance="meters-1")
    assert text.format(record()).endswith(" WARNING [meters-1] adapter.outbox: outbox 3")
    document = json.loads(
        logs.formatter_for("json", io.StringIO(), {}, instance="m").format(record())
    )
    assert document["instance"] == "m"
    assert "[" not in logs.formatter_for("text", io.StringIO(), {}).format(record())


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_colour_only_on_a_terminal() -> None:
    pipe = logs.formatter_for("text", io.StringIO(), {})
    assert "\x1b" not in pipe.format(record())
    terminal = logs.formatter_for("text", FakeTerminal(), {"TERM": "xterm"})
    assert "\x1b[33mWARNING\x1b[0m adapter.outbox: outbox 3" in terminal.format(record())
    no_color = logs.formatter_for("text", FakeTerminal(), {"NO_COLOR": "1"})
    assert "\x1b" not in no_color.format(record())
    assert "\x1b" not in logs.formatter_for("json", FakeTerminal(), {}).format(record())


def test_in_the_journal_every_line_carries_its_priority(tmp_path: Path) -> None:
    with (tmp_path / "journal").open("w") as stream:
        status = os.fstat(stream.fileno())
        environ = {"JOURNAL_STREAM": f"{status.st_dev}:{status.st_ino}"}
        assert logs.journal_stream(stream, environ)
        assert not logs.journal_stream(stream, {"JOURNAL_STREAM": "1:2"})
        text = logs.formatter_for("text", stream, environ)
        assert text.format(record()) == "<4>WARNING adapter.outbox: outbox 3"  # no timestamp
        try:
            raise KeyError("x")
        except KeyError:
            failing = logging.LogRecord(
                "adapter", logging.ERROR, __file__, 1, "failed", (), sys.exc_info()
            )
        lines = text.format(failing).split("\n")
        assert len(lines) > 2 and all(line.startswith("<3>") for line in lines)
        line = logs.formatter_for("json", stream, environ).format(record(logging.DEBUG, "x"))
        assert line.startswith("<7>{") and json.loads(line[3:])["message"] == "x"


def run_python(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )


def test_setup_keeps_websockets_at_info_and_reads_logformat() -> None:
    """D3: the websockets library's DEBUG lines hold whole frames, credentials among them."""
    code = (
        "import logging\n"
        "from adapter import logs\n"
        "logs.setup('debug')\n"
        "logging.getLogger('websockets.client').debug('> TEXT credentials frame')\n"
        "logging.getLogger('adapter').debug('visible %s', 1)\n"
    )
    result = run_python(code, LOGFORMAT="json")
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert json.loads(lines[0])["message"] == "visible 1"
    assert "credentials" not in result.stderr


def _logging_child(args: list[str], env: dict[str, str]) -> subprocess.Popen[str]:
    """`python -m adapter ARGS` with its stderr (the log) readable as text lines."""
    return subprocess.Popen(
        [sys.executable, "-m", "adapter", *args],
        cwd=REPO,
        env=env,
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
    )


@pytest.mark.parametrize(
    "how",
    [
        "environment",
        "flag",
    ],
)
def test_the_adapter_logs_json_lines_when_asked(
    tmp_path: Path, free_port: Callable[[], int], how: str
) -> None:
    """The real wiring: `sepl-adapter run` with LOGFORMAT=json (or --logformat json)
    writes JSON lines to stderr (a pipe here: no colour), then stops on SIGTERM."""
    (tmp_path / "maps").mkdir()
    env = {
        **{k: v for k, v in os.environ.items() if k != "LOGFORMAT"},
        "MQTT_PORT": str(free_port()),  # nothing listens: the adapter keeps trying
        "MQTT_TLS": "true",
        "MQTT_TLS_INSECURE": "true",
        "CONNECTOR_URL": f"ws://127.0.0.1:{free_port()}/",
        "MAPPINGS_DIR": str(tmp_path / "maps"),
        "ADAPTER_STATE_DIR": str(tmp_path / "state"),
        "ADAPTER_HTTP": "off",
        "DISCOVERY_TASMOTA": "off",
        "DISCOVERY_HOMEASSISTANT": "off",
    }
    if how == "environment":
        env["LOGFORMAT"] = "json"
    process = _logging_child(["--logformat", "json"] if how == "flag" else [], env)
    try:
        assert process.stderr is not None
        documents = []
        # Until the MQTT link tried to connect: its task starts after the signal handler's.
        for line in process.stderr:
            assert "\x1b" not in line
            documents.append(json.loads(line))
            if documents[-1]["logger"] == "adapter.mqtt":
                break
        messages = [d["message"] for d in documents]
        assert any("MQTT_TLS_INSECURE" in m for m in messages), messages
        assert any("no mapping rules" in m for m in messages), messages
        assert all(d["logger"].startswith("adapter") for d in documents), documents
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=20)
        rest = [json.loads(line) for line in process.stderr.read().splitlines()]
        assert process.returncode == 0, rest
        assert "received SIGTERM; stopping" in [d["message"] for d in rest]
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_the_sandbox_logs_json_lines_when_asked(
    tmp_path: Path, free_port: Callable[[], int]
) -> None:
    """The sandbox takes the adapter's log set-up: LOGFORMAT=json gives JSON lines."""
    listen = ["--listen", f"127.0.0.1:{free_port()}", "--state-dir", str(tmp_path / "sandbox")]
    process = _logging_child(["sandbox", *listen], {**os.environ, "LOGFORMAT": "json"})
    try:
        assert process.stderr is not None
        first = json.loads(process.stderr.readline())
        assert first["logger"].startswith("adapter.sandbox") and first["level"] == "INFO"
        assert "\x1b" not in first["message"]
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


# --- the wheel, installed outside the source tree


def _pip(python: Path, *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(python), "-m", "pip", "--disable-pip-version-check", "-q", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _new_venv(path: Path) -> Path:
    subprocess.run([sys.executable, "-m", "venv", str(path)], check=True, timeout=120)
    return path / "bin" / "python"


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Path]]:
    """(sdist, wheel) built by `python -m build` from a copy of the project: the sdist
    first, then the wheel from the unpacked sdist, as a release build does."""
    root = tmp_path_factory.mktemp("build")
    source = root / "source"
    source.mkdir()
    for name in BUILD_INPUTS:
        origin = REPO / name
        if origin.is_dir():
            shutil.copytree(origin, source / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(origin, source / name)
    python = _new_venv(root / "tools")
    installed = _pip(python, "install", "build")
    if installed.returncode != 0:
        pytest.fail(f"pip install build failed (is PyPI reachable?):\n{installed.stderr}")
    dist = root / "dist"
    result = subprocess.run(
        [str(python), "-m", "build", "--outdir", str(dist), str(source)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    sdists = list(dist.glob("*.tar.gz"))
    wheels = list(dist.glob("*.whl"))
    assert len(sdists) == 1 and len(wheels) == 1, list(dist.iterdir())
    yield sdists[0], wheels[0]


@pytest.mark.slow
def test_the_wheel_and_the_sdist_carry_the_bundled_files(built: tuple[Path, Path]) -> None:
    sdist, wheel = built
    assert wheel.name == f"sepl_mqtt_adapter-{VERSION}-py3-none-any.whl"
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
        assert "sepl-adapter = adapter.cli:main" in archive.read(entry_points).decode()
    for name in MAPPING_FILES:
        assert f"adapter/bundled/mappings/{name}" in names
    for name in ("mosquitto.conf", "secure.conf", "README.md"):
        assert f"adapter/bundled/mosquitto/{name}" in names
    for name in (
        "adapter/starter.py",
        "adapter/migrations.py",
        "adapter/logs.py",
        "sepl_dev/simulate.py",
    ):
        assert name in names
    assert "adapter/web/adapter/index.html" in names
    assert not any(n.startswith(("tests/", "mappings/", "mosquitto/")) for n in names)

    with tarfile.open(sdist) as archive:
        members = {m.name.split("/", 1)[1] for m in archive.getmembers() if "/" in m.name}
    for name in MAPPING_FILES:
        assert f"mappings/{name}" in members
    assert {"mosquitto/mosquitto.conf", "mosquitto/secure.conf", "pyproject.toml"} <= members


@pytest.fixture(scope="module")
def installed(built: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A new venv with the wheel and its dependencies from the package index. Without the
    index, the wheel alone (--no-deps) and the dependencies of the running environment on
    the path (a .pth file), so the test still checks the package itself."""
    _, wheel = built
    venv = tmp_path_factory.mktemp("installed") / "venv"
    python = _new_venv(venv)
    result = _pip(python, "install", str(wheel))
    if result.returncode != 0:
        print(f"full install failed, falling back to --no-deps:\n{result.stderr[-2000:]}")
        fallback = _pip(python, "install", "--no-deps", str(wheel))
        assert fallback.returncode == 0, fallback.stderr
        purelib = subprocess.run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        Path(purelib, "project-dependencies.pth").write_text(
            sysconfig.get_paths()["purelib"] + "\n", encoding="utf-8"
        )
    yield venv


@pytest.mark.slow
def test_the_installed_wheel_runs_outside_the_source_tree(installed: Path, tmp_path: Path) -> None:
    work = tmp_path / "elsewhere"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(HOME=str(tmp_path / "home"), XDG_STATE_HOME=str(tmp_path / "xdg"))
    for name in list(env):
        if name.startswith(("MQTT_", "CONNECTOR_", "ADAPTER_", "MAPPINGS_", "LOG")):
            del env[name]
    command = installed / "bin" / "sepl-adapter"

    def run(*args: str, **extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(command), *args],
            cwd=work,
            env={**env, **extra},
            capture_output=True,
            text=True,
            timeout=60,
        )

    # The code and its bundled files come from the venv, not from this tree.
    where = subprocess.run(
        [
            str(installed / "bin" / "python"),
            "-c",
            "import adapter, adapter.starter as i, sepl_dev.broker as d\n"
            "print(adapter.__file__); print(i.bundled('mappings')); print(d.DEFAULT_TEMPLATE)",
        ],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout.split()
    assert len(where) == 3
    for path in where:
        assert Path(path).is_relative_to(installed), where
        assert not Path(path).is_relative_to(REPO), where
    assert where[1].endswith("adapter/bundled/mappings")
    assert Path(where[2]).is_file()

    version = run("--version")
    assert (version.returncode, version.stdout) == (0, f"sepl-adapter {VERSION}\n")

    simulate = run("simulate", "--help")  # the dev tools ship in the wheel
    assert simulate.returncode == 0 and "--devices" in simulate.stdout, simulate.stderr

    target = work / "adapter-config"
    init = run("init", str(target))
    assert init.returncode == 0, init.stderr
    assert "next:" in init.stdout
    assert sorted(p.name for p in (target / "mappings").iterdir()) == MAPPING_FILES

    check = run("check", str(target / "mappings"))
    assert check.returncode == 0, check.stdout + check.stderr
    assert "tasmota" in check.stdout

    effective = run("config", "--config", str(target / CONFIG_NAME))
    assert effective.returncode == 0, effective.stderr
    rows = {line.split()[0]: line.split()[1:] for line in effective.stdout.splitlines()}
    assert rows["MAPPINGS_DIR"] == [str(target / "mappings"), "file"]

    again = run("init", str(target))
    assert again.returncode == 1 and "--force" in again.stderr

    # An outbox of the oldest schema, upgraded by the installed code.
    state = work / "state"
    state.mkdir()
    shutil.copyfile(REPO / "tests" / "fixtures" / "outbox-v0.sqlite3", state / "outbox.sqlite3")
    letters = run("deadletters", "list", ADAPTER_STATE_DIR=str(state))
    assert letters.returncode == 0, letters.stderr
    assert "invalid JSON" in letters.stdout and "2 dead letters" in letters.stdout


# --- the systemd unit


@pytest.mark.parametrize(
    ("source", "name"), [(UNIT, UNIT.name), (FLEET_UNIT, "sepl-adapter@p0.service")]
)
def test_the_systemd_unit_verifies(tmp_path: Path, source: Path, name: str) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed (Debian: apt-get install systemd)")
    text = source.read_text(encoding="utf-8")
    # verify checks that ExecStart's program exists: point it at this tree's entry point.
    program = Path(sys.executable).parent / "sepl-adapter"
    if not program.exists():
        program = Path(sys.executable)
    unit = tmp_path / name  # a template is verified as one of its instances
    unit.write_text(text.replace("/usr/local/bin/sepl-adapter", str(program)), encoding="utf-8")
    result = subprocess.run(
        [analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60
    )
    # Unknown or misspelt keys are only warnings (exit 0): any output is a failure.
    assert (result.returncode, result.stdout + result.stderr) == (0, "")

    security = subprocess.run(
        [analyze, "security", "--offline=yes", "--no-pager", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", security.stdout)
    if match is None:  # older systemd without --offline
        pytest.skip(f"systemd-analyze security --offline unavailable: {security.stderr[:200]}")
    assert float(match.group(1)) <= 2.0, security.stdout


def test_the_systemd_unit_keeps_what_docs_promise() -> None:
    settings: dict[str, list[str]] = {}
    for line in UNIT.read_text(encoding="utf-8").splitlines():
        if "=" in line and not line.startswith("#"):
            key, _, value = line.partition("=")
            settings.setdefault(key.strip(), []).append(value.strip())
    assert settings["DynamicUser"] == ["yes"]
    assert settings["StateDirectory"] == ["sepl-adapter"]
    assert "ADAPTER_STATE_DIR=%S/sepl-adapter" in settings["Environment"]
    assert settings["Restart"] == ["on-failure"]
    assert settings["RestartPreventExitStatus"] == ["2"]
    assert settings["RestrictAddressFamilies"] == ["AF_INET AF_INET6 AF_UNIX"]
    for key in ("NoNewPrivileges", "ProtectHome", "PrivateTmp"):
        assert settings[key] == ["yes"], key
    assert settings["ProtectSystem"] == ["strict"]
    assert settings["EnvironmentFile"] == ["-/etc/sepl-adapter/sepl-adapter.env"]


def test_the_fleet_template_is_the_unit_with_a_state_and_a_name_per_instance() -> None:
    """Everything of the single unit (its hardening above all) holds for each instance;
    only what makes an instance its own differs."""
    single = [line for line in UNIT.read_text(encoding="utf-8").splitlines() if "=" in line]
    template = [line for line in FLEET_UNIT.read_text(encoding="utf-8").splitlines() if "=" in line]
    own = {
        "Description=SEPL MQTT adapter, fleet instance %i",
        "StateDirectory=sepl-adapter/%i",
        "Environment=ADAPTER_STATE_DIR=%S/sepl-adapter/%i",
        "Environment=ADAPTER_INSTANCE=%i",
        "WorkingDirectory=%S/sepl-adapter/%i",
        "EnvironmentFile=/etc/sepl-adapter/%i.env",
    }
    settings = [line for line in template if not line.startswith("#")]
    assert own <= set(settings)
    replaced = {"Description", "StateDirectory", "WorkingDirectory"}
    kept = [line for line in single if not line.startswith("#")]
    for line in kept:
        if (
            line.split("=", 1)[0] not in replaced
            and line != "Environment=ADAPTER_STATE_DIR=%S/sepl-adapter"
        ):
            assert line in settings, line


# --- the Home Assistant add-on


def test_the_add_on_options_are_settings() -> None:
    manifest = yaml.safe_load((ADDON / "config.yaml").read_text(encoding="utf-8"))
    assert manifest["version"] == VERSION
    options, schema = manifest["options"], manifest["schema"]
    assert set(options) <= set(schema)
    for key in schema:
        assert key.upper() in config.BY_ENV, key
    # The defaults of the options are valid settings (empty ones are left unset).
    environ = {**HOME, **{k.upper(): config.yaml_text(v) for k, v in options.items() if v != ""}}
    config.load(None, environ)


def test_the_add_on_files_are_there_and_parse() -> None:
    dockerfile = (ADDON / "Dockerfile").read_text(encoding="utf-8")
    assert "COPY dist/*.whl" in dockerfile and "sepl-adapter --version" in dockerfile
    build = yaml.safe_load((ADDON / "build.yaml").read_text(encoding="utf-8"))
    manifest = yaml.safe_load((ADDON / "config.yaml").read_text(encoding="utf-8"))
    assert set(build["build_from"]) == set(manifest["arch"])
    bash = shutil.which("bash")
    if bash is not None:
        subprocess.run([bash, "-n", str(ADDON / "run.sh")], check=True, timeout=30)
    assert os.access(ADDON / "run.sh", os.X_OK)
    assert "UNTESTED" in (ADDON / "config.yaml").read_text(encoding="utf-8")
