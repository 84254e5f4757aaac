#!/bin/sh
# Build tripkey-agent-<version>-1.<arch>.rpm from the PyInstaller output (needs rpmbuild).
#
#   packaging/linux/build-rpm.sh [DIST_DIR] [VERSION] [OUT_DIR]
#
# Same layout as the deb (see build-deb.sh), with the unit in /usr/lib/systemd/system.
set -eu

HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
DIST=${1:-$REPO/dist/tripkey-agent}
VERSION=${2:-$(sed -n 's/^version *= *"\(.*\)"/\1/p' "$REPO/pyproject.toml" | head -n 1)}
OUT=${3:-$REPO/dist}

command -v rpmbuild >/dev/null 2>&1 || { echo "build-rpm.sh: rpmbuild not found (dnf install rpm-build / apt-get install rpm)" >&2; exit 2; }
[ -x "$DIST/tripkey-agent" ] || { echo "build-rpm.sh: $DIST/tripkey-agent missing: run pyinstaller packaging/linux/tripkey-agent.spec first" >&2; exit 2; }

TOP=$(mktemp -d)
trap 'rm -rf "$TOP"' EXIT INT TERM
mkdir -p "$TOP/SOURCES" "$TOP/SPECS" "$TOP/BUILD" "$TOP/RPMS" "$TOP/SRPMS"
cp -a "$DIST" "$TOP/SOURCES/tripkey-agent"
cp "$HERE/tripkey-agent.service" "$HERE/tripkey-tray.desktop" "$HERE/agent.toml.example" "$HERE/README.md" "$TOP/SOURCES/"

cat > "$TOP/SPECS/tripkey-agent.spec" <<SPEC
Name:           tripkey-agent
Version:        $VERSION
Release:        1
Summary:        Tripkey endpoint agent
License:        Apache-2.0
URL:            https://github.com/tripkey/tripkey
AutoReqProv:    no
Recommends:     audit
%global debug_package %{nil}
%global __os_install_post %{nil}

%description
Plants a unique canary AWS credential under a named AWS CLI profile for every
user and records which process read the file, so an alert on the key's use in
AWS already names the reader.

%install
mkdir -p %{buildroot}/opt %{buildroot}%{_bindir} %{buildroot}%{_unitdir} %{buildroot}%{_docdir}/tripkey-agent %{buildroot}%{_sysconfdir}/xdg/autostart
cp -a %{_sourcedir}/tripkey-agent %{buildroot}/opt/tripkey-agent
ln -s /opt/tripkey-agent/tripkey-agent %{buildroot}%{_bindir}/tripkey-agent
install -m 0644 %{_sourcedir}/tripkey-agent.service %{buildroot}%{_unitdir}/tripkey-agent.service
install -m 0644 %{_sourcedir}/tripkey-tray.desktop %{buildroot}%{_sysconfdir}/xdg/autostart/tripkey-tray.desktop
install -m 0644 %{_sourcedir}/agent.toml.example %{_sourcedir}/README.md %{buildroot}%{_docdir}/tripkey-agent/

%files
/opt/tripkey-agent
%{_bindir}/tripkey-agent
%{_unitdir}/tripkey-agent.service
%config(noreplace) %{_sysconfdir}/xdg/autostart/tripkey-tray.desktop
%doc %{_docdir}/tripkey-agent

%post
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload || :
    systemctl enable tripkey-agent.service || :
    [ -f /etc/tripkey/agent.toml ] && systemctl restart tripkey-agent.service || :
fi

%preun
if [ \$1 -eq 0 ] && [ -d /run/systemd/system ]; then
    systemctl disable --now tripkey-agent.service || :
fi

%postun
[ -d /run/systemd/system ] && systemctl daemon-reload || :
SPEC

rpmbuild --quiet --define "_topdir $TOP" --define "_unitdir /usr/lib/systemd/system" -bb "$TOP/SPECS/tripkey-agent.spec"
mkdir -p "$OUT"
find "$TOP/RPMS" -name '*.rpm' -exec cp {} "$OUT/" \; -exec sh -c 'echo "$1" | sed "s#.*/#$2/#"' _ {} "$OUT" \;
