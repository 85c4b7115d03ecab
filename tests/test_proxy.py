"""Two app replicas behind Debian's nginx, with deploy/nginx.conf: affinity, isolation, failover, privacy.

deploy/nginx.conf itself is run, its ports and paths rewritten into tmp_path (pid file, logs and every
temp path there), as the current user, in the foreground (`nginx -c CONF -p PREFIX -e LOG -g 'daemon off;'`)
and, when strace may trace here, under `strace -f`. Two `streamlit run app.py` replicas listen on free
loopback ports. Two browser sessions (Playwright + Debian's Chromium), pinned to different replicas by
their affinity cookie, each drop their own film through the proxy and must see only their own result.
Then one replica is stopped: the session that was on it must be told so, and new sessions (even one whose
cookie points at the stopped replica) are served by the other one. nginx must create or write no file
once the first upload has started (the privacy test's method, tests/test_privacy.py). Streamlit's frontend
(/static/) must be sent by nginx itself from this interpreter's streamlit package (the config's `root`, rewritten
to it), with the headers a replica would send, and a /static/ path nginx lacks must reach the browser's replica.
Every process is started here and stopped by its PID / process group; every wait is bounded.
"""
from __future__ import annotations

import os
import pwd
import grp
import gzip
import re
import shutil
import signal
import subprocess
import time
import tomllib
import urllib.error
import urllib.request
import uuid
from contextlib import ExitStack
from dataclasses import dataclass
from email.message import Message
from pathlib import Path

import pytest
import streamlit

from covidxr.audit import AuditStore
from tests.conftest import shared_data
from tests.postgres import running_postgres
from tests.test_privacy import server_env, slices, strace, strace_prefix, traced_writes, weights_dir
from tests.browser import (CHROMIUM, CHROMIUM_ARGS, OVERLAYS_READY_JS, REPO, SCRIPT_IDLE, UPLOADER, VERDICT_PATTERN,
                            free_port, require_chromium, running_app, stop_group)

pytestmark = [pytest.mark.browser, pytest.mark.slow]

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
TEMPLATE = REPO / "deploy" / "nginx.conf"
# The folder this interpreter's streamlit serves its frontend from (streamlit.file_util.get_static_dir()):
# the rendered config's `location /static/` serves it, as a deployment's would serve its venv's.
STREAMLIT_STATIC = Path(streamlit.__file__).parent / "static"
RESULT_TIMEOUT_MS = 240_000          # a busy 2-core box, two replicas loading the model at once
NGINX_START_S = 30
FILM_A = REPO / "samples" / "covid" / "006f3a8a.jpg"
FILM_B = REPO / "samples" / "normal" / "00001300_000.jpg"
FILM_C = REPO / "samples" / "pneumonia" / "person1000_virus_1681.jpg"
DICOM = shared_data("dicom", "cxr", "nema-wg04_RG1_JLSN.dcm")   # 2.7 MB: over client_body_buffer_size (1 MB)
TAG = uuid.uuid4().hex[:8]
# The title of the dialog Streamlit's page shows when it cannot reconnect to the server that held its session.
CONNECTION_LOST = re.compile(r"Connection error")
LOG_LINE = re.compile(r'"(?P<method>[A-Z]+) (?P<uri>\S+)" (?P<status>\d+) \d+ \S+ upstream=(?P<upstream>\S+)$')


# ---------------------------------------------------------------- the config, rendered into tmp_path

