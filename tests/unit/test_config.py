"""imagebuilder.toml parsing and validation: defaults, the design's full example, exact errors."""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
import textwrap
from pathlib import Path

import pytest

from imagebuilder.config import parse as config
from imagebuilder.config.envlimits import TOTAL_MAX
from imagebuilder.config.network import StaticNetwork
from imagebuilder.config.parse import (
    AppSection,
    Config,
    Environment,
    ImageSection,
    JvmSection,
    SystemSection,
    from_jar,
    load,
    with_overrides,
)
from imagebuilder.errors import ConfigError, NotFoundError, UserError

REPO = Path(__file__).resolve().parents[2]

MINIMAL = """\
[image]
name = "hello"
version = "1.0.0"

[app]
path = "hello.jar"
"""

FULL = """\
[image]
name = "hello"
version = "1.0.0"

[app]
path = "target/hello.jar"        # what to run: an executable jar (war and native binaries later)
args = ["--server.port=8080"]    # program arguments
port = 8080                      # the port it serves; forwarded by `run`, probed by health checks
healthcheck = "/health"          # HTTP path answering 2xx when the app is up (default "/")
packages = ["fonts-dejavu-core"] # extra Debian packages the app needs at run time (with their deps)

[jvm]
version = 21                     # 21 (default) or 25
args = ["-Xmx512m"]              # JVM options

[system]
suite = "trixie"                 # Debian suite the kernel and userland come from
kernel = "debian-cloud"          # a manifest in kernels/
memory = 1024                    # MiB, for run

[environments]
order = ["test", "prod"]         # promotion order; default: the order of the [env.*] tables

[env.test]
vars = { DB_URL = "jdbc:postgresql://test-db/app" }

[env.prod]
vars = { DB_URL = "jdbc:postgresql://prod-db/app" }
"""


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A working directory holding hello/ with a (fake) hello.jar; returns hello/."""
    monkeypatch.chdir(tmp_path)
    app = tmp_path / "hello"
    app.mkdir()
    (app / "hello.jar").write_bytes(b"PK\x05\x06" + b"\0" * 18)
    return app


def write(app: Path, text: str) -> Path:
    path = app / "imagebuilder.toml"
    path.write_text(textwrap.dedent(text))
    return path


def test_minimal_file_takes_every_default(project: Path) -> None:
    write(project, MINIMAL)
    cfg = load(project)
    toml = (project / "imagebuilder.toml").absolute()
    assert cfg == Config(
        path=toml,
        root=project.absolute(),
        image=ImageSection(name="hello", version="1.0.0"),
        app=AppSection(path=project.absolute() / "hello.jar"),
        jvm=JvmSection(),
        system=SystemSection(),
        environments=(),
    )
    assert cfg.app.args == () and cfg.app.port is None and cfg.app.healthcheck == "/"
    assert cfg.app.packages == ()
    assert (cfg.jvm.version, cfg.jvm.args, cfg.jvm.fonts) == (21, (), True)
    assert cfg.system == SystemSection("trixie", "debian", 1024, None)
    assert cfg.lock_path == project.absolute() / "imagebuilder.lock"
    assert load(project / "imagebuilder.toml") == cfg
    assert load(Path("hello/imagebuilder.toml")) == cfg  # relative paths work too


def test_full_example_from_the_design(project: Path) -> None:
    (project / "target").mkdir()
    (project / "target" / "hello.jar").write_bytes(b"PK")
    write(project, FULL)
    cfg = load(project)
    assert cfg.app == AppSection(
        path=project.absolute() / "target" / "hello.jar",
        args=("--server.port=8080",),
        port=8080,
        healthcheck="/health",
        packages=("fonts-dejavu-core",),
    )
    assert cfg.app.path.is_absolute()
    assert cfg.jvm == JvmSection(version=21, args=("-Xmx512m",))
    assert cfg.system == SystemSection(suite="trixie", kernel="debian-cloud", memory=1024)
    assert cfg.environments == (
        Environment("test", {"DB_URL": "jdbc:postgresql://test-db/app"}),
        Environment("prod", {"DB_URL": "jdbc:postgresql://prod-db/app"}),
    )
    assert cfg.env("prod").vars == {"DB_URL": "jdbc:postgresql://prod-db/app"}
    assert cfg.env_names == ("test", "prod")


def test_bundled_example_parses(project: Path) -> None:
    shutil.copy(REPO / "examples" / "hello" / "imagebuilder.toml", project)
    cfg = load(project)
    assert (cfg.image.name, cfg.image.version) == ("hello", "1.0.0")
    assert (cfg.app.port, cfg.app.healthcheck) == (8080, "/health")
    assert cfg.env("test").vars == {"GREETING": "hi"}
    assert cfg.env("prod").vars == {"GREETING": "hello, production"}


def test_spec_is_frozen_and_hashable(project: Path) -> None:
    write(project, MINIMAL + '[env.test]\nvars = { A = "1" }\n')
    cfg = load(project)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.image = ImageSection("x", "1")  # type: ignore[misc]
    hash(cfg)


def test_env_order_defaults_to_table_order(project: Path) -> None:
    write(project, MINIMAL + """
