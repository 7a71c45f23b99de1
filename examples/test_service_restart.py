"""A service that must survive a restart: installed on the data disk, checked after reboot.

The tiny template runs every executable in /data/rc.d at boot, and /data lives on
the VM's own copy-on-write disk, so it persists across ``stop()``/``start()``.
"""

import json
import urllib.request
from pathlib import Path

import pytest

SERVICE = Path(__file__).parent / "files" / "S50health"


@pytest.fixture(scope="module")
def server(lab):
    vm = lab.vm("svc")
    vm.succeed("mkdir -p /data/rc.d /data/www")
    vm.copy_to(SERVICE, "/data/rc.d/S50health")
    vm.succeed("""echo '{"status": "ok"}' > /data/www/health""")
    vm.succeed("/data/rc.d/S50health >/dev/null 2>&1 &")
    vm.wait_for_port(8080)
    yield vm
    lab.remove_vm("svc")


def health(vm):
    port = vm.forward_port(8080)
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=10) as response:
        return json.loads(response.read())


def test_service_answers(server):
    assert health(server) == {"status": "ok"}


def test_service_survives_a_clean_restart(server):
    server.stop()
    server.start()
    server.wait_for_port(8080, timeout=30)
    assert health(server) == {"status": "ok"}


def test_service_survives_a_crash_of_the_whole_vm(server):
    server.succeed("sync")
    server.kill()  # pull the plug: no shutdown at all
    server.start()
    server.wait_for_port(8080, timeout=30)
    assert health(server) == {"status": "ok"}
