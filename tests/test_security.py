"""Security of ``lstmad serve`` and of its connections to VictoriaMetrics, on real processes.

``/metrics`` behind basic auth, a bearer token and TLS; VictoriaMetrics reached over
TLS with a custom CA (VictoriaMetrics' own ``-tls``), with basic auth (its own
``-httpAuth.*``), with a bearer token from a file (through a real ``vmauth``), and
with a client certificate and a tenant path (through :mod:`tests.faultproxy`, since
both are VictoriaMetrics enterprise or cluster features). Secrets never show up in
the log, in error messages or in ``/metrics``; label values put into PromQL are
escaped, checked against VictoriaMetrics' own parser.

Certificates are made with the ``openssl`` command; the tests that need them skip
with a reason where it is missing.
"""

from __future__ import annotations

import base64
import ssl
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lstmad.config import Feature, SourceConfig, load_config
from lstmad.errors import ConfigError, SourceConnectionError, SourceError, SourceHTTPError
from lstmad.localstack import ManagedProcess, free_port
from lstmad.source import PromClient, escape_label_value, fetch_range

from .conftest import LSTMAD, require_binary, wait_for
from .faultproxy import FaultProxy
from .test_reliability import (
    Watch,
    errors,
    run_all,
    running_fleet,
    scored,
    small_model,
    unique_prefix,
    value,
    write_config,
)

REPO = Path(__file__).resolve().parents[1]

SERVE_PASSWORD = "serve-pw-7Hq2x"
METRICS_TOKEN = "metrics-token-Zr81kd"
VM_USER = "vmreader"
VM_PASSWORD = "vm-pw-K3m9vB"
GOOD_TOKEN = "vmauth-good-Qw4e5R"
WRONG_TOKEN = "vmauth-wrong-Ty6u7I"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return small_model(tmp_path_factory.getbasetemp())


# --- certificates ------------------------------------------------------------------------


@dataclass(frozen=True)
class Pki:
    """A test CA, a server certificate for 127.0.0.1 and a client certificate it signed,
    and a self-signed server certificate that nothing trusts."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    self_signed_cert: Path
    self_signed_key: Path


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def make_pki(root: Path) -> Pki:
    root.mkdir(parents=True, exist_ok=True)
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    _openssl(
        "req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
        "-subj", "/CN=lstmad test CA",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        cwd=root,
    )  # fmt: skip
    for name, usage in (("server", "serverAuth"), ("client", "clientAuth")):
        (root / f"{name}.ext").write_text(
            "basicConstraints=critical,CA:FALSE\n"
            "keyUsage=critical,digitalSignature\n"
            f"extendedKeyUsage={usage}\n"
            "subjectAltName=IP:127.0.0.1,DNS:localhost\n"
            "subjectKeyIdentifier=hash\n"
            "authorityKeyIdentifier=keyid,issuer\n"
        )
        _openssl("req", *ec, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN=lstmad {name}",
                 cwd=root)  # fmt: skip
        _openssl(
            "x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
            "-out", f"{name}.pem", "-days", "2", "-extfile", f"{name}.ext",
            cwd=root,
        )  # fmt: skip
    _openssl(
        "req", "-x509", *ec, "-keyout", "self.key", "-out", "self.pem", "-days", "2",
        "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
        cwd=root,
    )  # fmt: skip
    return Pki(
        root / "ca.pem",
        root / "server.pem",
        root / "server.key",
        root / "client.pem",
        root / "client.key",
        root / "self.pem",
        root / "self.key",
    )


def trust(pki: Pki) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(pki.ca))


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    require_binary("openssl")
    return make_pki(tmp_path_factory.mktemp("pki"))


# --- a VictoriaMetrics with TLS and basic auth, and a vmauth -----------------------------


def spawn(name: str, argv: list[str], log: Path, url: str, ready: httpx.Client) -> ManagedProcess:
    """Start a binary by itself (localstack waits over plain HTTP) and wait until it answers."""
    require_binary(argv[0])
    with log.open("ab") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)  # fmt: skip
    managed = ManagedProcess(name, proc, url, log)

    def answers() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"{name} exited with {proc.returncode}: {log.read_text()[-2000:]}")
        try:
            return ready.get(url + "/health").status_code < 500
        except httpx.HTTPError:
            return False

    try:
        wait_for(answers, 30, 0.2, what=f"{name} at {url}")
    except BaseException:
        managed.stop()
        raise
    return managed


@pytest.fixture(scope="module")
def tls_vm(
    tmp_path_factory: pytest.TempPathFactory, pki: Pki
) -> Iterator[tuple[ManagedProcess, httpx.Client]]:
    """VictoriaMetrics serving HTTPS with the test CA's certificate and requiring basic auth."""
    root = tmp_path_factory.mktemp("tls-vm")
    port = free_port()
    client = httpx.Client(verify=trust(pki), auth=(VM_USER, VM_PASSWORD), timeout=10.0)
    argv = [
        "victoria-metrics", f"-httpListenAddr=127.0.0.1:{port}", f"-storageDataPath={root / 'data'}",
        "-retentionPeriod=10y", "-search.latencyOffset=1s", "-dedup.minScrapeInterval=1ms",
        "-loggerLevel=WARN", "-tls", f"-tlsCertFile={pki.server_cert}", f"-tlsKeyFile={pki.server_key}",
        f"-httpAuth.username={VM_USER}", f"-httpAuth.password={VM_PASSWORD}",
    ]  # fmt: skip
    vm = spawn("victoria-metrics (TLS)", argv, root / "vm.log", f"https://127.0.0.1:{port}", client)
    try:
        yield vm, client
    finally:
        vm.stop()
        client.close()


