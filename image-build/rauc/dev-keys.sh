#!/bin/sh
# Makes a development signing CA and key for RAUC bundles: dev-keys.sh DIR
#   DIR/ca.pem (the keyring the image trusts), DIR/signing.pem and DIR/signing.key (sign bundles).
# For development images and CI only: anyone with the repository can make these. Production bundles
# are signed under the production CA, whose key is kept offline (docs/image.md, "Keys").
set -eu
DIR=$1
mkdir -p "$DIR"
[ ! -s "$DIR/signing.key" ] || exit 0
cd "$DIR"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 3650 -subj "/CN=HES development CA" \
	-addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign \
	-keyout ca.key -out ca.pem 2>/dev/null
openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=HES development bundle signer" \
	-keyout signing.key -out signing.csr 2>/dev/null
printf 'basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n' >signing.ext
openssl x509 -req -in signing.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 3650 -extfile signing.ext \
	-out signing.pem 2>/dev/null
rm -f signing.csr signing.ext ca.srl
chmod 600 ca.key signing.key
echo "dev-keys.sh: development CA and signer in $DIR"
