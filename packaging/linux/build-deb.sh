#!/bin/sh
# Build tripkey-agent_<version>_<arch>.deb from the PyInstaller output.
#
#   packaging/linux/build-deb.sh [DIST_DIR] [VERSION] [OUT_DIR]
#     DIST_DIR  PyInstaller's one-directory output (default dist/tripkey-agent)
#     VERSION   package version (default: the version in pyproject.toml)
#     OUT_DIR   where the .deb goes (default dist)
#
# Layout: /opt/tripkey-agent/ (the bundle), /usr/bin/tripkey-agent -> the bundle's executable,
# /lib/systemd/system/tripkey-agent.service, /usr/share/doc/tripkey-agent/ (README, example
# config). The config itself (/etc/tripkey/agent.toml, mode 0600, root) is written by the admin
# or the MDM/config-management tool: it holds the enrollment token, so no package ships one.
set -eu

HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
DIST=${1:-$REPO/dist/tripkey-agent}
VERSION=${2:-$(sed -n 's/^version *= *"\(.*\)"/\1/p' "$REPO/pyproject.toml" | head -n 1)}
OUT=${3:-$REPO/dist}
ARCH=${DEB_ARCH:-$(dpkg --print-architecture 2>/dev/null || echo amd64)}

command -v dpkg-deb >/dev/null 2>&1 || { echo "build-deb.sh: dpkg-deb not found (apt-get install dpkg)" >&2; exit 2; }
[ -x "$DIST/tripkey-agent" ] || { echo "build-deb.sh: $DIST/tripkey-agent missing: run pyinstaller packaging/linux/tripkey-agent.spec first" >&2; exit 2; }
[ -n "$VERSION" ] || { echo "build-deb.sh: cannot determine the version" >&2; exit 2; }

STAGE=$(mktemp -d)
trap 'rm -rf "$STAGE"' EXIT INT TERM
ROOT="$STAGE/root"
mkdir -p "$ROOT/DEBIAN" "$ROOT/opt" "$ROOT/usr/bin" "$ROOT/lib/systemd/system" "$ROOT/usr/share/doc/tripkey-agent" \
  "$ROOT/etc/xdg/autostart"
cp -a "$DIST" "$ROOT/opt/tripkey-agent"
ln -s /opt/tripkey-agent/tripkey-agent "$ROOT/usr/bin/tripkey-agent"
install -m 0644 "$HERE/tripkey-agent.service" "$ROOT/lib/systemd/system/tripkey-agent.service"
# The per-user tray starts with each desktop session (XDG autostart), never as root.
install -m 0644 "$HERE/tripkey-tray.desktop" "$ROOT/etc/xdg/autostart/tripkey-tray.desktop"
install -m 0644 "$HERE/agent.toml.example" "$ROOT/usr/share/doc/tripkey-agent/agent.toml.example"
install -m 0644 "$HERE/README.md" "$ROOT/usr/share/doc/tripkey-agent/README.md"
SIZE=$(du -sk "$ROOT" | cut -f1)

cat > "$ROOT/DEBIAN/control" <<CONTROL
Package: tripkey-agent
Version: $VERSION
Architecture: $ARCH
Maintainer: Tripkey maintainers <tripkey@example.com>
Installed-Size: $SIZE
Depends: libc6
Recommends: auditd
Section: admin
Priority: optional
Homepage: https://github.com/tripkey/tripkey
Description: Tripkey endpoint agent
 Plants a unique canary AWS credential under a named AWS CLI profile for
 every user and records which process read the file (fanotify or audit), so
 an alert on the key's use in AWS already names the reader.
CONTROL

cat > "$ROOT/DEBIAN/postinst" <<'POSTINST'
#!/bin/sh
set -e
if [ "$1" = configure ] && [ -d /run/systemd/system ]; then
    systemctl daemon-reload || true
    systemctl enable tripkey-agent.service || true
    if [ -f /etc/tripkey/agent.toml ]; then
        systemctl restart tripkey-agent.service || true
    else
        echo "tripkey-agent: write /etc/tripkey/agent.toml (see /usr/share/doc/tripkey-agent/agent.toml.example), then: systemctl start tripkey-agent" >&2
    fi
fi
exit 0
POSTINST

cat > "$ROOT/DEBIAN/prerm" <<'PRERM'
#!/bin/sh
set -e
if [ -d /run/systemd/system ]; then
    case "$1" in
        remove|deconfigure) systemctl disable --now tripkey-agent.service || true ;;
        upgrade) systemctl stop tripkey-agent.service || true ;;
    esac
fi
exit 0
PRERM

cat > "$ROOT/DEBIAN/postrm" <<'POSTRM'
#!/bin/sh
set -e
# The agent's state (/var/lib/tripkey: device identity, read log) is kept on remove and deleted on
# purge. Planted profiles are removed by `tripkey-agent unplant` before uninstalling, never here.
if [ "$1" = purge ]; then
    rm -rf /var/lib/tripkey
fi
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload || true
fi
exit 0
POSTRM
chmod 0755 "$ROOT/DEBIAN/postinst" "$ROOT/DEBIAN/prerm" "$ROOT/DEBIAN/postrm"

mkdir -p "$OUT"
DEB="$OUT/tripkey-agent_${VERSION}_${ARCH}.deb"
dpkg-deb --root-owner-group --build "$ROOT" "$DEB" >/dev/null
echo "$DEB"
