#!/bin/sh
# Runs a download command of the image build (pip, uv) and, when it fails on TLS certificate verification, says
# what fixes it in one line: behind a TLS-intercepting proxy the proxy's CA must be trusted inside the image.
#   tls-hint <command> [args...]
log=$(mktemp)
"$@" 2>"$log"
code=$?
cat "$log" >&2
if [ "$code" -ne 0 ] && grep -qiE 'CERTIFICATE_VERIFY_FAILED|certificate verify failed|invalid peer certificate|UnknownIssuer|self[- ]signed certificate' "$log"; then
  echo "fedvla image build: error: a download failed TLS certificate verification (a TLS-intercepting proxy?): put the proxy's CA certificate (PEM, *.crt) in images/ca-certificates/ and build again (images/ca-certificates/README.md)" >&2
fi
rm -f "$log"
exit "$code"
