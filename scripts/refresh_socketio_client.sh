#!/usr/bin/env bash
# Re-vendor the official Socket.IO browser client into relay/static/vendor/ from the npm
# package `socket.io-client` (4.x by default), with its licence. No build step, no CDN:
# relay serves the file itself so the chat page works with no internet.
#
#   scripts/refresh_socketio_client.sh            # newest 4.x
#   scripts/refresh_socketio_client.sh 4.8.1      # a given version
set -euo pipefail

spec="${1:-4}"
root="$(cd "$(dirname "$0")/.." && pwd)"
dest="$root/relay/static/vendor/socket.io"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

cd "$work"
tarball="$(npm pack --silent --no-audit --no-fund "socket.io-client@$spec" | tail -n 1)"
tar -xzf "$tarball"
pkg="$work/package"
version="$(node -p "require('$pkg/package.json').version")"
case "$version" in
    4.*) ;;
    *) echo "refusing socket.io-client $version: the page needs 4.x" >&2; exit 1 ;;
esac
for f in dist/socket.io.esm.min.js LICENSE; do
    [ -f "$pkg/$f" ] || { echo "socket.io-client $version has no $f" >&2; exit 1; }
done

mkdir -p "$dest"
# The source map is left out (190 KB, only for debugging the library itself); drop its
# reference too so browser devtools do not ask for a file relay does not serve.
sed '/^\/\/# sourceMappingURL=/d' "$pkg/dist/socket.io.esm.min.js" > "$dest/socket.io.esm.min.js"
cp "$pkg/LICENSE" "$dest/LICENSE"
printf 'socket.io-client %s\nfrom https://www.npmjs.com/package/socket.io-client (npm pack, dist/socket.io.esm.min.js)\nrefreshed with scripts/refresh_socketio_client.sh\n' \
    "$version" > "$dest/VERSION"
echo "vendored socket.io-client $version into ${dest#"$root"/}"
