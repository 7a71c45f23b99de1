# vboxlab: `make demo` and `make test` set up everything on a fresh Debian 12 machine.
# Both are idempotent: a second run installs nothing and rebuilds nothing.

SHELL := /bin/bash
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin
REPORTS ?= reports
PYTEST_ARGS ?=
# `make test` runs the suite on this many pytest-xdist workers, a test file each at a time (a
# file's shared labs stay in one process); a VM under TCG keeps one core busy, so two workers
# use both cores of a 2-core machine. TEST_WORKERS=0: one process.
TEST_WORKERS ?= 2

# Debian packages the tests and the template build need on the host
APT_PACKAGES := qemu-system-x86 qemu-utils openssh-client e2fsprogs util-linux iproute2 \
	procps ca-certificates chromium gcc libc6-dev tcpdump tshark iputils-ping iperf3 vde2 \
	isolinux syslinux-common grub-efi-amd64-bin grub-common mtools dosfstools ovmf xorriso \
	debootstrap nmap clamav lynis yara \
	libvirt-daemon libvirt-daemon-driver-qemu libvirt-clients libvirt-dev pkg-config \
	openssh-server rsync virt-v2v
# virt-v2v: libguestfs' OVA reader, a second reader of what `vboxlab export --format ova` writes
# openssh-server: tests start their own sshd on 127.0.0.1 (a second host, simulated); where the
# package starts the system's sshd on install, set-up stops the one it just installed
# from bookworm-backports (Suricata 7; bookworm itself has 6). Where services start on install,
# the package starts a system-wide Suricata sniffing eth0; vboxlab runs its own per test, so
# set-up stops the one it just installed.
BACKPORTS_PACKAGES := suricata
BACKPORTS_LIST := /etc/apt/sources.list.d/vboxlab-backports.sources

SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: help deps venv template templates libvirt setup demo test lint unit bench clean-labs

help:
	@echo "make demo   - set up, build the tiny template, run examples/ against real VMs"
	@echo "make test   - set up, then lint and the whole test suite"
	@echo "make bench  - run benchmarks/ (JSON in $(REPORTS)/)"

