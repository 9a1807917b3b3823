#!/bin/sh
# A self-signed development CA and certificates issued by it, for trying
# Ferric's TLS (docs/security.md) — never for production.
#
#   scripts/dev-ca.sh DIR [NAME ...]
#
# DIR/ca.pem, DIR/ca.key       the CA (created once, reused on later runs)
# DIR/NAME.pem, DIR/NAME.key   a certificate for each NAME (default: "server"
#                              and "client"), issued by the CA, with
#                              * subjectAltName: DNS:localhost, IP:127.0.0.1,
#                                IP:::1, plus $SANS (e.g. SANS="DNS:c1.lab,IP:10.0.0.5")
#                              * extendedKeyUsage serverAuth and clientAuth, so one
#                                certificate serves a conductor's gRPC listener and
#                                authenticates its own calls (mutual TLS)
#
# Example (all-in-one over HTTPS, the baremetal CLI trusting the CA):
#   scripts/dev-ca.sh /tmp/ferric-ca
#   FERRIC_API__TLS_CERT_FILE=/tmp/ferric-ca/server.pem FERRIC_API__TLS_KEY_FILE=/tmp/ferric-ca/server.key \
#     ferric all-in-one
#   baremetal --os-auth-type none --os-endpoint https://127.0.0.1:6385 --os-cacert /tmp/ferric-ca/ca.pem driver list
set -eu

dir=${1:?usage: $0 DIR [NAME ...]}
shift
[ $# -gt 0 ] || set -- server client
days=${DAYS:-30}
mkdir -p "$dir"
umask 077

if [ ! -f "$dir/ca.pem" ]; then
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -sha256 -days "$days" \
        -subj "/CN=Ferric development CA" \
        -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
        -keyout "$dir/ca.key" -out "$dir/ca.pem" 2>/dev/null
    echo "created $dir/ca.pem"
fi

sans="DNS:localhost,IP:127.0.0.1,IP:::1${SANS:+,$SANS}"
for name in "$@"; do
    ext=$(mktemp)
    printf 'basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth,clientAuth\nsubjectAltName=%s\n' \
        "$sans" >"$ext"
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -sha256 -subj "/CN=$name" \
        -keyout "$dir/$name.key" -out "$dir/$name.csr" 2>/dev/null
    openssl x509 -req -in "$dir/$name.csr" -CA "$dir/ca.pem" -CAkey "$dir/ca.key" -CAcreateserial \
        -days "$days" -sha256 -extfile "$ext" -out "$dir/$name.pem" 2>/dev/null
    rm -f "$ext" "$dir/$name.csr"
    echo "created $dir/$name.pem ($sans)"
done
