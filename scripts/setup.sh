#!/bin/sh
# Sets up a Debian 12 (or newer) machine for imagebuilder: the host tools it runs (QEMU, gpgv
# and the Debian archive keyring), the tools the tests use as real validators, a JDK to compile
# the examples, and a virtualenv in .venv with imagebuilder installed in editable mode.
set -eu
cd "$(dirname "$0")/.."
SUDO=""
[ "$(id -u)" = 0 ] || SUDO="sudo"
PACKAGES="python3 python3-venv qemu-system-x86 qemu-utils ovmf gpgv debian-archive-keyring \
  syslinux syslinux-common isolinux systemd-boot-efi mtools dosfstools fdisk gdisk shellcheck \
  openjdk-17-jdk-headless busybox-static cpio zstd xz-utils xxhash gnupg genisoimage gcc \
  skopeo time docker-registry bmap-tools ipxe-qemu libarchive-tools iproute2 erofs-utils \
  libjakarta-servlet-api-java libservlet-api-java libjackson2-databind-java \
  jython libzookeeper-java tomcat10-common libtomcat10-java"
# The last line: the corpus of support/corpus.py runs Jython and ZooKeeper on the host with the
# libraries their jars name in /usr/share/java, and the examples war on Debian's Tomcat.
missing=""
for p in $PACKAGES; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
    $SUDO apt-get update -q
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends $missing
fi
if [ ! -x .venv/bin/imagebuilder ] || [ pyproject.toml -nt .venv/bin/imagebuilder ]; then
    python3 -m venv .venv
    .venv/bin/pip install -q --upgrade pip
    # compat: a plain path in a .pth file; the default editable finder costs ~10 ms per start
    .venv/bin/pip install -q -e '.[test]' --config-settings editable_mode=compat
    touch .venv/bin/imagebuilder
fi
