"""A web server in one VM, checked from a second VM and from the host.

Copy this file to start a multi-machine test: module-scoped fixtures boot each
machine once for all the tests below, and the session's ``lab`` removes them.
"""

import urllib.error
import urllib.request

import pytest

PAGE = "<h1>hello from vboxlab</h1>"


@pytest.fixture(scope="module")
def web(lab):
    vm = lab.vm("web")
    vm.succeed(f"mkdir -p /srv/www && echo '{PAGE}' > /srv/www/index.html")
    vm.succeed("httpd -p 80 -h /srv/www")
    vm.wait_for_port(80)
    yield vm
    lab.remove_vm("web")


@pytest.fixture(scope="module")
def web_url(web):
    """The page as the host and other VMs see it, through a port forwarded on 127.0.0.1."""
    return web.forward_port(80)


@pytest.fixture(scope="module")
def client(lab):
    vm = lab.vm("client", memory=192)
    yield vm
    lab.remove_vm("client")


def test_the_host_gets_the_page(web_url):
    with urllib.request.urlopen(f"http://127.0.0.1:{web_url}/", timeout=10) as response:
        assert response.status == 200
        assert response.read().decode().strip() == PAGE


def test_another_vm_gets_the_page(client, web_url):
    # QEMU's user network shows the host's loopback to guests as 10.0.2.2
    assert client.succeed(f"wget -q -O - http://10.0.2.2:{web_url}/").strip() == PAGE


def test_a_missing_page_is_a_404_everywhere(client, web_url):
    client.fail(f"wget -q -O - http://10.0.2.2:{web_url}/missing.html")
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(f"http://127.0.0.1:{web_url}/missing.html", timeout=10)
    assert info.value.code == 404
    info.value.close()


def test_the_server_log_shows_no_crash(web):
    assert "httpd" in web.succeed("ps")