[env.prod]
vars = { A = "p" }

[env.dev]

[env.staging]
vars = { A = "s" }
""")
    cfg = load(project)
    assert cfg.env_names == ("prod", "dev", "staging")
    assert cfg.env("dev").vars == {}


def test_env_order_from_environments_table(project: Path) -> None:
    write(project, MINIMAL + """
[environments]
order = ["dev", "staging", "prod"]

[env.prod]
[env.dev]
[env.staging]
""")
    assert load(project).env_names == ("dev", "staging", "prod")


def test_unknown_environment(project: Path) -> None:
    write(project, MINIMAL + "[env.test]\n[env.prod]\n")
    with pytest.raises(NotFoundError) as e:
        load(project).env("staging")
    assert str(e.value) == (
        "unknown environment 'staging' in hello/imagebuilder.toml: known: test, prod"
    )
    assert e.value.exit_code == 2


def test_unknown_environment_when_none_defined(project: Path) -> None:
    write(project, MINIMAL)
    with pytest.raises(NotFoundError) as e:
        load(project).env("prod")
    assert str(e.value) == (
        "unknown environment 'prod' in hello/imagebuilder.toml: it defines no environments;"
        ' add an [env.prod] table with vars = { KEY = "value" }'
    )


J = "hello/imagebuilder.toml"

INVALID = [
    # (toml, exact message)
    (MINIMAL.replace('path = "hello.jar"', 'path = "hello.jar"\nport = "80a"'),
     f'{J}: app.port: expected an integer 1-65535, got "80a"'),
    (MINIMAL + "port = 0\n", f"{J}: app.port: expected an integer 1-65535, got 0"),
    (MINIMAL + "port = 65536\n", f"{J}: app.port: expected an integer 1-65535, got 65536"),
    (MINIMAL + "port = true\n", f"{J}: app.port: expected an integer 1-65535, got true"),
    (MINIMAL + "prot = 8080\n", f"{J}: unknown key 'app.prot' (did you mean 'port'?)"),
    (MINIMAL + "[imagee]\n", f"{J}: unknown key 'imagee' (did you mean 'image'?)"),
    (MINIMAL + "[jvm]\nverison = 21\n",
     f"{J}: unknown key 'jvm.verison' (did you mean 'version'?)"),
    (MINIMAL + "zzz = 1\n", (f"{J}: unknown key 'app.zzz' (known: path, main, args, port,"
     " healthcheck, packages)")),
    (MINIMAL + '[env.test]\nvar = { A = "1" }\n',
     f"{J}: unknown key 'env.test.var' (did you mean 'vars'?)"),
    ('[image]\nversion = "1"\n[app]\npath = "hello.jar"\n',
     f'{J}: image.name: required key is missing: add name = "hello" under [image]'),
    ('[image]\nname = "hello"\n[app]\npath = "hello.jar"\n',
     f'{J}: image.version: required key is missing: add version = "1.0.0" under [image]'),
    ('[image]\nname = "hello"\nversion = "1"\n',
     f'{J}: app.path: required key is missing: add path = "target/app.jar" under [app]'),
    (MINIMAL.replace('"hello"', '"Hello"'),
     (f"{J}: image.name: expected lowercase letters, digits, '.', '_' or '-', starting with a"
     ' letter or digit (it becomes an OCI reference), got "Hello"')),
    (MINIMAL.replace('"hello"', '"-hello"'),
     (f"{J}: image.name: expected lowercase letters, digits, '.', '_' or '-', starting with a"
     ' letter or digit (it becomes an OCI reference), got "-hello"')),
    (MINIMAL.replace('"1.0.0"', '"1.0 beta"'),
     (f"{J}: image.version: expected at most 128 letters, digits, '.', '_' or '-', not starting"
     ' with \'.\', \'-\' or \'_\' (it becomes an OCI tag; \'_\' marks imagebuilder\'s own),'
     ' got "1.0 beta"')),
    (MINIMAL.replace('"1.0.0"', "1.0"),
     (f"{J}: image.version: expected at most 128 letters, digits, '.', '_' or '-', not starting"
     ' with \'.\', \'-\' or \'_\' (it becomes an OCI tag; \'_\' marks imagebuilder\'s own),'
     ' got 1.0 (quote it: "1.0")')),
    (MINIMAL.replace('"1.0.0"', '"_promotions"'),
     (f"{J}: image.version: expected at most 128 letters, digits, '.', '_' or '-', not starting"
     ' with \'.\', \'-\' or \'_\' (it becomes an OCI tag; \'_\' marks imagebuilder\'s own),'
     ' got'
     ' "_promotions"')),
    (MINIMAL.replace('"1.0.0"', '"' + "v" * 129 + '"'),
     (f"{J}: image.version: expected at most 128 letters, digits, '.', '_' or '-', not starting"
     ' with \'.\', \'-\' or \'_\' (it becomes an OCI tag; \'_\' marks imagebuilder\'s own),'
     f' got "{"v" * 56}...')),
    (MINIMAL.replace('"hello.jar"', '"missing.jar"'),
     "{J}: app.path: file not found: {root}/missing.jar"),
    (MINIMAL + 'main = "com.example.Main()"\n',
     f'{J}: app.main: expected a class name like "com.example.Main", got "com.example.Main()"'),
    (MINIMAL + '[jvm]\nmodules = ["java sql"]\n',
     f'{J}: jvm.modules[0]: expected a JDK module name like "java.sql", got "java sql"'),
    (MINIMAL + '[jvm]\nruntime = "all"\n',
     f'{J}: jvm.runtime: expected "minimal" (the modules the app uses) or "full" (the whole'
     ' JDK), got "all"'),
    (MINIMAL.replace('"hello.jar"', "42"),
     f"{J}: app.path: expected a path to the application, got 42"),
    (MINIMAL + 'args = "--x"\n', f'{J}: app.args: expected a list of strings, got "--x"'),
    (MINIMAL + 'args = ["--x", 3]\n', f"{J}: app.args[1]: expected a string, got 3"),
    (MINIMAL + 'healthcheck = "health"\n',
     f'{J}: app.healthcheck: expected an HTTP path starting with "/", got "health"'),
    (MINIMAL + 'packages = ["Fonts"]\n',
     f'{J}: app.packages[0]: expected a Debian package name, got "Fonts"'),
    (MINIMAL + "[jvm]\nversion = 11\n", f"{J}: jvm.version: expected 17, 21 or 25, got 11"),
    (MINIMAL + '[jvm]\nversion = "21"\n', f'{J}: jvm.version: expected 17, 21 or 25, got "21"'),
    (MINIMAL + '[jvm]\nfonts = "no"\n', f'{J}: jvm.fonts: expected true or false, got "no"'),
    (MINIMAL + "[system]\nmemory = 64\n",
     f"{J}: system.memory: expected an integer number of MiB >= 128, got 64"),
    (MINIMAL + '[system]\nmirror = "ftp://example.org/debian"\n',
     f'{J}: system.mirror: expected an http:// or https:// URL, got "ftp://example.org/debian"'),
    (MINIMAL + '[system]\nmirror = "debian"\n',
     f'{J}: system.mirror: expected an http:// or https:// URL, got "debian"'),
    (MINIMAL + '[system]\nsuite = "Trixie"\n',
     f'{J}: system.suite: expected a Debian suite like "trixie", got "Trixie"'),
    (MINIMAL + '[system]\nkernel = "../x"\n',
     f'{J}: system.kernel: expected a kernel manifest name like "debian", got "../x"'),
    ('app = "x"\n' + MINIMAL.replace("[app]\n", "[other]\n"),
     f"{J}: unknown key 'other' (known: image, app, jvm, system, environments, env)"),
    ('jvm = "x"\n' + MINIMAL, f'{J}: jvm: expected a table [jvm], got "x"'),
    (MINIMAL + "[env.Prod]\n",
     (f"{J}: env.Prod: expected an environment name of lowercase letters, digits and '-',"
     ' starting with a letter, got "Prod"')),
    (MINIMAL + '[env]\ntest = "x"\n', f'{J}: env.test: expected a table [env.test], got "x"'),
    (MINIMAL + '[env.test]\nvars = ["A=1"]\n',
     f'{J}: env.test.vars: expected a table like {{ KEY = "value" }}, got ["A=1"]'),
    (MINIMAL + "[env.test]\nvars = { PORT = 8080 }\n",
     f'{J}: env.test.vars.PORT: expected a string, got 8080 (quote it: "8080")'),
    (MINIMAL + '[env.test]\nvars = { "1X" = "a" }\n',
     (f"{J}: env.test.vars.1X: expected a variable name of letters, digits and '_', not"
     ' starting with a digit, got "1X"')),
    (MINIMAL + '[env.test]\nvars = { "A-B" = "a" }\n',
     (f"{J}: env.test.vars.A-B: expected a variable name of letters, digits and '_', not"
     ' starting with a digit, got "A-B"')),
    (MINIMAL + '[env.test]\nvars = { A = "x\\ny" }\n',
     f"{J}: env.test.vars.A: expected a one-line string, got a value containing a newline"),
    (MINIMAL + '[env.test]\nvars = { A = "x\\u0000y" }\n',
     f"{J}: env.test.vars.A: expected a string without NUL characters"),
    (MINIMAL + '[env.test]\nvars = { IMAGEBUILDER_ENV = "x" }\n',
     (f"{J}: env.test.vars.IMAGEBUILDER_ENV: names starting with IMAGEBUILDER_ are reserved for"
     " imagebuilder")),
    (MINIMAL + '[environments]\norder = ["test"]\n[env.test]\n[env.prod]\n',
     (f"{J}: environments.order: expected exactly the defined environments (test, prod);"
     " missing 'prod'")),
    (MINIMAL + '[environments]\norder = ["test", "qa"]\n[env.test]\n',
     (f"{J}: environments.order: expected exactly the defined environments (test);"
     " 'qa' not defined (add [env.qa])")),
    (MINIMAL + '[environments]\norder = ["qa"]\n[env.test]\n',
     (f"{J}: environments.order: expected exactly the defined environments (test);"
     " missing 'test'; 'qa' not defined (add [env.qa])")),
    (MINIMAL + '[environments]\norder = ["test", "test"]\n[env.test]\n',
     f"{J}: environments.order: lists 'test' more than once"),
    (MINIMAL + '[environments]\norder = "test"\n[env.test]\n',
     f'{J}: environments.order: expected a list of strings, got "test"'),
    (MINIMAL + '[system]\nhardware = ["metl"]\n',
     f"{J}: system.hardware[0]: kernel 'debian' has no driver set \"metl\" (closest: metal)"),
    (MINIMAL + '[system]\nhardware = "metal"\n',
     f'{J}: system.hardware: expected a list of strings, got "metal"'),
    (MINIMAL + '[system]\nmodules = ["../igb"]\n',
     f'{J}: system.modules[0]: expected a kernel module name like "igb", got "../igb"'),
    (MINIMAL + '[env.prod]\nnetwork = { address = "10.0.0.5" }\n',
     (f'{J}: env.prod.network.address: expected an IPv4 address with its prefix length like'
      ' "10.0.0.5/24", got "10.0.0.5"')),
    (MINIMAL + '[env.prod]\nnetwork = { address = "10.0.0.300/24" }\n',
     (f'{J}: env.prod.network.address: expected an IPv4 address with its prefix length like'
      ' "10.0.0.5/24", got "10.0.0.300/24"')),
    (MINIMAL + '[env.prod]\nnetwork = { address = "10.0.0.0/24" }\n',
     f"{J}: env.prod.network.address: 10.0.0.0/24 is the network's own or broadcast address,"
     " not a host's"),
    (MINIMAL + '[env.prod]\nnetwork = { address = "10.0.0.5/24", gateway = "10.1.0.1" }\n',
     f"{J}: env.prod.network.gateway: 10.1.0.1 is not in the card's network 10.0.0.0/24"),
    (MINIMAL + '[env.prod]\nnetwork = { address = "10.0.0.5/24", dns = "10.0.0.2" }\n',
     (f'{J}: env.prod.network.dns: expected a list of IPv4 addresses like ["10.0.0.2"], got'
      ' "10.0.0.2"')),
    (MINIMAL + '[env.prod]\nnetwork = { address = "10.0.0.5/24", dns = ["dns.example"] }\n',
     f'{J}: env.prod.network.dns[0]: expected an IPv4 address like "10.0.0.1", got "dns.example"'),
    (MINIMAL + '[env.prod]\nnetwork = { address = "10.0.0.5/24", mask = "255.255.255.0" }\n',
     f"{J}: env.prod.network.mask: unknown key (known: mac, address, gateway, dns)"),
    (MINIMAL + ('[env.prod]\nnetwork = [{ address = "10.0.0.5/24" },'
                ' { address = "10.0.1.5/24", mac = "52:54:00:00:00:01" }]\n'),
     (f"{J}: env.prod.network[0].mac: required when several cards are configured: the card's"
      ' MAC address, e.g. "52:54:00:12:34:56"')),
    (MINIMAL + '[env.prod]\nnetwork = { address = "10.0.0.5/24", mac = "52:54:00:00:01" }\n',
     f'{J}: env.prod.network.mac: expected a MAC address like "52:54:00:12:34:56", got'
     ' "52:54:00:00:01"'),
    (MINIMAL + '[env.prod]\nnetwork = { address = "10.0.0.5/0" }\n',
     f"{J}: env.prod.network.address: 10.0.0.5/0: a /0 network makes every address a"
     " neighbour (no gateway is ever used): give the subnet's prefix, e.g. /24"),
    (MINIMAL + '[env.prod]\nnetwork = { address = "0.0.0.0/32" }\n',
     f'{J}: env.prod.network.address: 0.0.0.0 is in 0.0.0.0/8 ("this network"), never a'
     " host's"),
    (MINIMAL + '[env.prod]\nnetwork = { address = "127.0.0.5/8" }\n',
     f"{J}: env.prod.network.address: 127.0.0.5 is a loopback address (127.0.0.0/8): it"
     " never leaves the machine"),
    (MINIMAL + '[env.prod]\nnetwork = { address = "224.0.0.5/24" }\n',
     f"{J}: env.prod.network.address: 224.0.0.5 is a multicast address (224.0.0.0/4),"
     " never a host's"),
    (MINIMAL + '[env.prod]\nnetwork = { address = "255.255.255.255/32" }\n',
     f"{J}: env.prod.network.address: 255.255.255.255 is reserved (240.0.0.0/4, with the"
     " broadcast address 255.255.255.255), never a host's"),
    (MINIMAL + '[env.prod]\nnetwork = { address = "10.0.0.5/24", gateway = "127.0.0.1" }\n',
     f"{J}: env.prod.network.gateway: 127.0.0.1 is a loopback address (127.0.0.0/8): it"
     " never leaves the machine"),
    (MINIMAL + ('[env.prod]\nnetwork = { address = "10.0.0.5/24",'
                ' dns = ["10.0.0.2", "0.0.0.0"] }\n'),
     f'{J}: env.prod.network.dns[1]: 0.0.0.0 is in 0.0.0.0/8 ("this network"), never a'
     " host's"),
    (MINIMAL + '[env.prod]\nnetwork = { address = "10.0.0.5/24", dns = ["127.0.0.53"] }\n',
     f"{J}: env.prod.network.dns[0]: 127.0.0.53 is a loopback address (127.0.0.0/8): it"
     " never leaves the machine"),
    (MINIMAL + '[env.prod]\nnetwork = { address = "10.0.0.5/24", dns = ["224.0.0.251"] }\n',
     f"{J}: env.prod.network.dns[0]: 224.0.0.251 is a multicast address (224.0.0.0/4),"
     " never a host's"),
    (MINIMAL + ('[env.prod]\nnetwork = { address = "10.0.0.5/24",'
                ' dns = ["10.0.0.2", "10.0.0.3", "10.0.0.4", "10.0.0.6"] }\n'),
     f"{J}: env.prod.network.dns: 4 servers given; the guest's resolver (glibc) asks at most 3"),
    (MINIMAL + '[env.prod]\nnetwork = "dhcp"\n',
     (f'{J}: env.prod.network: expected a table like {{ address = "10.0.0.5/24", gateway ='
      ' "10.0.0.1", dns = ["10.0.0.2"] } or a list of them, each with a mac')),
    (MINIMAL + "port = \n",
     f"{J}: invalid TOML: Invalid value (at line 7, column 8)"),
    (MINIMAL + MINIMAL,
     f"{J}: invalid TOML: Cannot declare ('image',) twice (at line 7, column 7)"),
    (MINIMAL + "deep = " + "[" * 5000 + "]" * 5000 + "\n",
     f"{J}: invalid TOML: arrays or tables nested too deeply"),
]


@pytest.mark.parametrize(("text", "message"), INVALID)
def test_invalid(project: Path, text: str, message: str) -> None:
    write(project, text)
    with pytest.raises(ConfigError) as e:
        load(project)
    assert str(e.value) == message.replace("{J}", J).replace("{root}", str(project.absolute()))
    assert "\n" not in str(e.value)
    assert e.value.exit_code == 2


def test_error_names_absolute_file_outside_the_working_directory(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(project, MINIMAL + "port = -1\n")
    monkeypatch.chdir("/")
    with pytest.raises(ConfigError) as e:
        load(project.absolute())
    assert str(e.value) == (
        f"{project.absolute()}/imagebuilder.toml: app.port: expected an integer 1-65535, got -1"
    )


def test_not_utf8(project: Path) -> None:
    (project / "imagebuilder.toml").write_bytes(b'[image]\nname = "\xff"\n')
    with pytest.raises(ConfigError, match=r"^hello/imagebuilder.toml: invalid TOML: .*UTF-8"):
        load(project)


def test_missing_file_in_directory(project: Path) -> None:
    with pytest.raises(ConfigError) as e:
        load(project)
    assert str(e.value) == (
        "hello/imagebuilder.toml: not found; write one (see examples/hello/imagebuilder.toml) or"
        " build a jar without one: imagebuilder build APP.jar --name N --version V"
    )


def test_missing_file(project: Path) -> None:
    with pytest.raises(ConfigError) as e:
        load(Path("hello/other.toml"))
    assert str(e.value).startswith("hello/other.toml: not found; ")
    assert "imagebuilder build APP.jar --name N --version V" in str(e.value)


def test_relative_app_path_is_taken_from_the_config_directory(
    project: Path, tmp_path: Path
) -> None:
    (tmp_path / "build").mkdir()
    (tmp_path / "build" / "app.jar").write_bytes(b"PK")
    write(project, MINIMAL.replace('"hello.jar"', '"../build/app.jar"'))
    assert load(project).app.path == tmp_path.absolute() / "build" / "app.jar"


def test_mirror_loses_its_trailing_slash(project: Path) -> None:
    write(project, MINIMAL + '[system]\nmirror = "https://mirror.example/debian/"\n')
    assert load(project).system.mirror == "https://mirror.example/debian"


def test_network_lines_count_towards_the_environments_size(project: Path) -> None:
    """The guest skips lines past TOTAL_MAX: the network's must fit with the variables."""
    network = 'network = { address = "10.0.0.5/24", gateway = "10.0.0.1" }\n'
    line = len("IMAGEBUILDER_NET_1=mac=any address=10.0.0.5/24 gateway=10.0.0.1\n")
    room = TOTAL_MAX - len("IMAGEBUILDER_ENV=prod\n") - 4 * len("A=\n")
    sizes = [room // 4] * 3 + [room - 3 * (room // 4) - line]  # exactly full with the line
    body = "".join(f'{name} = "{"x" * size}"\n' for name, size in zip("ABCD", sizes, strict=True))
    write(project, MINIMAL + "[env.prod]\n" + network + "[env.prod.vars]\n" + body)
    assert load(project).env("prod").network
    body = body.replace('D = "x', 'D = "xx')  # one byte more
    write(project, MINIMAL + "[env.prod]\n" + network + "[env.prod.vars]\n" + body)
    with pytest.raises(ConfigError) as e:
        load(project)
    assert str(e.value) == (
        f"{J}: env.prod.network: with its IMAGEBUILDER_NET_n lines, the variables come to"
        f" {TOTAL_MAX + 1} bytes; an environment may hold at most {TOTAL_MAX} (what the guest"
        " can pass to the app)")
    assert e.value.exit_code == 2


@pytest.mark.parametrize(("cmdline", "problem"), [
    ("console=ttyS0\nkernel http://evil/x", "has '\\n' at offset 13: only printable ASCII on one"
                                             " line is allowed"),
    ("console=ttyS0 " + "x" * 2048, "is 2062 bytes; the kernel takes at most 2047"),
])
def test_a_kernel_command_line_boot_loaders_would_split_stops_the_build(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cmdline: str, problem: str) -> None:
    """The image's cmdline comes from its kernel manifest: build reads it with load_manifest,
    which checks it as pull does (imagebuilder.layers.cmdline)."""
    from imagebuilder.layers import kernel
    shutil.copytree(kernel._manifest_dir(), tmp_path / "kernels")
    (tmp_path / "kernels/bad.toml").write_text(
        f'package = "linux-image-amd64"\nmodules = []\ncmdline = {json.dumps(cmdline)}\n')
    monkeypatch.setattr(kernel, "_manifest_dir", lambda: tmp_path / "kernels")
    assert kernel.load_manifest("debian").cmdline
    with pytest.raises(ConfigError) as e:
        kernel.load_manifest("bad")
    assert str(e.value) == f"kernels/bad.toml: cmdline: kernel command line {problem}"
    assert e.value.exit_code == 2


def test_hardware_modules_and_static_network(project: Path) -> None:
    cfg = load(write(project, MINIMAL + textwrap.dedent("""\
        [system]
        kernel = "debian-cloud"
        hardware = ["virtual", "metal", "virtual"]
        modules = ["igb", "8139too"]

        [env.prod]
        vars = { A = "1" }
        network = { address = "10.0.0.5/24", gateway = "10.0.0.1", dns = ["10.0.0.2", "1.1.1.1"] }

        [env.lab]
        network = [{ mac = "52-54-00-AA-BB-01", address = "192.168.7.5/24" },
                   { mac = "52:54:00:aa:bb:02", address = "10.9.0.2/31" }]
        """)))
    assert cfg.system.kernel == "debian-cloud"
    assert cfg.system.hardware == ("virtual", "metal")
    assert cfg.system.modules == ("igb", "8139too")
    prod = cfg.env("prod")
    assert prod.network == (StaticNetwork("10.0.0.5/24", "10.0.0.1", ("10.0.0.2", "1.1.1.1")),)
    assert prod.boot_vars() == {
        "A": "1",
        "IMAGEBUILDER_NET_1": "mac=any address=10.0.0.5/24 gateway=10.0.0.1 dns=10.0.0.2,1.1.1.1"}
    assert cfg.env("lab").boot_vars() == {
        "IMAGEBUILDER_NET_1": "mac=52:54:00:aa:bb:01 address=192.168.7.5/24",
        "IMAGEBUILDER_NET_2": "mac=52:54:00:aa:bb:02 address=10.9.0.2/31"}
    assert load(write(project, MINIMAL + "[system]\nhardware = []\n")).system.hardware == ()


def test_jvm_25_and_memory(project: Path) -> None:
    write(project, MINIMAL + "[jvm]\nversion = 25\n[system]\nmemory = 128\n")
    cfg = load(project)
    assert (cfg.jvm.version, cfg.system.memory) == (25, 128)


# --- zero-config and overrides -------------------------------------------------------------


def test_from_jar(project: Path) -> None:
    cfg = from_jar(Path("hello/hello.jar"), "hello", "2.0")
    assert cfg.path is None
    assert cfg.root == project.absolute()
    assert cfg.lock_path == project.absolute() / "imagebuilder.lock"
    assert cfg.image == ImageSection("hello", "2.0")
    assert cfg.app == AppSection(path=project.absolute() / "hello.jar")
    assert cfg.jvm == JvmSection() and cfg.system == SystemSection()
    assert cfg.environments == ()
    with pytest.raises(NotFoundError, match=r"no imagebuilder.toml was used.*\[env.prod\]"):
        cfg.env("prod")


@pytest.mark.parametrize(
    ("name", "version", "message"),
    [
        (None, "1", ("--name required when building a jar without an imagebuilder.toml:"
         " imagebuilder build hello/hello.jar --name N --version V")),
        ("hello", None, ("--version required when building a jar without an imagebuilder.toml:"
         " imagebuilder build hello/hello.jar --name N --version V")),
        (None, None, ("--name and --version required when building a jar without an"
         " imagebuilder.toml: imagebuilder build hello/hello.jar --name N --version V")),
        ("Hello", "1", ("--name: expected lowercase letters, digits, '.', '_' or '-', starting"
         ' with a letter or digit (it becomes an OCI reference), got "Hello"')),
        ("hello", "1/2", ("--version: expected at most 128 letters, digits, '.', '_' or '-', not"
         ' starting with \'.\', \'-\' or \'_\' (it becomes an OCI tag; \'_\' marks'
         ' imagebuilder\'s own), got "1/2"')),
    ],
)
def test_from_jar_invalid(
    project: Path, name: str | None, version: str | None, message: str
) -> None:
    with pytest.raises(ConfigError) as e:
        from_jar(Path("hello/hello.jar"), name, version)
    assert str(e.value) == message


def test_from_jar_missing_jar(project: Path) -> None:
    with pytest.raises(ConfigError) as e:
        from_jar(Path("hello/nope.jar"), "hello", "1")
    assert str(e.value) == f"hello/nope.jar: file not found: {project.absolute()}/nope.jar"


def test_overrides_win(project: Path) -> None:
    write(project, MINIMAL + '[system]\nmirror = "http://a.example/debian"\n[env.test]\n')
    cfg = load(project)
    assert with_overrides(cfg) == cfg
    new = with_overrides(cfg, name="other", version="9.9", mirror="https://b.example/debian/")
    assert new.image == ImageSection("other", "9.9")
    assert new.system.mirror == "https://b.example/debian"
    assert new.system.suite == cfg.system.suite
    assert (new.app, new.jvm, new.environments, new.path) == (
        cfg.app, cfg.jvm, cfg.environments, cfg.path
    )
    only_version = with_overrides(cfg, version="2")
    assert only_version.image == ImageSection("hello", "2")
    assert only_version.system.mirror == "http://a.example/debian"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"name": "A"}, "--name: expected lowercase"),
        ({"version": ".1"}, "--version: expected at most 128"),
        ({"mirror": "file:///srv/debian"}, ('--mirror: expected an http:// or https:// URL, got'
         ' "file:///srv/debian"')),
    ],
)
def test_overrides_are_validated(project: Path, kwargs: dict[str, str], message: str) -> None:
    write(project, MINIMAL)
    with pytest.raises(ConfigError) as e:
        with_overrides(load(project), **kwargs)
    assert str(e.value).startswith(message)


