# The two commands of the README, and what they need on a fresh Debian 12 / Raspberry Pi OS machine.
# Every target is idempotent and quick when the work is already done.

VENV      := .venv
PY        := $(VENV)/bin/python
STAMP     := $(VENV)/.installed
APT_PKGS  := mosquitto gpsd socat openssl python3-venv \
             nftables rauc squashfs-tools genimage mtools dosfstools e2fsprogs fdisk
# Only for `make image` and `make image-check` (docs/image.md).
IMAGE_PKGS := mmdebstrap arch-test qemu-user-static binfmt-support qemu-system-arm
SUDO      := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
DURATION  ?= 60

.PHONY: demo test lint sysdeps venv clean image image-check

demo: venv
	$(VENV)/bin/hes demo --duration $(DURATION)

test: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/pytest

lint: venv
	$(VENV)/bin/ruff check .

# apt packages, installed only when one of their commands is missing.
sysdeps:
	@missing=""; \
	for cmd in mosquitto gpsd socat openssl nft rauc mksquashfs genimage mcopy mkfs.vfat mke2fs sfdisk; do \
	  PATH=$$PATH:/usr/sbin:/sbin command -v $$cmd >/dev/null || missing=1; done; \
	python3 -c 'import venv, ensurepip' 2>/dev/null || missing=1; \
	if [ -n "$$missing" ]; then \
	  echo "installing system packages: $(APT_PKGS)"; \
	  $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends $(APT_PKGS); \
	fi

venv: sysdeps $(STAMP)

# The SD image, from Debian's archive (many minutes; cached base in build/image/base.tar): docs/image.md.
image: venv
	@PATH=$$PATH:/usr/sbin:/sbin command -v mmdebstrap >/dev/null && command -v qemu-system-aarch64 >/dev/null \
	  && command -v arch-test >/dev/null || { echo "installing image tools: $(IMAGE_PKGS)"; \
	  $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends $(IMAGE_PKGS); }
	$(SUDO) env PY=$(PY) nice -n 10 image-build/build.sh

# Boots the image under qemu: READY, read-only root, writable /data, then a power cut during collection.
image-check: venv
	$(SUDO) env PY=$(PY) image-build/boot-check.sh build/image

$(STAMP): setup.cfg pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[sim,test]'
	touch $@

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache .hypothesis run
