#!/bin/sh
# Build the macOS installer package from the PyInstaller one-directory bundle (run on macOS 13+):
#
#   pyinstaller --noconfirm --clean packaging/linux/tripkey-agent.spec    # -> dist/tripkey-agent/
#   packaging/macos/build-pkg.sh 0.1.0                                   # -> dist/Tripkey-Agent-0.1.0.pkg
#
# Arguments: VERSION [BUNDLE_DIR (default dist/tripkey-agent)] [OUT_DIR (default dist)].
# Signing (optional; both needed for MDM deployment outside a test lab):
#   SIGN_APP="Developer ID Application: Example (TEAMID)"   codesign the bundle (hardened runtime,
#                                                            identifier com.tripkey.agent: the PPPC
#                                                            profile's code requirement names both)
#   SIGN_INSTALLER="Developer ID Installer: Example (TEAMID)" productbuild --sign
# STAGE_ONLY=DIR: lay out the payload in DIR and stop (no pkgbuild; used by the tests on Linux).
#
# Payload: /Library/Tripkey/tripkey-agent/ (the bundle), /Library/Tripkey/uninstall.sh,
# /Library/LaunchDaemons/com.tripkey.agent.plist (the agent, as root) and
# /Library/LaunchAgents/com.tripkey.tray.plist (the tray, in each GUI session); scripts/preinstall
# stops a running agent and tray, scripts/postinstall fixes ownership and bootstraps them.
set -eu

HERE=$(cd "$(dirname "$0")" && pwd)
IDENTIFIER=com.tripkey.agent
VERSION=${1:?usage: build-pkg.sh VERSION [BUNDLE_DIR] [OUT_DIR]}
BUNDLE=${2:-dist/tripkey-agent}
OUT=${3:-dist}

case "$VERSION" in
    *[!0-9.]* | "" | .* | *.) echo "build-pkg.sh: VERSION must look like 1.2.3, not '$VERSION'" >&2; exit 2 ;;
esac
if [ ! -x "$BUNDLE/tripkey-agent" ]; then
    echo "build-pkg.sh: $BUNDLE/tripkey-agent not found: build the bundle with PyInstaller first" >&2
    exit 2
fi

if [ -n "${STAGE_ONLY:-}" ]; then
    ROOT=$STAGE_ONLY
    mkdir -p "$ROOT"
else
    ROOT=$(mktemp -d "${TMPDIR:-/tmp}/tripkey-pkg.XXXXXX")
    trap 'rm -rf "$ROOT"' EXIT
fi

mkdir -p "$ROOT/Library/Tripkey" "$ROOT/Library/LaunchDaemons" "$ROOT/Library/LaunchAgents"
cp -R "$BUNDLE" "$ROOT/Library/Tripkey/tripkey-agent"
cp "$HERE/scripts/uninstall" "$ROOT/Library/Tripkey/uninstall.sh"
cp "$HERE/com.tripkey.agent.plist" "$ROOT/Library/LaunchDaemons/com.tripkey.agent.plist"
cp "$HERE/com.tripkey.tray.plist" "$ROOT/Library/LaunchAgents/com.tripkey.tray.plist"
chmod 0755 "$ROOT/Library/Tripkey/uninstall.sh"
chmod 0644 "$ROOT/Library/LaunchDaemons/com.tripkey.agent.plist" "$ROOT/Library/LaunchAgents/com.tripkey.tray.plist"
chmod -R go-w "$ROOT/Library/Tripkey"

if [ -n "${STAGE_ONLY:-}" ]; then
    echo "staged the payload in $ROOT"
    exit 0
fi

plutil -lint "$ROOT/Library/LaunchDaemons/com.tripkey.agent.plist" "$ROOT/Library/LaunchAgents/com.tripkey.tray.plist"
if [ -n "${SIGN_APP:-}" ]; then
    # Every Mach-O in the bundle, then the executable with the identifier the PPPC profile names.
    find "$ROOT/Library/Tripkey/tripkey-agent" -type f \( -name '*.so' -o -name '*.dylib' \) \
        -exec codesign --force --options runtime --timestamp --sign "$SIGN_APP" {} +
    codesign --force --options runtime --timestamp --identifier "$IDENTIFIER" --sign "$SIGN_APP" \
        "$ROOT/Library/Tripkey/tripkey-agent/tripkey-agent"
fi

mkdir -p "$OUT"
COMPONENT="$OUT/tripkey-agent-component.pkg"
pkgbuild --root "$ROOT" --scripts "$HERE/scripts" --identifier "$IDENTIFIER" --version "$VERSION" \
    --install-location / --ownership recommended "$COMPONENT"
PRODUCT="$OUT/Tripkey-Agent-$VERSION.pkg"
if [ -n "${SIGN_INSTALLER:-}" ]; then
    productbuild --distribution "$HERE/distribution.xml" --package-path "$OUT" --version "$VERSION" \
        --sign "$SIGN_INSTALLER" "$PRODUCT"
else
    productbuild --distribution "$HERE/distribution.xml" --package-path "$OUT" --version "$VERSION" "$PRODUCT"
fi
rm -f "$COMPONENT"
pkgutil --check-signature "$PRODUCT" || echo "build-pkg.sh: $PRODUCT is not signed (set SIGN_INSTALLER for MDM)" >&2
echo "built $PRODUCT"