@pytest.fixture
def vmauth(tmp_path: Path, victoriametrics: ManagedProcess) -> Iterator[ManagedProcess]:
    """A real vmauth in front of the session's VictoriaMetrics that accepts one bearer token."""
    port = free_port()
    auth = tmp_path / "auth.yml"
    auth.write_text(f'users:\n  - bearer_token: "{GOOD_TOKEN}"\n    url_prefix: "{victoriametrics.url}/"\n')
    argv = ["vmauth", f"-auth.config={auth}", f"-httpListenAddr=127.0.0.1:{port}", "-loggerLevel=WARN"]
    with httpx.Client(timeout=5.0) as ready:
        proc = spawn("vmauth", argv, tmp_path / "vmauth.log", f"http://127.0.0.1:{port}", ready)
    try:
        yield proc
    finally:
        proc.stop()


def assert_no_secrets(where: str, text: str, secrets: list[str]) -> None:
    for secret in secrets:
        assert secret not in text, f"secret {secret[:4]}… found in {where}"


def basic(user: str, password: str) -> str:
    return base64.b64encode(f"{user}:{password}".encode()).decode()


# --- /metrics: basic auth over TLS; VictoriaMetrics over TLS with a custom CA and basic auth ---


def test_metrics_basic_auth_over_tls_with_a_tls_and_basic_auth_source(
    tls_vm: tuple[ManagedProcess, httpx.Client],
    pki: Pki,
    tmp_path: Path,
    model_dir: Path,
    serve_process: type,
    request: pytest.FixtureRequest,
) -> None:
    vm, vm_client = tls_vm
    prefix = unique_prefix(request)
    hosts = ["tls-1:9100", "tls-2:9100"]
    password_file = tmp_path / "vm-password"
    password_file.write_text(VM_PASSWORD + "\n")
    cfg = write_config(
        tmp_path / "c.yml",
        vm.url,
        prefix,
        victoriametrics={"ca_file": str(pki.ca), "username": VM_USER, "password_file": str(password_file)},
        serve={
            "tls_cert_file": str(pki.server_cert),
            "tls_key_file": str(pki.server_key),
            "basic_auth_username": "prometheus",
            "basic_auth_password": SERVE_PASSWORD,
        },
    )
    with running_fleet(vm.url, prefix, hosts, http=vm_client):
        serve = serve_process(["--config", str(cfg), "--model", str(model_dir), "--log-level", "debug"])
        https = serve.url.replace("http://", "https://")
        with httpx.Client(verify=trust(pki), timeout=10.0) as client:
            wait_for(lambda: _answers(client, https + "/healthz"), 60, what="serve over HTTPS")
            assert client.get(https + "/healthz").status_code == 200  # probes need no credentials
            denied = client.get(https + "/metrics")
            assert denied.status_code == 401 and denied.headers["WWW-Authenticate"].startswith("Basic")
            assert "lstmad_" not in denied.text
            assert client.get(https + "/metrics", auth=("prometheus", "wrong")).status_code == 401
            assert client.get(https + "/metrics", auth=("someone", SERVE_PASSWORD)).status_code == 401
            assert (
                client.get(
                    https + "/metrics", headers={"Authorization": "Bearer " + SERVE_PASSWORD}
                ).status_code
                == 401
            )
            # Plain HTTP on the TLS port gets nowhere, and does not disturb the server.
            with pytest.raises(httpx.HTTPError):
                httpx.get(serve.url + "/metrics", auth=("prometheus", SERVE_PASSWORD), timeout=5.0)
            with Watch(https, auth=("prometheus", SERVE_PASSWORD), verify=trust(pki)) as watch:
                up = watch.until(scored(hosts), 40, "both hosts scored through TLS and basic auth")
            assert value(up, "lstmad_source_up") == 1
            body = client.get(https + "/metrics", auth=("prometheus", SERVE_PASSWORD)).text
    assert serve.stop() == 0
    secrets = [SERVE_PASSWORD, VM_PASSWORD, basic("prometheus", SERVE_PASSWORD), basic(VM_USER, VM_PASSWORD)]
    assert_no_secrets("/metrics", body, secrets)
    assert_no_secrets("the serve log", serve.log(), secrets)


