"""Checks a zt decision log's checkpoints as an outside tool would, from the
specs alone: c2sp.org/signed-note (Ed25519, key ID), c2sp.org/tlog-checkpoint
(origin, size, root) and RFC 9162 §2.1 (the Merkle tree over the records'
hashes), with the `cryptography` package's Ed25519.

With a witness key, also checks LOG.cosigned as c2sp.org/tlog-cosignature
describes it: a cosignature/v1 line (signature type 0x04: key ID, big-endian
u64 time, Ed25519 over "cosignature/v1\ntime T\n" and the checkpoint), on a
checkpoint the writer signed, whose root is that of the log's first records.

usage: verify_checkpoint.py VERIFIER_KEY LOG [WITNESS_KEY]
Prints one line per checkpoint, "SIZE ok", then "cosigned SIZE ok"; exits 1
at the first that fails.
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


def parse_vkey(vkey, kind):
    """A note verifier key NAME+KEYID+BASE64(kind || key): (name, key ID, key)."""
    name, key_id, key = vkey.split("+", 2)
    raw = base64.b64decode(key)
    assert raw[0] == kind, f"not a verifier key of type {kind:#04x}"
    public = raw[1:]
    expected_id = hashlib.sha256(name.encode() + b"\n" + bytes([kind]) + public).digest()[:4]
    assert expected_id.hex() == key_id, "key ID does not match the key"
    return name, expected_id, Ed25519PublicKey.from_public_bytes(public)


def check_cosigned(path, wkey, name, expected_id, verifier, leaves):
    """LOG.cosigned: the writer's checkpoint with the witness's cosignature."""
    w_name, w_id, w_key = parse_vkey(wkey, 0x04)
    with open(path, encoding="utf-8") as f:
        note = f.read()
    text, signatures = note.rsplit("\n\n", 1)
    text += "\n"
    by_writer = by_witness = False
    for line in signatures.splitlines():
        dash, signer, sig = line.split(" ")
        assert dash == "\u2014", repr(line)
        blob = base64.b64decode(sig)
        try:
            if signer == name and blob[:4] == expected_id:
                verifier.verify(blob[4:], text.encode())
                by_writer = True
            elif signer == w_name and blob[:4] == w_id:
                assert len(blob) == 4 + 8 + 64, "a cosignature is key ID, time, signature"
                time = int.from_bytes(blob[4:12], "big")
                assert time < 2**63
                w_key.verify(blob[12:], f"cosignature/v1\ntime {time}\n".encode() + text.encode())
                by_witness = True
        except InvalidSignature:
            print("bad signature by", signer)
            sys.exit(1)
    if not (by_writer and by_witness):
        print("cosigned checkpoint: writer", by_writer, "witness", by_witness)
        sys.exit(1)
    size = int(text.splitlines()[1])
    root = base64.b64decode(text.splitlines()[2])
    if size > len(leaves) or root != mth(leaves[:size]):
        print("cosigned", size, "root mismatch")
        sys.exit(1)
    print("cosigned", size, "ok")


def main():
    vkey, log = sys.argv[1], sys.argv[2]
    name, expected_id, verifier = parse_vkey(vkey, 0x01)

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

    if len(sys.argv) > 3:
        check_cosigned(log + ".cosigned", sys.argv[3], name, expected_id, verifier, leaves)


if __name__ == "__main__":
    main()
