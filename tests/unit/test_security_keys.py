"""Key derivation, preauth integrity hash, signing and encryption against Windows'
recorded values, RFC 4493, and impacket's independent implementations."""

import hashlib
import hmac
import os
import struct

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESCCM, AESGCM
from impacket import crypto as imp_crypto

import test_security_vectors as V
from smbd_py.security import encryption, kdf, preauth, signing
from smbd_py.security.encryption import (AES_128_CCM, AES_128_GCM, AES_256_CCM, AES_256_GCM,
                                         DecryptError, Decryptor, Encryptor)
from smbd_py.security.signing import AES_CMAC, AES_GMAC, HMAC_SHA256, Signer


# -- preauth --------------------------------------------------------------------------

def test_preauth_chain_matches_windows():
    messages = [V.NEGOTIATE_REQ, V.NEGOTIATE_RESP, V.SESSION_SETUP_REQ1,
                V.SESSION_SETUP_RESP1, V.SESSION_SETUP_REQ2]
    value = preauth.PREAUTH_INITIAL
    for message, expected in zip(messages, V.PREAUTH_AFTER):
        value = preauth.preauth_update(value, message)
        assert value == expected
    assert preauth.preauth_update(value, memoryview(bytearray(b"x"))) == \
        hashlib.sha512(value + b"x").digest()
    with pytest.raises(ValueError):
        preauth.preauth_update(b"short", b"")


# -- KDF -----------------------------------------------------------------------------

def test_kdf_smb30_known_answers():
    keys = kdf.derive_keys(0x0300, V.WIN30_SESSION_KEY, None)
    assert keys.signing == V.WIN30_SIGNING_KEY
    # The blog names keys from the client's side: the client's encryption key is
    # the server's decryption key, and the other way round.
    assert keys.decryption_server_in == V.WIN30_CLIENT_ENCRYPTION_KEY
    assert keys.encryption_server_out == V.WIN30_CLIENT_DECRYPTION_KEY
    assert keys.application == V.WIN30_APPLICATION_KEY
    assert kdf.derive_keys(0x0302, V.WIN30_SESSION_KEY, None) == keys


def test_kdf_smb311_known_answers():
    keys = kdf.derive_keys(0x0311, V.WIN311_SESSION_KEY, V.PREAUTH_AFTER[-1])
    assert keys.signing == V.WIN311_SIGNING_KEY
    assert keys.decryption_server_in == V.WIN311_CLIENT_ENCRYPTION_KEY
    assert keys.encryption_server_out == V.WIN311_CLIENT_DECRYPTION_KEY
    assert keys.application == V.WIN311_APPLICATION_KEY
    with pytest.raises(ValueError):
        kdf.derive_keys(0x0311, V.WIN311_SESSION_KEY, None)


def test_kdf_smb30_encryption_vector_keys():
    keys = kdf.derive_keys(0x0300, V.ENC30_SESSION_KEY, None)
    assert keys.decryption_server_in == V.ENC30_CLIENT_ENCRYPTION_KEY
    assert keys.encryption_server_out == V.ENC30_CLIENT_DECRYPTION_KEY


def test_kdf_smb2x_uses_session_key():
    k = os.urandom(16)
    keys = kdf.derive_keys(0x0210, k, None)
    assert keys.signing == k and keys.encryption_server_out is None
    assert kdf.derive_keys(0x0202, k, None).signing == k
    with pytest.raises(ValueError):
        kdf.derive_keys(0x0400, k, None)


def test_kdf_256_bit_cipher_keys_match_impacket():
    k, ph = os.urandom(16), os.urandom(64)
    keys = kdf.derive_keys(0x0311, k, ph, cipher_key_bits=256)
    assert len(keys.encryption_server_out) == 32 and len(keys.signing) == 16
    assert keys.encryption_server_out == imp_crypto.KDF_CounterMode(k, b"SMBS2CCipherKey\x00", ph, 256)
    assert keys.decryption_server_in == imp_crypto.KDF_CounterMode(k, b"SMBC2SCipherKey\x00", ph, 256)


@pytest.mark.parametrize("bits", [128, 256, 512])
def test_kdf_matches_impacket(bits):
    for _ in range(5):
        key, label, ctx = os.urandom(16), os.urandom(13), os.urandom(40)
        assert kdf.kdf_sp800_108(key, label, ctx, bits) == \
            imp_crypto.KDF_CounterMode(key, label, ctx, bits)


# -- signing -------------------------------------------------------------------------