def _answers(client: httpx.Client, url: str) -> bool:
    try:
        return client.get(url).status_code == 200
    except httpx.HTTPError:
        return False


# --- /metrics: bearer token; VictoriaMetrics through vmauth with a bearer token file ---------


def test_metrics_bearer_token_and_a_source_token_file_that_is_rejected_then_rotated(
    victoriametrics: ManagedProcess,
    vmauth: ManagedProcess,
    tmp_path: Path,
    model_dir: Path,
    serve_process: type,
    request: pytest.FixtureRequest,
) -> None:
    prefix = unique_prefix(request)
    hosts = ["token-1:9100"]
    token_file = tmp_path / "token"
    token_file.write_text(WRONG_TOKEN + "\n")
    cfg = write_config(
        tmp_path / "c.yml",
        vmauth.url,
        prefix,
        victoriametrics={"bearer_token_file": str(token_file)},
        serve={"bearer_token": METRICS_TOKEN},
    )
    auth = {"Authorization": f"Bearer {METRICS_TOKEN}"}
    with running_fleet(victoriametrics.url, prefix, hosts):
        serve = serve_process(["--config", str(cfg), "--model", str(model_dir), "--log-level", "debug"])
        serve.wait_healthy()
        denied = serve.get("/metrics")
        assert denied.status_code == 401 and denied.headers["WWW-Authenticate"].startswith("Bearer")
        assert serve.get("/metrics", headers={"Authorization": "Bearer nope"}).status_code == 401
        assert (
            serve.get("/metrics", headers={"Authorization": "Basic " + basic("x", METRICS_TOKEN)}).status_code
            == 401
        )
        with Watch(serve.url, headers=auth) as watch:
            # vmauth refuses the token, and its answer quotes it back: the log must not.
            rejected = watch.until(lambda s: errors(s, "http") >= 1, 30, "the source refusing the token")
            assert value(rejected, "lstmad_source_up") == 0
            # The file is re-read when it changes (a rotated Kubernetes token): no restart needed.
            token_file.write_text(GOOD_TOKEN + "\n")
            up = watch.until(scored(hosts), 40, "scored once the token file holds the right token")
            assert value(up, "lstmad_source_up") == 1
            body = serve.get("/metrics", headers=auth).text
    assert serve.stop() == 0
    log = serve.log()
    assert "answered HTTP" in log and "<secret>" in log, log[-2000:]
    secrets = [METRICS_TOKEN, WRONG_TOKEN, GOOD_TOKEN]
    assert_no_secrets("/metrics", body, secrets)
    assert_no_secrets("the serve log", log, secrets)


