"""Checks a zt decision log's checkpoints as an outside tool would, from the
specs alone: c2sp.org/signed-note (Ed25519, key ID), c2sp.org/tlog-checkpoint
(origin, size, root) and RFC 9162 §2.1 (the Merkle tree over the records'
hashes), with the `cryptography` package's Ed25519.

usage: verify_checkpoint.py VERIFIER_KEY LOG
Prints one line per checkpoint, "SIZE ok"; exits 1 at the first that fails.
"""

import base64
import hashlib
import json
import sys

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey


def mth(leaves):
    if not leaves:
        return hashlib.sha256(b"").digest()
    if len(leaves) == 1:
        return hashlib.sha256(b"\x00" + leaves[0]).digest()
    k = 1
    while k * 2 < len(leaves):
        k *= 2
    return hashlib.sha256(b"\x01" + mth(leaves[:k]) + mth(leaves[k:])).digest()


def notes(path):
    """The notes of a checkpoints file: each is followed by a blank line."""
    with open(path, encoding="utf-8") as f:
        blocks = f.read().split("\n\n")
    # text, signatures, text, signatures, ..., "" (after the last blank line)
    assert blocks[-1] == "", "the file does not end with a blank line"
    blocks = blocks[:-1]
    assert len(blocks) % 2 == 0, "unpaired text and signatures"
    return [(blocks[i] + "\n", blocks[i + 1] + "\n") for i in range(0, len(blocks), 2)]


def main():
    vkey, log = sys.argv[1], sys.argv[2]
    name, key_id, key = vkey.split("+", 2)
    raw = base64.b64decode(key)
    assert raw[0] == 0x01, "not an Ed25519 verifier key"
    public = raw[1:]
    expected_id = hashlib.sha256(name.encode() + b"\n" + b"\x01" + public).digest()[:4]
    assert expected_id.hex() == key_id, "key ID does not match the key"
    verifier = Ed25519PublicKey.from_public_bytes(public)

    with open(log, encoding="utf-8") as f:
        leaves = [bytes.fromhex(json.loads(line)["hash"]) for line in f]

    for text, signatures in notes(log + ".checkpoints"):
        signed = False
        for line in signatures.splitlines():
            dash, signer, sig = line.split(" ")
            assert dash == "\u2014", repr(line)
            blob = base64.b64decode(sig)
            if signer != name or blob[:4] != expected_id:
                continue
            try:
                verifier.verify(blob[4:], text.encode())
            except InvalidSignature:
                print("bad signature on:", text.splitlines()[:2])
                sys.exit(1)
            signed = True
        if not signed:
            print("not signed by", vkey)
            sys.exit(1)
        origin, size, root = text.splitlines()[:3]
        size = int(size)
        if origin != name or size > len(leaves):
            print("checkpoint", size, "origin or size wrong")
            sys.exit(1)
        if base64.b64decode(root) != mth(leaves[:size]):
            print(size, "root mismatch")
            sys.exit(1)
        print(size, "ok")


if __name__ == "__main__":
    main()