def test_errors_are_user_errors() -> None:
    assert issubclass(ConfigError, UserError) and issubclass(NotFoundError, UserError)
    assert config.check_env_var("GOOD_1", "any thing = $x") is None


def test_app_shape_keys(project: Path) -> None:
    (project / "imagebuilder.toml").write_text(
        MINIMAL.replace('"hello.jar"', '"."') + 'main = "com.example.Other"\n'
        '[jvm]\nmodules = ["java.sql", "jdk.localedata"]\nruntime = "full"\n')
    cfg = load(project)
    assert cfg.app.path == project and cfg.app.main == "com.example.Other"
    assert cfg.jvm.modules == ("java.sql", "jdk.localedata") and cfg.jvm.runtime == "full"


AOT = MINIMAL + """port = 8080

[jvm]
aot = true
train = { env = "test", timeout = 30 }

[env.test]
vars = { DB_URL = "jdbc:h2:mem:train" }
"""


def test_aot_and_its_training_run(project: Path) -> None:
    write(project, MINIMAL)
    assert load(project).jvm.aot is False
    assert load(project).jvm.train == config.TrainSection(env=None, timeout=120, seconds=None)
    write(project, AOT)
    cfg = load(project)
    assert cfg.jvm.aot is True
    assert cfg.jvm.train == config.TrainSection(env="test", timeout=30, seconds=None)
    assert config.with_aot(cfg, False).jvm.aot is False
    assert config.with_aot(cfg, None) == cfg
    write(project, MINIMAL + "\n[jvm]\ntrain = { seconds = 5 }\n")
    assert config.with_aot(load(project), True).jvm.train.seconds == 5