RFC4493_KEY = bytes.fromhex("2b7e151628aed2a6abf7158809cf4f3c")
RFC4493_MSG64 = bytes.fromhex(
    "6bc1bee22e409f96e93d7e117393172aae2d8a571e03ac9c9eb76fac45af8e51"
    "30c81c46a35ce411e5fbc1191a0a52eff69f2445df4f9b17ad2b417be66c3710")


def test_aes_cmac_signer_is_rfc4493():
    # Signature field zeroing means: CMAC over msg[:48] + zeros + msg[64:].
    # RFC 4493 example 4 (64 bytes) with its bytes 48..63 zeroed is then the
    # input; cross-check that CMAC with impacket's independent AES_CMAC, and
    # the untouched RFC vector with cryptography's CMAC.
    from cryptography.hazmat.primitives import cmac
    from cryptography.hazmat.primitives.ciphers import algorithms
    c = cmac.CMAC(algorithms.AES(RFC4493_KEY))
    c.update(RFC4493_MSG64)
    assert c.finalize().hex() == "51f0bebf7e3b9d92fc49741779363cfe"
    zeroed = RFC4493_MSG64[:48] + bytes(16)
    assert Signer(AES_CMAC, RFC4493_KEY).sign(RFC4493_MSG64) == \
        imp_crypto.AES_CMAC(RFC4493_KEY, zeroed, len(zeroed))


def test_signing_windows_session_setup_response():
    # The final SESSION_SETUP response of the 3.1.1 exchange, AES-CMAC under the
    # derived signing key, as Windows signed it.
    msg = V.SESSION_SETUP_RESP2
    s = Signer(signing.signing_algorithm_for(0x0311), V.WIN311_SIGNING_KEY)
    assert s.sign(msg) == msg[48:64]
    assert s.verify(msg)
    tampered = bytearray(msg)
    tampered[-1] ^= 1
    assert not s.verify(tampered)
    assert not Signer(AES_CMAC, bytes(16)).verify(msg)


def test_hmac_sha256_signing():
    key = os.urandom(16)
    msg = bytearray(os.urandom(200))
    sig = signing.sign(HMAC_SHA256, key, msg)
    zeroed = bytes(msg[:48]) + bytes(16) + bytes(msg[64:])
    assert sig == hmac.new(key, zeroed, hashlib.sha256).digest()[:16]
    msg[48:64] = sig
    assert signing.verify(HMAC_SHA256, key, msg)
    msg[100] ^= 0xFF
    assert not signing.verify(HMAC_SHA256, key, msg)


def _header(message_id: int, flags: int, command: int) -> bytearray:
    hdr = bytearray(64)
    hdr[0:4] = b"\xfeSMB"
    struct.pack_into("<HHIHHII Q", hdr, 4, 64, 0, 0, command, 1, flags, 0, message_id)
    return hdr + os.urandom(40)


def test_aes_gmac_nonce_layout():
    key = os.urandom(16)
    s = Signer(AES_GMAC, key)
    msg = _header(0x1122334455667788, 0x1 | 0x8, 0x0008)  # a signed READ response
    zeroed = bytes(msg[:48]) + bytes(16) + bytes(msg[64:])
    nonce = struct.pack("<QI", 0x1122334455667788, 1)      # bit 0: sent by the server
    assert s.sign(msg) == AESGCM(key).encrypt(nonce, b"", zeroed)
    assert s.sign(msg) == s.sign(msg, message_id=0x1122334455667788, is_response=True,
                                 is_cancel=False)
    # Same bytes seen as a client request must sign differently (role bit).
    assert s.sign(msg, is_response=False) == \
        AESGCM(key).encrypt(struct.pack("<QI", 0x1122334455667788, 0), b"", zeroed)
    cancel = _header(7, 0x8, 0x000C)
    zc = bytes(cancel[:48]) + bytes(16) + bytes(cancel[64:])
    assert s.sign(cancel) == AESGCM(key).encrypt(struct.pack("<QI", 7, 2), b"", zc)
    msg[48:64] = s.sign(msg)
    assert s.verify(msg)
    struct.pack_into("<Q", msg, 24, 0x1122334455667789)     # another MessageId
    assert not s.verify(msg)


def test_signer_rejects_bad_input():
    with pytest.raises(ValueError):
        Signer(AES_CMAC, b"short")
    with pytest.raises(ValueError):
        Signer(9, bytes(16))
    with pytest.raises(ValueError):
        Signer(AES_CMAC, bytes(16)).sign(b"tiny")
    assert not Signer(AES_CMAC, bytes(16)).verify(b"tiny")