# --- the client: custom CA, verification on by default, client certificates, tenant path -----


def test_source_tls_is_verified_by_default_and_trusts_a_custom_ca(
    tls_vm: tuple[ManagedProcess, httpx.Client], pki: Pki
) -> None:
    vm, _ = tls_vm
    good = {"url": vm.url, "username": VM_USER, "password": VM_PASSWORD, "retries": 3, "timeout": 5.0}
    with PromClient(SourceConfig(**good, ca_file=str(pki.ca))) as client:
        assert len(client.query("vector(1)")) == 1
    seen: list[SourceError] = []
    client = PromClient(SourceConfig(**good), on_error=seen.append, sleep=lambda s: None)
    with client, pytest.raises(SourceConnectionError) as info:
        client.query("vector(1)")
    message = str(info.value)
    assert "not trusted" in message and "victoriametrics.ca_file" in message and vm.url in message
    assert len(seen) == 1, "an untrusted certificate is not retried"
    with PromClient(SourceConfig(**good, insecure_skip_verify=True)) as client:
        assert len(client.query("vector(1)")) == 1
    # Wrong credentials: a clear HTTP error, and the password is nowhere in it.
    bad = {**good, "password": "not-" + VM_PASSWORD, "retries": 0}
    client = PromClient(SourceConfig(**bad, ca_file=str(pki.ca)))
    with client, pytest.raises(SourceHTTPError) as denied:
        client.query("vector(1)")
    assert denied.value.status == 401 and VM_PASSWORD not in str(denied.value)


def test_source_user_info_in_the_url_is_used_and_never_shown(
    tls_vm: tuple[ManagedProcess, httpx.Client], pki: Pki
) -> None:
    vm, _ = tls_vm
    url = vm.url.replace("https://", f"https://{VM_USER}:{VM_PASSWORD}@")
    with PromClient(SourceConfig(url=url, ca_file=str(pki.ca), retries=0)) as client:
        assert len(client.query("vector(1)")) == 1
        assert VM_PASSWORD not in client.base_url and client.base_url == vm.url
        with pytest.raises(SourceError) as info:
            client.query("sum(")
    assert VM_PASSWORD not in str(info.value) and vm.url in str(info.value)


def test_source_client_certificate_and_tenant_path(
    victoriametrics: ManagedProcess, pki: Pki, tmp_path: Path
) -> None:
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(pki.ca))
    tls.load_cert_chain(str(pki.server_cert), str(pki.server_key))
    tls.verify_mode = ssl.CERT_REQUIRED
    with FaultProxy(victoriametrics.url, tls=tls, tenant="3:1") as proxy:
        base = {"url": proxy.url, "tenant": "3:1", "ca_file": str(pki.ca), "retries": 0, "timeout": 5.0}
        cert = {"cert_file": str(pki.client_cert), "key_file": str(pki.client_key)}
        with PromClient(SourceConfig(**base, **cert)) as client:
            now = time.time()
            frame = fetch_range(client, [Feature("v", "vector(2)")], "instance", now - 30, now, 5)
        assert frame.values.shape[1:] == (7, 1)
        assert {r.path for r in proxy.requests} == {"/select/3:1/prometheus/api/v1/query_range"}
        # Without the client certificate the handshake is refused.
        with PromClient(SourceConfig(**base)) as client, pytest.raises(SourceConnectionError):
            client.query("vector(1)")
        # insecure_skip_verify skips the server check but still presents the client certificate.
        insecure = {**base, "ca_file": None, "insecure_skip_verify": True}
        with PromClient(SourceConfig(**insecure, **cert)) as client:
            assert len(client.query("vector(1)")) == 1