@pytest.mark.parametrize(("extra", "message"), [
    ("[jvm]\naot = 1\n", "jvm.aot: expected true or false, got 1"),
    ("[jvm]\naot = true\n", "jvm.aot: the training run waits for the healthcheck on [app] port,"
                            " which is not set"),
    ("[jvm]\ntrain = 5\n", "jvm.train: expected a table like"),
    ("[jvm]\ntrain = { timeot = 5 }\n", "unknown key 'jvm.train.timeot' (did you mean 'timeout'?)"),
    ("[jvm]\ntrain = { env = \"prod\" }\n", 'jvm.train.env: no environment "prod" (defined: none;'
                                           " add [env.prod])"),
    ("[jvm]\ntrain = { env = \"Prod!\" }\n", "jvm.train.env: expected the name of an [env.NAME]"),
    ("[jvm]\ntrain = { timeout = 0 }\n", "jvm.train.timeout: expected seconds, 1-3600, got 0"),
    ("[jvm]\ntrain = { seconds = 200 }\n", "jvm.train.seconds: expected seconds, 1 to the timeout"
                                          " (120), got 200"),
])
def test_bad_aot_settings_are_one_line_each(project: Path, extra: str, message: str) -> None:
    write(project, MINIMAL + "\n" + extra)
    with pytest.raises(ConfigError, match=re.escape(message)):
        load(project)


def test_aot_from_the_command_line_needs_something_to_wait_for(project: Path) -> None:
    write(project, MINIMAL)
    with pytest.raises(ConfigError, match=r"^--aot: the training run waits for the healthcheck"):
        config.with_aot(load(project), True)