deps:
	@missing=""; for p in $(APT_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  $(SUDO) apt-get update -q && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q --no-install-recommends $$missing && \
	  case " $$missing " in *" openssh-server "*) $(SUDO) /etc/init.d/ssh stop >/dev/null 2>&1 || true;; esac; \
	else echo "Debian packages: all present"; fi
	@[ -n "$$(find /var/lib/apt/lists -maxdepth 1 -name '*Packages*' -print -quit)" ] || $(SUDO) apt-get update -q
	@if ! grep -rqs 'bookworm-backports' /etc/apt/sources.list /etc/apt/sources.list.d/; then \
	  echo "adding the bookworm-backports source ($(BACKPORTS_LIST))"; \
	  printf 'Types: deb\nURIs: http://deb.debian.org/debian\nSuites: bookworm-backports\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' \
	    | $(SUDO) tee $(BACKPORTS_LIST) >/dev/null && $(SUDO) apt-get update -q; fi
	@missing=""; for p in $(BACKPORTS_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "installing from bookworm-backports:$$missing"; \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q --no-install-recommends -t bookworm-backports $$missing && \
	  { $(SUDO) /etc/init.d/suricata stop >/dev/null 2>&1 || true; }; \
	else echo "backports packages: all present"; fi

$(BIN)/activate:
	@$(PYTHON) -c 'import ensurepip, venv' 2>/dev/null || { $(SUDO) apt-get update -q && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q python3-venv; }
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: pyproject.toml | $(BIN)/activate
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

# The OSV JSON schema (vulnerability records are checked against it): the osv wheel on PyPI
# ships ossf/osv-schema; only its validation/schema.json is taken, nothing is installed.
OSV_SCHEMA := $(VENV)/share/vboxlab/osv-schema.json
$(OSV_SCHEMA): | $(VENV)/.installed
	@rm -rf $(VENV)/.osv-wheel && mkdir -p $(dir $@)
	$(BIN)/pip download -q --no-deps --only-binary :all: -d $(VENV)/.osv-wheel 'osv==0.0.22'
	$(BIN)/python -c 'import sys, zipfile, glob; z = zipfile.ZipFile(glob.glob(sys.argv[1] + "/osv-*.whl")[0]); open(sys.argv[2], "wb").write(z.read("osv/osv-schema/validation/schema.json"))' $(VENV)/.osv-wheel $@
	@rm -rf $(VENV)/.osv-wheel

venv: $(VENV)/.installed $(OSV_SCHEMA)

template: deps venv
	$(BIN)/vboxlab templates build tiny

# the Debian templates: debian-12 and vulnlab by debootstrap (about 2.5 min each the first
# time), netlab and the development environments as layers over debian-12 (about 2-4 min each:
# the base boots once and apt installs what they add); all cached after
LAYERED := netlab dev-python dev-web dev-c dev-node
templates: deps venv template
	@if [ "$$(id -u)" = 0 ]; then $(BIN)/vboxlab templates build debian-12 vulnlab $(LAYERED); \
	else echo "not building debian-12, vulnlab and $(LAYERED): debootstrap needs root (their tests will skip)"; fi

# libvirtd for the libvirt provider (root). Not libvirt-daemon-system: it pulls systemd, which
# is not PID 1 on these machines; so the daemons are started by hand, QEMU domains run as root,
# and a qemu.conf of the user's own is never touched.
LIBVIRT_QEMU_CONF := /etc/libvirt/qemu.conf
libvirt: deps
	@if [ "$$(id -u)" != 0 ]; then \
	  echo "not starting libvirtd: it needs root (the libvirt provider's tests will skip)"; \
	else \
	  id libvirt-qemu >/dev/null 2>&1 || useradd --system --no-create-home --shell /usr/sbin/nologin libvirt-qemu; \
	  mkdir -p /var/log/libvirt /var/lib/libvirt/qemu /run/libvirt; \
	  [ -f $(LIBVIRT_QEMU_CONF) ] || printf '# written by vboxlab (make libvirt): QEMU domains run as root\nuser = "root"\ngroup = "root"\n' > $(LIBVIRT_QEMU_CONF); \
	  pgrep -x virtlogd >/dev/null || virtlogd -d; \
	  pgrep -x libvirtd >/dev/null || libvirtd -d; \
	  for i in $$(seq 100); do virsh -c qemu:///system version >/dev/null 2>&1 && break; sleep 0.1; done; \
	  virsh -c qemu:///system version >/dev/null && echo "libvirtd: running"; \
	fi

setup: deps venv template

demo: setup
	@mkdir -p $(REPORTS)
	$(BIN)/pytest examples/ -v --junitxml=$(REPORTS)/demo-junit.xml $(PYTEST_ARGS)
	@echo "demo report: $(CURDIR)/$(REPORTS)/demo-junit.xml"

lint: venv
	$(BIN)/ruff check vboxlab tests examples benchmarks conftest.py
	$(BIN)/mypy

test: setup templates libvirt lint
	@mkdir -p $(REPORTS)
	$(BIN)/pytest -n $(TEST_WORKERS) --dist loadfile --junitxml=$(REPORTS)/test-junit.xml \
	  $(PYTEST_ARGS)
	@echo "test report: $(CURDIR)/$(REPORTS)/test-junit.xml"

unit: venv
	$(BIN)/pytest tests/unit $(PYTEST_ARGS)

bench: setup templates
	@mkdir -p $(REPORTS)
	$(BIN)/python benchmarks/boot.py --output $(REPORTS)/bench-boot.json
	$(BIN)/python benchmarks/channels.py --output $(REPORTS)/bench-channels.json
	$(BIN)/python benchmarks/snapshots.py --output $(REPORTS)/bench-snapshots.json
	$(BIN)/python benchmarks/fabric.py --output $(REPORTS)/bench-fabric.json
	$(BIN)/python benchmarks/scale.py --output $(REPORTS)/bench-scale.json
	$(BIN)/python benchmarks/media.py --output $(REPORTS)/bench-media.json
	$(BIN)/python benchmarks/templates.py --output $(REPORTS)/bench-templates.json
	$(BIN)/python benchmarks/console.py --output $(REPORTS)/bench-console.json
	$(BIN)/python benchmarks/dashboard.py --output $(REPORTS)/bench-dashboard.json
	$(BIN)/python benchmarks/netsec.py --output $(REPORTS)/bench-netsec.json
	@if [ "$$(id -u)" = 0 ]; then $(BIN)/python benchmarks/leaks.py --output $(REPORTS)/bench-leaks.json && \
	  $(BIN)/python benchmarks/scans.py --output $(REPORTS)/bench-scans.json; \
	else echo "not running benchmarks/leaks.py and scans.py: they need root"; fi

clean-labs: venv
	$(BIN)/vboxlab clean