# --- unreadable certificate, key and secret files: a config error, exit 2 ------------------


def test_unreadable_tls_and_secret_files_exit_2_naming_the_key(
    tmp_path: Path, model_dir: Path, pki: Pki
) -> None:
    missing = str(tmp_path / "missing.pem")
    cases = {
        "serve.tls_cert_file": {"serve": {"tls_cert_file": missing, "tls_key_file": str(pki.server_key)}},
        "victoriametrics.ca_file": {"victoriametrics": {"ca_file": missing}},
        "victoriametrics.cert_file": {"victoriametrics": {"cert_file": missing, "key_file": missing}},
        "victoriametrics.bearer_token_file": {"victoriametrics": {"bearer_token_file": missing}},
        "victoriametrics.password_file": {"victoriametrics": {"username": "u", "password_file": missing}},
    }
    commands = []
    for i, sections in enumerate(cases.values()):
        cfg = write_config(tmp_path / f"c{i}.yml", "https://127.0.0.1:9", "sec", **sections)
        commands.append([*LSTMAD, "serve", "--config", str(cfg), "--model", str(model_dir)])
    for key, proc in zip(cases, run_all(commands), strict=True):
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 2, f"{key}: exit {proc.returncode}: {proc.stderr[-2000:]}"
        assert len(lines) == 1 and key in lines[0] and "missing.pem" in lines[0], f"{key}: {proc.stderr}"


def test_serve_listens_on_loopback_by_default_as_documented() -> None:
    assert load_config(None).serve.listen == "127.0.0.1:9731"
    assert "listen: 127.0.0.1:9731" in (REPO / "README.md").read_text()


@pytest.mark.parametrize("status", [200, 401, 502])
def test_credentials_echoed_back_by_a_server_are_masked(status: int) -> None:
    def echo(request: httpx.Request) -> httpx.Response:
        return httpx.Response(status, content=b"you sent " + request.headers["Authorization"].encode())

    for cfg in (
        SourceConfig(url="http://vm.test", bearer_token=GOOD_TOKEN, retries=0),
        SourceConfig(url="http://vm.test", username=VM_USER, password=VM_PASSWORD, retries=0),
    ):
        client = PromClient(cfg, transport=httpx.MockTransport(echo))
        with client, pytest.raises(SourceError) as info:
            client.query("up")
        message = str(info.value)
        assert "<secret>" in message
        assert_no_secrets("the error", message, [GOOD_TOKEN, VM_PASSWORD, basic(VM_USER, VM_PASSWORD)])


def test_a_secret_file_problem_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"victoriametrics\.bearer_token_file"):
        PromClient(SourceConfig(bearer_token_file=str(tmp_path / "nope")))


# --- escaping label values into PromQL, checked by VictoriaMetrics' own parser ---------------

HOSTILE_VALUES = [
    'a"b',
    "back\\slash",
    "new\nline",
    "tab\tcr\r",
    "ünï主机😀",
    '"}) or vector(1) #',
    "\\n",
    "'",
]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(max_size=24))
def test_escaped_label_values_parse_back_to_themselves_in_victoriametrics(
    victoriametrics: ManagedProcess, value: str
) -> None:
    query = f'label_set(vector(1), "instance", "{escape_label_value(value)}")'
    resp = httpx.post(f"{victoriametrics.url}/api/v1/query", data={"query": query}, timeout=10)
    doc = resp.json()
    assert doc["status"] == "success", doc
    (series,) = doc["data"]["result"]
    assert series["metric"].get("instance", "") == value


