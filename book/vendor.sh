#!/usr/bin/env bash
# Fetch the JavaScript the offline book serves itself, by exact version, from the npm registry:
#   mathjax@3 (es5 bundle, SVG output: no web fonts to load) -> $DEST/mathjax/
#   @jupyter-widgets/html-manager@1 (standalone embed.js)    -> $DEST/widgets/
# Sphinx copies $DEST into the site's _static/ folder (see html_static_path in _config.yml).
set -euo pipefail
DEST=${1:?usage: vendor.sh DEST}
MATHJAX=mathjax@3.2.2
WIDGETS=@jupyter-widgets/html-manager@1.0.15

if ! command -v npm >/dev/null; then
  echo "book/vendor.sh: npm is needed to fetch $MATHJAX and $WIDGETS (install Node.js 18+)" >&2
  exit 1
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
(cd "$tmp" && npm pack --silent "$MATHJAX" "$WIDGETS" >/dev/null)
rm -rf "$DEST/mathjax" "$DEST/widgets"
mkdir -p "$DEST/mathjax" "$DEST/widgets" "$tmp/mj" "$tmp/w"
tar xzf "$tmp"/mathjax-*.tgz -C "$tmp/mj"
tar xzf "$tmp"/jupyter-widgets-html-manager-*.tgz -C "$tmp/w"
cp -r "$tmp/mj/package/es5/." "$DEST/mathjax/"
cp -r "$tmp/w/package/dist/." "$DEST/widgets/"
rm -f "$DEST"/widgets/*.map "$DEST"/widgets/*amd.js
test -s "$DEST/mathjax/tex-svg.js" && test -s "$DEST/widgets/embed.js"
echo "book/vendor.sh: $MATHJAX and $WIDGETS are in $DEST"
