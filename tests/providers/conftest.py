"""The provider conformance suite: one set of tests every provider must pass.

Parametrised by provider (``qemu``, ``netns``, ``libvirt``); each test checks a
capability the provider declares, and for one it does not declare, that asking
for it fails with NotSupported saying what to use instead (never a skip). A
provider added later is done when it passes this suite.
"""

import pytest

from vboxlab.errors import HostError
from vboxlab.lab import Lab
from vboxlab.pytest.policy import missing_capability

PROVIDERS = ["qemu", "netns", "libvirt"]


def provider_or_skip(lab: Lab, name: str) -> None:
    """The provider's host check (root for netns, libvirtd for libvirt): outside CI a host
    that lacks it skips; under CI=true it fails."""
    try:
        lab.provider_for(name).preflight([])
    except HostError as exc:
        missing_capability(f"the {name} provider: {exc}")


@pytest.fixture(scope="module", params=PROVIDERS)
def provider(request):
    return request.param


@pytest.fixture(scope="module")
def plab(provider, tmp_path_factory):
    """A lab whose default provider is the one under test."""
    with Lab(base=tmp_path_factory.mktemp("prov") / "labs", provider=provider, accel="tcg") as lab:
        provider_or_skip(lab, provider)
        yield lab


@pytest.fixture(scope="module")
def machine(plab):
    """The suite's shared machine of that provider, booted once per provider."""
    return plab.vm("conf")