def test_escaped_selectors_match_exactly_one_stored_series(
    victoriametrics: ManagedProcess, request: pytest.FixtureRequest
) -> None:
    name = unique_prefix(request) + "_sel"
    now = (int(time.time()) - 60) * 1000
    lines = b"\n".join(
        orjson.dumps({"metric": {"__name__": name, "instance": v}, "values": [i], "timestamps": [now]})
        for i, v in enumerate(HOSTILE_VALUES)
    )
    httpx.post(f"{victoriametrics.url}/api/v1/import", content=lines, timeout=10).raise_for_status()
    httpx.get(f"{victoriametrics.url}/internal/force_flush", timeout=10)
    with PromClient(SourceConfig(url=victoriametrics.url)) as client:
        for i, v in enumerate(HOSTILE_VALUES):
            batch = client.query(f'{name}{{instance="{escape_label_value(v)}"}}', at=now / 1000)
            assert [lab["instance"] for lab in batch.labels] == [v]
            assert batch.values.tolist() == [float(i)]


# --- arbitrary answers through the client and the alignment: a SourceError or a clean frame ---


def _containers(inner: st.SearchStrategy[object]) -> st.SearchStrategy[object]:
    return st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)


_json = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.floats() | st.text(max_size=8),
    _containers,
    max_leaves=12,
)
_label_value = st.text(max_size=8) | _json
_labels = st.dictionaries(st.sampled_from(["instance", "job", "__name__"]), _label_value, max_size=3)
_sample = st.tuples(st.integers(0, 60), st.sampled_from(["1", "0.5", "-3", "1e308", "NaN", "+Inf", "-Inf"]))
# Well-formed answers whose labels may be anything JSON allows ...
_matrix = st.fixed_dictionaries(
    {
        "status": st.just("success"),
        "data": st.fixed_dictionaries(
            {
                "resultType": st.just("matrix"),
                "result": st.lists(
                    st.fixed_dictionaries({"metric": _labels, "values": st.lists(_sample, max_size=4)}),
                    max_size=5,
                ),
            }
        ),
    }
)
# ... and answers malformed anywhere.
_point = st.tuples(st.integers(0, 100) | st.floats() | st.text(max_size=4), st.text(max_size=6) | _json)
_series = st.fixed_dictionaries({"metric": _labels | _json, "values": st.lists(_point, max_size=4) | _json})
_answer = st.fixed_dictionaries(
    {
        "status": st.sampled_from(["success", "error"]) | _json,
        "data": st.fixed_dictionaries(
            {
                "resultType": st.sampled_from(["matrix", "vector"]) | _json,
                "result": st.lists(_series, max_size=4),
            }
        )
        | _json,
    }
)


def _dumps(doc: object) -> bytes:
    return orjson.dumps(doc, option=orjson.OPT_NON_STR_KEYS)


@settings(max_examples=300, deadline=None)
@given(st.one_of(_matrix.map(_dumps), _answer.map(_dumps), st.binary(max_size=64)))
def test_arbitrary_answers_give_a_source_error_or_a_clean_frame(body: bytes) -> None:
    transport = httpx.MockTransport(lambda request: httpx.Response(200, content=body))
    with PromClient(SourceConfig(url="http://vm.test", retries=0), transport=transport) as client:
        try:
            frame = fetch_range(client, [Feature("a", "up"), Feature("b", "up")], "instance", 0, 60, 15)
        except SourceError:
            return
    assert all(isinstance(e, str) for e in frame.entities)
    assert frame.values.shape == (len(frame.entities), 5, 2) and frame.values.dtype == np.float64
    assert not np.isinf(frame.values).any()
