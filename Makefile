# make demo | make test: set everything up on a fresh Debian 12, then run.
PYTHON ?= python3
ACCEL  ?= tcg
VENV   := .venv
STAMP  := $(VENV)/.installed
GUEST  := guest/build/guest.bin
XSGUEST := guest/build/xsguest.bin

.PHONY: setup demo test xen-test xen-debs soak fuzz bench bench-quick bench-deps clean

include Makefile.rig
setup: $(STAMP) $(GUEST) $(XSGUEST)

$(STAMP): setup.cfg setup.py pyproject.toml libxc_shim/*.py libxc_shim/src/*/*.c libxc_shim/src/*/*.h
	./scripts/install-deps
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[test,plot]' --config-settings editable_mode=compat
	touch $@

$(GUEST): guest/workload.c guest/portio.h guest/qemu_channel.h guest/guest.ld guest/Makefile
	$(MAKE) -C guest

$(XSGUEST): guest/xsguest.c guest/portio.h guest/guest.ld guest/Makefile
	$(MAKE) -C guest build/xsguest.bin

demo: setup
	$(VENV)/bin/xenclone demo

test: setup
	$(VENV)/bin/python -m twisted.trial $(TRIAL_ARGS) tests

# The real-Xen rig alone (also part of make test): both boots, stock Xen and
# MEM_PAGING, every job; logs kept on failure.  ACCEL=kvm where the host has
# VMX/SVM (rig/README.md).
xen-test: setup
	ACCEL=$(ACCEL) $(VENV)/bin/python -m twisted.trial tests.test_xen_rig

# The patched hypervisor package an operator installs (docs/xen-patches.md):
# production patches only; XEN_DEBS_ARGS=--rig adds the rig-only one (AMD).
XEN_DEBS ?= build/xen-debs
xen-debs:
	XENCLONE_RIG_CACHE=$(RIG_CACHE) xen/build.sh --deb $(XEN_DEBS) $(XEN_DEBS_ARGS)

# 5 minutes of launching and destroying clones: no fd, thread or memory leak.
soak: setup
	$(VENV)/bin/python bench/soak.py --seconds 300

# xenclone against QEMU (eager restore, post-copy, template clones), CRIU
# (eager and lazy restore) and the limits, same guest and workloads:
# bench/results/compare-<time>.json + .md
bench: setup bench-deps
	cd bench && ../$(VENV)/bin/python compare.py

bench-quick: setup bench-deps
	cd bench && ../$(VENV)/bin/python compare.py --quick

# QEMU and CRIU are peers: Debian 12's CRIU fails on this kernel, so
# bench/get-criu.sh unpacks Debian 13's privately (without it the bench
# runs without CRIU and says so).
XENCLONE_CRIU_ROOT ?= /var/cache/xenclone-bench/criu-root
bench-deps:
	dpkg -s qemu-system-x86 >/dev/null 2>&1 || (apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq qemu-system-x86 >/dev/null)
	test -x $(XENCLONE_CRIU_ROOT)/usr/sbin/criu || ./bench/get-criu.sh || \
	  echo "bench: no CRIU (bench/get-criu.sh failed)"

# Hostile peers against the real memory server and daemon: FUZZ_EXAMPLES
# cases per target (three targets), then a summary.
FUZZ_EXAMPLES ?= 34000
# absolute: trial runs in _trial_temp
FUZZ_REPORT   := $(CURDIR)/$(VENV)/fuzz-report.jsonl
fuzz: setup
	rm -f $(FUZZ_REPORT)
	XENCLONE_FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) XENCLONE_FUZZ_REPORT=$(FUZZ_REPORT) \
	  $(VENV)/bin/python -m twisted.trial tests.test_fuzz_memserver tests.test_fuzz_control; \
	  status=$$?; $(VENV)/bin/python tests/fuzz_summary.py $(FUZZ_REPORT) && exit $$status

clean:
	rm -rf $(VENV) guest/build build xenclone/*.so
