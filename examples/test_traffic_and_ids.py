"""What crossed the lab's links, as assertions; intrusion detection over the same captures
(README: Traffic and intrusion detection)."""

import pytest


@pytest.mark.ids(expect=["sid:1000003"])  # the canary probe must be seen, nothing else
@pytest.mark.lab(topology="topologies/scan-lab.yaml")
def test_web_traffic_stays_in_the_lab_and_a_probe_is_detected(network, lab):
    web, client = lab.node("web"), lab.node("client")
    web.succeed("mkdir -p /srv && echo hi > /srv/index.html && httpd -p 80 -h /srv")
    client.succeed("curl -sf http://web/")
    client.fail("curl -sf http://web/vboxlab-canary")  # 404, but the IDS saw the request

    flows = network.flows()
    assert flows.between("client", "web").ports == {80}
    assert not flows.to_outside()
    assert not flows.cleartext_credentials()