def render(template: str, prefix: Path, listen: int, ports: tuple[int, int]) -> str:
    """deploy/nginx.conf with its "test:" lines pointed at tmp_path and the given ports. Each
    replacement must match exactly as often as expected, so that an edit of the template that the test
    no longer understands fails here rather than testing something else."""
    user = pwd.getpwuid(os.geteuid()).pw_name
    group = grp.getgrgid(os.getegid()).gr_name
    rules = [
        (r"^user www-data;", f"user {user} {group};" if os.geteuid() == 0 else "# user: not root, runs as itself", 1),
        (r"^pid /run/nginx\.pid;", f"pid {prefix}/nginx.pid;", 1),
        (r"^error_log /var/log/nginx/error\.log", f"error_log {prefix}/logs/error.log", 1),
        (r"/var/log/nginx/covidxr-access\.log", f"{prefix}/logs/access.log", 1),
        (r"/var/lib/nginx/(body|proxy|fastcgi|uwsgi|scgi);", rf"{prefix}/temp/\1;", 5),
        (r"listen 127\.0\.0\.1:8080;", f"listen 127.0.0.1:{listen};", 1),
        (r"127\.0\.0\.1:8501\b", f"127.0.0.1:{ports[0]}", 3),
        (r"127\.0\.0\.1:8502\b", f"127.0.0.1:{ports[1]}", 3),
        (r"127\\\.0\\\.0\\\.1:8501\$", rf"127\\.0\\.0\\.1:{ports[0]}$", 1),   # in a map's regex
        (r"127\\\.0\\\.0\\\.1:8502\$", rf"127\\.0\\.0\\.1:{ports[1]}$", 1),
        (r"root /opt/covidxr/\.venv/lib/python3\.11/site-packages/streamlit/static;", f'root "{STREAMLIT_STATIC}";', 1),
    ]
    for pattern, repl, count in rules:
        template, n = re.subn(pattern, repl, template, flags=re.M)
        assert n == count, f"deploy/nginx.conf: {pattern!r} matched {n} times, expected {count}"
    return template


@dataclass
class Proxy:
    url: str
    prefix: Path
    proc: subprocess.Popen
    trace: Path | None
    replicas: dict[int, object]        # port -> RunningApp
    ports: tuple[int, int]
    db: str = ""                       # the replicas' one audit store (PostgreSQL)
    first_upload: float | None = None  # time.time() before the browser test's first drop
    lost_message: str | None = None    # what the page on the stopped replica said

    def log_lines(self) -> list[str]:
        return (self.prefix / "logs" / "access.log").read_text(errors="replace").splitlines()

    def requests(self) -> list[dict[str, str]]:
        return requests(self.log_lines())


def requests(lines: list[str]) -> list[dict[str, str]]:
    """The access log's lines parsed: method, uri, status, upstream."""
    return [m.groupdict() for line in lines if (m := LOG_LINE.search(line))]


def fetch(url: str, headers: dict[str, str] | None = None, timeout: float = 10) -> tuple[int, Message, bytes]:
    """Status, headers, body (urllib sends no Accept-Encoding unless given)."""
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.headers, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read()


def get(url: str, cookie: str | None = None, timeout: float = 10) -> tuple[int, list[str], bytes]:
    """Status, the Set-Cookie headers, body."""
    status, headers, body = fetch(url, {"Cookie": f"covidxr_replica={cookie}"} if cookie else {}, timeout)
    return status, headers.get_all("Set-Cookie") or [], body


def wait_nginx(proxy: Proxy) -> None:
    deadline = time.monotonic() + NGINX_START_S
    while time.monotonic() < deadline:
        if proxy.proc.poll() is not None:
            raise RuntimeError(f"nginx exited with {proxy.proc.returncode}:\n{read(proxy.prefix / 'logs' / 'error.log')}")
        try:
            if get(f"{proxy.url}/_replica/1/health", timeout=2)[0] == 200:
                return
        except OSError:
            pass
        time.sleep(0.3)
    raise RuntimeError(f"nginx did not answer in {NGINX_START_S} s:\n{read(proxy.prefix / 'logs' / 'error.log')}")


def read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")[-3000:]
    except OSError:
        return ""


def stop_nginx(proc: subprocess.Popen, grace_s: float = 15) -> None:
    """SIGQUIT (graceful shutdown) to nginx's process group (master, workers, strace), SIGKILL if it lingers."""
    stop_group(proc, grace_s, signal.SIGQUIT)


