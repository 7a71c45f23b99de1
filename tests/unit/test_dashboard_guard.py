"""The dashboard's guard and routes, request by request (Starlette's test client, no browser).

Every rule is broken once: no token, a wrong token, a wrong Host, a cross-site
POST, a POST without the CSRF token, a method that is not POST; and the
answers carry the Content-Security-Policy. The real server (uvicorn, a real
browser) is tested in tests/integration/test_dashboard.py.
"""

import pytest
from starlette.testclient import TestClient

from vboxlab.lab import Lab
from vboxlab.web.app import create_app
from vboxlab.web.guard import COOKIE, CSP, allowed_hosts, csrf_token

TOKEN = "t0ken-for-tests-only"
HOST = "testserver"


@pytest.fixture
def labs(tmp_path):
    base = tmp_path / "labs"
    base.mkdir(mode=0o700)
    return base


@pytest.fixture
def web(labs):
    app = create_app(labs, TOKEN, {HOST}, interval=0.2)
    with TestClient(app, base_url=f"http://{HOST}", follow_redirects=False) as client:
        yield client


def authed(web):
    web.cookies.set(COOKIE, TOKEN)
    return web


def test_no_token_no_entry(web):
    for path in ("/", "/api/labs", "/api/events", "/static/overview.js"):
        answer = web.get(path)
        assert answer.status_code == 403, path
        assert "no valid token" in answer.text
        assert answer.headers["content-security-policy"].startswith(CSP.split(";")[0])


def test_the_token_in_the_url_becomes_a_strict_cookie_and_leaves_the_url(web):
    answer = web.get(f"/?token={TOKEN}&tab=labs")
    assert answer.status_code == 303 and answer.headers["location"] == "/?tab=labs"
    cookie = answer.headers["set-cookie"]
    assert f"{COOKIE}={TOKEN}" in cookie and "HttpOnly" in cookie and "SameSite=Strict" in cookie
    assert web.get("/?token=wrong").status_code == 403
    page = authed(web).get("/")
    assert page.status_code == 200 and "vboxlab dashboard" in page.text
    assert f'content="{csrf_token(TOKEN)}"' in page.text


def test_bearer_tokens_work_for_scripts(web):
    answer = web.get("/api/labs", headers={"Authorization": f"Bearer {TOKEN}"})
    assert answer.status_code == 200 and answer.json()["labs"] == []
    assert web.get("/api/labs", headers={"Authorization": "Bearer nope"}).status_code == 403


def test_a_foreign_host_header_is_refused(web):
    answer = authed(web).get("/api/labs", headers={"Host": "evil.example:8470"})
    assert answer.status_code == 403 and "answers only to testserver" in answer.text


def test_mutations_need_post_same_origin_and_csrf(web):
    client = authed(web)
    good = {"Origin": f"http://{HOST}", "X-CSRF-Token": csrf_token(TOKEN)}
    cross = client.post("/api/clean", headers={**good, "Origin": "http://evil.example"})
    assert cross.status_code == 403 and "cross-origin request refused" in cross.text
    assert client.post("/api/clean", headers={"X-CSRF-Token": good["X-CSRF-Token"]}
                       ).status_code == 403  # no Origin at all
    missing = client.post("/api/clean", headers={"Origin": good["Origin"]})
    assert missing.status_code == 403 and "CSRF" in missing.text
    assert client.put("/api/clean", headers=good).status_code == 405
    assert client.delete("/api/labs/x/action", headers=good).status_code == 405
    done = client.post("/api/clean", headers=good)
    assert done.status_code == 200 and done.json() == {"result": {"removed": []}}


def test_every_answer_forbids_inline_script_and_other_origins(web):
    client = authed(web)
    for path in ("/", "/api/labs", "/static/overview.js", "/nope"):
        headers = client.get(path).headers
        csp = headers["content-security-policy"]
        assert "script-src 'self'" in csp and "'unsafe-inline'" not in csp
        assert "default-src 'none'" in csp and "frame-ancestors 'none'" in csp
        assert headers["x-frame-options"] == "DENY" and headers["referrer-policy"] == "no-referrer"
    page = client.get("/").text
    assert "<script>" not in page and "onclick=" not in page and "http://" not in page.lower()


def test_actions_report_vboxlab_errors(web, labs):
    client = authed(web)
    good = {"Origin": f"http://{HOST}", "X-CSRF-Token": csrf_token(TOKEN)}
    answer = client.post("/api/labs/ghost/action", headers=good, json={"action": "status"})
    assert answer.status_code == 400 and "no lab 'ghost'" in answer.json()["error"]
    assert client.post("/api/labs/ghost/action", headers=good,
                       content=b"not json").json()["error"] == "the request body is not JSON"
    too_big = client.post("/api/labs/x/action", headers=good, content=b"x" * (300 << 10))
    assert too_big.status_code == 413
    with Lab(base=labs) as lab:  # a live session's lab: shown, read-only
        answer = client.post(f"/api/labs/{lab.id}/action", headers=good,
                             json={"action": "machine.stop", "args": {"machine": "vm"}})
        assert answer.status_code == 400
        assert "belongs to the running test session" in answer.json()["error"]
        listed = client.get("/api/labs").json()
        assert [item["status"] for item in listed["labs"]] in ([], ["session"])
    assert client.get("/api/labs/..%2F..%2Fetc/topology.svg").status_code in (400, 404)
    assert client.get("/api/labs/ghost/captures/..%2Fledger.jsonl").status_code in (400, 404)


def test_allowed_hosts_name_the_bound_address():
    assert allowed_hosts("127.0.0.1", 8470) == {"127.0.0.1:8470", "localhost:8470",
                                                "[::1]:8470"}
    assert allowed_hosts("192.0.2.7", 80) == {"192.0.2.7:80"}
    assert allowed_hosts("2001:db8::1", 80) == {"[2001:db8::1]:80"}