def test_sign_in_place_and_memoryview():
    s = Signer(AES_CMAC, os.urandom(16))
    buf = bytearray(os.urandom(1 << 16))
    s.sign_in_place(memoryview(buf))
    assert s.verify(bytes(buf))


# -- encryption ------------------------------------------------------------------------

def test_decrypt_windows_smb30_write_request():
    keys = kdf.derive_keys(0x0300, V.ENC30_SESSION_KEY, None)
    sid, plain = encryption.decrypt(AES_128_CCM, keys.decryption_server_in,
                                    V.ENC30_WRITE_REQ_TRANSFORMED)
    assert sid == V.ENC30_SESSION_ID
    assert plain == V.ENC30_WRITE_REQ_PLAIN
    assert encryption.transform_session_id(V.ENC30_WRITE_REQ_TRANSFORMED) == V.ENC30_SESSION_ID


def test_windows_response_opens_with_our_server_out_key():
    keys = kdf.derive_keys(0x0300, V.ENC30_SESSION_KEY, None)
    sid, plain = Decryptor(AES_128_CCM, keys.encryption_server_out).decrypt(
        V.ENC30_WRITE_RESP_TRANSFORMED)
    assert plain == V.ENC30_WRITE_RESP_PLAIN


def test_encrypt_reproduces_windows_bytes():
    # Windows' response nonce is 0x86 followed by zeros in the CCM part and a
    # non-zero tail; with that exact Nonce field our sealing is byte-identical.
    keys = kdf.derive_keys(0x0300, V.ENC30_SESSION_KEY, None)
    nonce_field = V.ENC30_WRITE_RESP_TRANSFORMED[20:36]
    header = bytearray(V.ENC30_WRITE_RESP_TRANSFORMED[:52])
    aead = AESCCM(keys.encryption_server_out)
    sealed = aead.encrypt(nonce_field[:11], V.ENC30_WRITE_RESP_PLAIN, bytes(header[20:52]))
    assert sealed[-16:] == header[4:20]
    # Our own framing with a zero-tailed nonce: verify layout and AAD range.
    nonce = nonce_field[:11]
    ours = encryption._seal(aead, 11, nonce, V.ENC30_SESSION_ID, V.ENC30_WRITE_RESP_PLAIN)
    assert ours[:4] == b"\xfdSMB"
    assert ours[20:36] == nonce + bytes(5)
    assert struct.unpack_from("<IHHQ", ours, 36) == (0x50, 0, 1, V.ENC30_SESSION_ID)
    assert ours[52:] + ours[4:20] == aead.encrypt(nonce, V.ENC30_WRITE_RESP_PLAIN, ours[20:52])


@pytest.mark.parametrize("cipher", [AES_128_CCM, AES_128_GCM, AES_256_CCM, AES_256_GCM])
def test_round_trip_and_tamper(cipher):
    key = os.urandom(encryption.cipher_key_bits(cipher) // 8)
    msg = os.urandom(300)
    enc = Encryptor(cipher, key)
    t1, t2 = enc.encrypt(0xABCDEF, msg), enc.encrypt(0xABCDEF, msg)
    assert t1[20:36] != t2[20:36]                   # fresh nonce each time
    nl = encryption.nonce_size(cipher)
    assert t1[20 + nl:36] == bytes(16 - nl)
    dec = Decryptor(cipher, key)
    assert dec.decrypt(t1) == (0xABCDEF, msg)
    assert encryption.decrypt(cipher, key, encryption.encrypt(cipher, key, 5, msg)) == (5, msg)
    for pos in (4, 25, 40, 44, 60, len(t1) - 1):    # signature, nonce, size, session, body
        bad = bytearray(t1)
        bad[pos] ^= 1
        with pytest.raises(DecryptError):
            dec.decrypt(bytes(bad))
    with pytest.raises(DecryptError):
        Decryptor(cipher, os.urandom(len(key))).decrypt(t1)
    with pytest.raises(DecryptError):
        dec.decrypt(t1[:40])
    with pytest.raises(DecryptError):
        dec.decrypt(t1[:-1])


def test_cipher_parameters():
    with pytest.raises(ValueError):
        Encryptor(AES_256_GCM, bytes(16))
    with pytest.raises(ValueError):
        Encryptor(7, bytes(16))
    assert encryption.is_transform(b"\xfdSMB" + bytes(60))
    assert not encryption.is_transform(b"\xfeSMB" + bytes(60))