@pytest.fixture(scope="module")
def proxy(tmp_path_factory):
    if not Path(NGINX).exists():
        pytest.fail("nginx is not installed: scripts/setup.sh --browser (or --proxy) installs Debian's nginx")
    require_chromium()
    weights = weights_dir()
    prefix = tmp_path_factory.mktemp("nginx")
    for d in ("logs", "temp", "replica-home", "replica-tmp"):
        (prefix / d).mkdir()
    ports = (free_port(), free_port())
    listen = free_port()
    conf = prefix / "nginx.conf"
    conf.write_text(render(TEMPLATE.read_text(), prefix, listen, ports))
    env = server_env(prefix / "replica-home", prefix / "replica-tmp", weights)
    with ExitStack() as stack:
        # Sign-in on, as docs/operations.md deploys it: one [auth] (one cookie secret) for both replicas, redirect
        # to the proxy; a real OpenID Connect provider in this process; the one audit store in PostgreSQL.
        from oidc_provider_mock import User, run_server_in_thread

        users = [User(sub=sub, claims={"name": f"Dr {sub}", "groups": ["covidxr-clinician"]}) for sub in SUBJECTS]
        idp = stack.enter_context(run_server_in_thread(port=free_port(), user_claims=users))
        (prefix / "replica-home" / ".streamlit").mkdir()
        (prefix / "replica-home" / ".streamlit" / "secrets.toml").write_text(
            f'[auth]\nredirect_uri = "http://127.0.0.1:{listen}/oauth2callback"\ncookie_secret = "{uuid.uuid4().hex}"\n'
            f'client_id = "covidxr"\nclient_secret = "s"\n'
            f'server_metadata_url = "http://localhost:{idp.server_port}/.well-known/openid-configuration"\n')
        db = stack.enter_context(running_postgres())
        env["COVIDXR_DB"] = db
        replicas = {port: stack.enter_context(running_app(prefix / f"replica-{port}.log", env=env, port=port))
                    for port in ports}
        trace = prefix / "nginx.strace" if strace() else None
        test = subprocess.run([NGINX, "-t", "-c", str(conf), "-p", str(prefix), "-e", str(prefix / "logs" / "error.log")],
                              capture_output=True, text=True, timeout=30)
        assert test.returncode == 0, f"nginx -t:\n{test.stderr}"
        with open(prefix / "nginx.out", "wb") as out:
            proc = subprocess.Popen([*(strace_prefix(trace) if trace else ()), NGINX, "-c", str(conf), "-p", str(prefix),
                                     "-e", str(prefix / "logs" / "error.log"), "-g", "daemon off;"],
                                    stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        stack.callback(stop_nginx, proc)
        p = Proxy(f"http://127.0.0.1:{listen}", prefix, proc, trace, replicas, ports, db)
        wait_nginx(p)
        yield p


# ---------------------------------------------------------------- the config alone

def test_the_upload_limit_is_streamlits():
    limit_mb = tomllib.loads((REPO / ".streamlit" / "config.toml").read_text())["server"]["maxUploadSize"]
    m = re.search(r"^\s*client_max_body_size (\d+)m;", TEMPLATE.read_text(), re.M)
    assert m and int(m.group(1)) == limit_mb + 1, "client_max_body_size must be server.maxUploadSize + 1 MB (envelope)"


def test_the_config_buffers_nothing_to_disk_and_logs_no_query_string():
    conf = TEMPLATE.read_text()
    for line in ("proxy_request_buffering off;", "proxy_buffering off;", "proxy_max_temp_file_size 0;"):
        assert re.search(rf"^\s*{re.escape(line)}", conf, re.M), line
    log_format = re.search(r"log_format covidxr (.*?);", conf, re.S).group(1)
    assert "$request " not in log_format and "$request_uri" not in log_format and "$args" not in log_format
    assert "$http_referer" not in log_format and "$http_cookie" not in log_format


# ---------------------------------------------------------------- plain HTTP through the proxy

def replica_of(proxy: Proxy, cookie: str | None) -> tuple[str, list[str]]:
    """Which replica (upstream address) served a health request with this affinity cookie, and the
    affinity cookies the response set."""
    before = len(proxy.log_lines())
    status, set_cookies, body = get(f"{proxy.url}/_stcore/health", cookie)
    assert status == 200 and body.strip() == b"ok"
    [hit] = [r for r in requests(proxy.log_lines()[before:]) if r["uri"] == "/_stcore/health"]
    return hit["upstream"], [c for c in set_cookies if c.startswith("covidxr_replica=")]


def test_each_replica_has_its_health_check(proxy: Proxy):
    for n in (1, 2):
        status, _, body = get(f"{proxy.url}/_replica/{n}/health")
        assert (status, body.strip()) == (200, b"ok"), n


def test_the_affinity_cookie_names_the_replica_and_pins_it(proxy: Proxy):
    upstream, [cookie] = replica_of(proxy, None)                       # a new browser: any replica
    n = 1 + proxy.ports.index(int(upstream.rsplit(":", 1)[1]))
    assert cookie == f"covidxr_replica=r{n}; Path=/; HttpOnly; SameSite=Lax"
    for n, port in enumerate(proxy.ports, 1):                         # with the cookie: always that replica
        for _ in range(3):
            assert replica_of(proxy, f"r{n}")[0] == f"127.0.0.1:{port}"


def test_the_access_log_has_no_query_string(proxy: Proxy):
    secret = f"query-canary-{TAG}"
    get(f"{proxy.url}/_stcore/health?patient={secret}")
    assert secret not in "\n".join(proxy.log_lines())
    assert any(r["uri"] == "/_stcore/health" for r in proxy.requests())


# ---------------------------------------------------------------- Streamlit's frontend, from nginx

def served_by_nginx(lines: list[str]) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    """The /static/ requests in these log lines: those nginx answered itself (no upstream), the others."""
    static = [r for r in requests(lines) if r["uri"].startswith("/static/")]
    return [r for r in static if r["upstream"] == "-"], [r for r in static if r["upstream"] != "-"]


def test_streamlits_frontend_is_sent_by_nginx_from_the_package(proxy: Proxy):
    """Every /static/ file the page (index.html, fetched through the proxy) names is sent by nginx from
    this interpreter's streamlit package, not by a replica: the access log shows no upstream for it; the
    bytes are the package file's, and the Cache-Control and Content-Type those a replica sends for it.
    JavaScript is gzipped when the browser accepts it."""
    status, _, page = get(f"{proxy.url}/", "r2")
    files = sorted(set(re.findall(r'(?:src|href)="\./(static/(?:js|css|media)/[^"]+)"', page.decode())))
    assert status == 200 and any(f.endswith(".js") for f in files) and any(f.endswith(".css") for f in files), files
    replica = proxy.replicas[proxy.ports[1]].url
    before = len(proxy.log_lines())
    for f in files:
        status, headers, body = fetch(f"{proxy.url}/{f}", {"Cookie": "covidxr_replica=r2"})
        assert status == 200 and body == (STREAMLIT_STATIC / f).read_bytes(), f
        assert not [c for c in headers.get_all("Set-Cookie") or [] if c.startswith("covidxr_replica=")], f
        _, own, _ = fetch(f"{replica}/{f}")
        for h in ("Cache-Control", "Content-Type"):
            assert headers[h] == own[h], f"{f}: {h} {headers[h]!r}, the replica sends {own[h]!r}"
        assert headers["Cache-Control"] == "public, immutable, max-age=31536000", f   # every name has a hash
    local, upstream = served_by_nginx(proxy.log_lines()[before:])
    assert len(local) == len(files) and not upstream, upstream
    script = next(f for f in files if f.endswith(".js"))
    status, headers, body = fetch(f"{proxy.url}/{script}", {"Accept-Encoding": "gzip"})
    assert (status, headers["Content-Encoding"], headers["Vary"]) == (200, "gzip", "Accept-Encoding")
    assert gzip.decompress(body) == (STREAMLIT_STATIC / script).read_bytes()


def test_a_static_path_nginx_lacks_reaches_the_browsers_replica(proxy: Proxy):
    """A /static/ path that is not in the package folder (say, a replica of another streamlit version)
    is passed to the replica the affinity cookie names, which answers it as it would directly."""
    path = "/static/js/not-in-the-package.00000000.js"   # no TAG: the privacy test looks for it in the log
    for n, port in enumerate(proxy.ports, 1):
        before = len(proxy.log_lines())
        status, _, body = get(f"{proxy.url}{path}", f"r{n}")
        assert (status, body) == get(f"http://127.0.0.1:{port}{path}")[::2]
        assert [r["upstream"] for r in requests(proxy.log_lines()[before:]) if r["uri"] == path] == [f"127.0.0.1:{port}"]


# ---------------------------------------------------------------- two browsers, then a replica stops

def drop(page, url: str, film: Path, name: str, mime: str = "image/jpeg") -> str:
    """Open the screen page through the proxy, drop the film under `name`, wait for its result; the
    main area's text."""
    from playwright.sync_api import expect

    page.goto(url)
    uploader = page.locator(UPLOADER).first
    uploader.wait_for(state="attached", timeout=RESULT_TIMEOUT_MS)
    page.wait_for_selector(SCRIPT_IDLE, timeout=RESULT_TIMEOUT_MS)
    uploader.set_input_files({"name": name, "mimeType": mime, "buffer": film.read_bytes()})
    expect(page.get_by_text(re.compile(VERDICT_PATTERN)).first).to_be_visible(timeout=RESULT_TIMEOUT_MS)
    page.wait_for_function(OVERLAYS_READY_JS, arg=1, timeout=RESULT_TIMEOUT_MS)
    expect(page.get_by_text(name).first).to_be_visible(timeout=RESULT_TIMEOUT_MS)
    return page.get_by_test_id("stMain").inner_text()


def upload_replicas(proxy: Proxy, since: int) -> set[str]:
    """The replicas that received upload PUTs in the log lines after `since`."""
    return {r["upstream"] for r in requests(proxy.log_lines()[since:])
            if r["method"] == "PUT" and r["uri"].startswith("/_stcore/upload_file/")}


SUBJECTS = [f"clin-{i}" for i in range(1, 9)]


def new_page(browser, host: str, cookie: str | None, url: str, sub: str = "clin-1"):
    """A new browser (pinned to a replica by `cookie`), signed in as `sub` through the provider's own form."""
    from playwright.sync_api import expect

    context = browser.new_context(viewport={"width": 1280, "height": 1200})
    if cookie:
        context.add_cookies([{"name": "covidxr_replica", "value": cookie, "domain": host, "path": "/"}])
    page = context.new_page()
    page.set_default_timeout(RESULT_TIMEOUT_MS)
    page.goto(url)
    page.get_by_role("button", name="Sign in").click()
    page.locator(f'button[name="sub"][value="{sub}"]').click()
    expect(page.get_by_text(f"Signed in: Dr {sub}")).to_be_visible(timeout=RESULT_TIMEOUT_MS)
    return page


def test_eight_signed_in_sessions_on_two_replicas_keep_one_audit_chain(proxy: Proxy):
    """Eight clinicians signed in, four pinned to each replica, screen a film at once: PostgreSQL keeps one
    unbroken chain holding every sign-in and every screen, from both replicas."""
    from playwright.sync_api import expect, sync_playwright

    host = proxy.url.split("//")[1].split(":")[0]
    before = len(proxy.log_lines())
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            pages = [new_page(browser, host, f"r{1 + i % 2}", proxy.url, sub) for i, sub in enumerate(SUBJECTS)]
            for page in pages:  # every drop first, then every wait: the replicas score and record at once
                page.locator(UPLOADER).first.wait_for(state="attached", timeout=RESULT_TIMEOUT_MS)
                page.wait_for_selector(SCRIPT_IDLE, timeout=RESULT_TIMEOUT_MS)
                page.locator(UPLOADER).first.set_input_files(
                    {"name": f"eight-{TAG}.jpg", "mimeType": "image/jpeg", "buffer": FILM_B.read_bytes()})
            for page in pages:
                expect(page.get_by_text(re.compile(VERDICT_PATTERN)).first).to_be_visible(timeout=RESULT_TIMEOUT_MS)
        finally:
            browser.close()
    assert upload_replicas(proxy, before) == {f"127.0.0.1:{port}" for port in proxy.ports}
    store = AuditStore(proxy.db)
    got = store.verify()
    assert got.ok, got
    records = store.records()
    assert {r.user for r in records if r.action == "sign-in"} >= set(SUBJECTS)
    assert {r.user for r in records if r.action == "screen"} >= set(SUBJECTS)
    store.dispose()


def test_sessions_are_isolated_and_survive_a_stopped_replica(proxy: Proxy, capsys):
    from playwright.sync_api import expect, sync_playwright

    up = {n: f"127.0.0.1:{port}" for n, port in enumerate(proxy.ports, 1)}
    name_a, name_b, name_c = (f"proxy-{k}-{TAG}-{f.name}" for k, f in (("a", FILM_A), ("b", FILM_B), ("c", FILM_C)))
    host = proxy.url.split("//")[1].split(":")[0]
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            # Two clinicians, pinned to different replicas (a new browser gets whichever has fewer sessions).
            page_a, page_b = (new_page(browser, host, "r1", proxy.url, "clin-1"),
                              new_page(browser, host, "r2", proxy.url, "clin-2"))
            proxy.first_upload = time.time()
            start = before = len(proxy.log_lines())
            text_a = drop(page_a, proxy.url, FILM_A, name_a)
            assert upload_replicas(proxy, before) == {up[1]}, "session A's upload went elsewhere"
            before = len(proxy.log_lines())
            text_b = drop(page_b, proxy.url, FILM_B, name_b)
            assert upload_replicas(proxy, before) == {up[2]}, "session B's upload went elsewhere"
            assert name_a in text_a and name_b not in text_a
            assert name_b in text_b and name_a not in text_b
            assert page_a.get_by_text(name_b).count() == 0 and page_b.get_by_text(name_a).count() == 0
            # Both browsers fetched Streamlit's frontend (their caches were empty): all of it from nginx.
            local, upstream = served_by_nginx(proxy.log_lines()[start:])
            assert len(local) > 10 and not upstream, f"/static/ requests a replica answered: {upstream}"

            # Replica 1, which holds session A, stops.
            stop_group(proxy.replicas[proxy.ports[0]].proc)
            assert proxy.replicas[proxy.ports[0]].proc.poll() is not None
            # A is told: its page cannot reconnect to the replica that held its session.
            proxy.lost_message = wait_for_text(page_a, CONNECTION_LOST, timeout_s=90)
            with capsys.disabled():
                print(f"\n[proxy] the page on the stopped replica says: {proxy.lost_message!r}")

            # A new browser pinned to the stopped replica (say, a new tab of A's browser) is served by the other.
            page_c = new_page(browser, host, "r1", proxy.url, "clin-3")
            before = len(proxy.log_lines())
            text_c = drop(page_c, proxy.url, FILM_C, name_c)
            assert upload_replicas(proxy, before) == {up[2]}
            assert name_c in text_c and name_a not in text_c and name_b not in text_c
            assert {c["value"] for c in page_c.context.cookies() if c["name"] == "covidxr_replica"} == {"r2"}
            # A, reloading, starts afresh on the running replica and can screen again: a DICOM larger than
            # nginx's in-memory body buffer, which must stream through without a temporary file.
            name_d = f"proxy-d-{TAG}.dcm"
            text_a = drop(page_a, proxy.url, DICOM, name_d, "application/dicom")
            assert name_d in text_a and name_a not in text_a and name_b not in text_a and name_c not in text_a
            # B, on the running replica throughout, still has its result and never sees the others' films.
            expect(page_b.get_by_text(name_b).first).to_be_visible()
            assert page_b.get_by_text(name_c).count() == 0 and page_b.get_by_text(name_a).count() == 0
        finally:
            browser.close()


def wait_for_text(page, pattern: re.Pattern, timeout_s: float) -> str:
    """The first text matching `pattern` the page shows within timeout_s (polls the whole body)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        text = page.locator("body").inner_text()
        m = pattern.search(text)
        if m:
            return m.group(0)
        time.sleep(0.2)
    pytest.fail(f"the page never said {pattern.pattern!r}; it shows:\n{page.locator('body').inner_text()[:2000]}")


# ---------------------------------------------------------------- privacy: nginx writes no file

def test_nginx_writes_no_file_once_uploads_start(proxy: Proxy):
    """After the browser test: nginx (under strace -f) created or opened for writing no file once the
    first film was dropped (before it: its logs and pid file, and its temp folders); the temp folders
    are empty; no file nginx wrote holds the uploads' bytes; the access log holds no file name."""
    first_upload = proxy.first_upload
    if first_upload is None:
        pytest.fail("run with test_sessions_are_isolated_and_survive_a_stopped_replica, which uploads the films")
    assert DICOM.stat().st_size > 1024 * 1024 * int(re.search(r"client_body_buffer_size (\d+)m;", TEMPLATE.read_text()).group(1))
    stop_nginx(proxy.proc)                          # the trace is complete once nginx has exited
    temp = proxy.prefix / "temp"
    assert not [p for p in temp.rglob("*") if p.is_file()], f"files in nginx's temp paths: {list(temp.rglob('*'))}"
    log = (proxy.prefix / "logs" / "access.log").read_text(errors="replace")
    assert TAG not in log and "?" not in log, "the access log holds an upload's name or a query string"
    assert "PUT /_stcore/upload_file/" in log
    if proxy.trace is None:
        pytest.fail("strace is not installed or may not trace here: nginx's writes could not be checked "
                    "(apt-get install strace); its temp folders were empty")
    writes = traced_writes(proxy.trace, proxy.prefix)
    assert writes, "the trace recorded nothing: is strace tracing nginx at all?"
    late = [w for w in writes if w.time >= first_upload and w.path != "/dev/null"]
    assert not late, "nginx created or opened for writing, after the first upload:\n" + "\n".join(w.line for w in late)
    needles = {**slices(FILM_A.read_bytes(), "film A"), **slices(DICOM.read_bytes(), "DICOM")}
    for w in writes:
        if Path(w.path).is_file():
            data = Path(w.path).read_bytes()
            assert not [k for k, v in needles.items() if v in data], f"{w.path} holds upload bytes"


def test_the_check_catches_nginx_buffering_an_upload_to_disk(tmp_path):
    """Not vacuous: the same config with request buffering on and a small body buffer spools a 3 MB
    upload to client_body_temp_path, and the trace shows it (no replicas needed: nginx reads the whole
    body before it connects to one)."""
    if not Path(NGINX).exists():
        pytest.fail("nginx is not installed: scripts/setup.sh --browser (or --proxy) installs Debian's nginx")
    if strace() is None:
        pytest.fail("strace is not installed or may not trace here (apt-get install strace)")
    for d in ("logs", "temp"):
        (tmp_path / d).mkdir()
    listen = free_port()
    conf = render(TEMPLATE.read_text(), tmp_path, listen, (free_port(), free_port()))
    conf, n = re.subn(r"^(\s*)proxy_request_buffering off;", r"\1proxy_request_buffering on;", conf, flags=re.M)
    conf, m = re.subn(r"^(\s*)client_body_buffer_size \d+m;", r"\1client_body_buffer_size 8k;", conf, flags=re.M)
    assert n == m == 1
    (tmp_path / "nginx.conf").write_text(conf)
    trace = tmp_path / "nginx.strace"
    proc = subprocess.Popen([*strace_prefix(trace), NGINX, "-c", str(tmp_path / "nginx.conf"), "-p", str(tmp_path),
                             "-e", str(tmp_path / "logs" / "error.log"), "-g", "daemon off;"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + NGINX_START_S
        while time.monotonic() < deadline:
            try:
                get(f"http://127.0.0.1:{listen}/_replica/1/health", timeout=2)
                break
            except OSError:
                time.sleep(0.3)
        start = time.time()
        body = DICOM.read_bytes()
        req = urllib.request.Request(f"http://127.0.0.1:{listen}/_stcore/upload_file/s/f", data=body, method="PUT")
        try:
            urllib.request.urlopen(req, timeout=30)
        except urllib.error.HTTPError as e:
            assert e.code == 502                    # no replica: the body was read, then the connect failed
    finally:
        stop_nginx(proc)
    spooled = [w.path for w in traced_writes(trace, tmp_path) if w.time >= start and w.path.startswith(f"{tmp_path}/temp/")]
    assert spooled, "request buffering on, yet the trace shows no temporary file: the check above would miss it"
