"""The provider conformance suite: one set of tests every provider must pass.

Parametrised by provider (``qemu``, ``netns``, ``libvirt``); each test checks a
capability the provider declares, and for one it does not declare, that asking
for it fails with NotSupported saying what to use instead (never a skip). A
provider added later is done when it passes this suite.
"""

import pytest

from tests.sshd import LocalSshd
from vboxlab.errors import HostError
from vboxlab.lab import Lab
from vboxlab.pytest.policy import missing_capability

#: provider variants: ``libvirt-remote`` is the libvirt provider on a second host, simulated by
#: an sshd on 127.0.0.1 (``qemu+ssh://root@127.0.0.1:PORT/system``)
VARIANTS = ["qemu", "netns", "libvirt", "libvirt-remote"]


def provider_or_skip(lab: Lab, name: str) -> None:
    """The provider's host check (root for netns, libvirtd for libvirt): outside CI a host
    that lacks it skips; under CI=true it fails."""
    try:
        lab.provider_for(name).preflight([])
    except HostError as exc:
        missing_capability(f"the {name} provider: {exc}")


@pytest.fixture(scope="module", params=VARIANTS)
def variant(request):
    return request.param


@pytest.fixture(scope="module")
def provider(variant):
    """The provider's name (what ``Lab(provider=...)`` and topologies take)."""
    return variant.removesuffix("-remote")


@pytest.fixture(scope="module")
def second_host(variant, tmp_path_factory):
    """The remote variant's host (an sshd living as long as the module), else None."""
    if not variant.endswith("-remote"):
        yield None
        return
    with LocalSshd(tmp_path_factory.mktemp("host2")) as host:
        yield host


@pytest.fixture(scope="module")
def libvirt_uri(second_host):
    return second_host.libvirt_uri if second_host is not None else None


@pytest.fixture(scope="module")
def plab(provider, libvirt_uri, tmp_path_factory):
    """A lab whose default provider is the one under test."""
    with Lab(base=tmp_path_factory.mktemp("prov") / "labs", provider=provider, accel="tcg",
             libvirt_uri=libvirt_uri) as lab:
        provider_or_skip(lab, provider)
        yield lab


@pytest.fixture(scope="module")
def machine(plab):
    """The suite's shared machine of that provider, booted once per provider."""
    return plab.vm("conf")
