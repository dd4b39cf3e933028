#!/bin/sh
# Remakes the example certificates: a CA, a server certificate for localhost (127.0.0.1, ::1)
# and a client certificate for "alice", all ECDSA P-256, valid for 100 years. For examples and
# the docs only: the private keys are public, in this repository.
set -eu
cd "$(dirname "$0")"
days=36500
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days $days \
    -subj "/CN=oneloop example CA" -keyout ca.key -out ca.pem \
    -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign
issue() { # NAME SUBJECT EXTENSIONS
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "$2" \
        -keyout "$1.key" -out "$1.csr"
    printf '%s\n' "$3" > "$1.ext"
    openssl x509 -req -in "$1.csr" -CA ca.pem -CAkey ca.key -CAcreateserial -days $days \
        -extfile "$1.ext" -out "$1.pem"
    rm "$1.csr" "$1.ext"
}
issue localhost /CN=localhost "subjectAltName=DNS:localhost,IP:127.0.0.1,IP:::1
extendedKeyUsage=serverAuth"
issue alice /CN=alice "extendedKeyUsage=clientAuth"
rm -f ca.srl
