package keyops

import (
	"crypto/aes"
	"crypto/subtle"
	"encoding/binary"
	"fmt"
)

// RFC 3394's default initial value.
var kwIV = [8]byte{0xA6, 0xA6, 0xA6, 0xA6, 0xA6, 0xA6, 0xA6, 0xA6}

// aesKeyWrap wraps plain (n 64-bit blocks, n >= 2) under kek, following
// RFC 3394 section 2.2.1.
func aesKeyWrap(kek, plain []byte) ([]byte, error) {
	if len(plain) < 16 || len(plain)%8 != 0 {
		return nil, fmt.Errorf("%w: AES key wrap takes a key of at least 16 bytes, in 8-byte steps; got %d bytes", ErrAlgorithm, len(plain))
	}
	block, err := aes.NewCipher(kek)
	if err != nil {
		return nil, err
	}
	n := len(plain) / 8
	// 1) Initialise A = IV and R[1..n] = P[1..n].
	a := kwIV
	r := make([]byte, len(plain))
	copy(r, plain)
	buf := make([]byte, 16)
	// 2) Calculate intermediate values: six rounds over every block.
	for j := 0; j < 6; j++ {
		for i := 0; i < n; i++ {
			copy(buf, a[:])
			copy(buf[8:], r[i*8:i*8+8])
			block.Encrypt(buf, buf)
			t := uint64(n*j + i + 1)
			binary.BigEndian.PutUint64(a[:], binary.BigEndian.Uint64(buf[:8])^t)
			copy(r[i*8:], buf[8:])
		}
	}
	// 3) Output C = A || R.
	return append(a[:], r...), nil
}

// aesKeyUnwrap reverses aesKeyWrap (RFC 3394 section 2.2.2) and checks the
// integrity value in constant time.
func aesKeyUnwrap(kek, wrapped []byte) ([]byte, error) {
	if len(wrapped) < 24 || len(wrapped)%8 != 0 {
		return nil, fmt.Errorf("%w: a wrapped key is at least 24 bytes, in 8-byte steps; got %d bytes", ErrCrypto, len(wrapped))
	}
	block, err := aes.NewCipher(kek)
	if err != nil {
		return nil, err
	}
	n := len(wrapped)/8 - 1
	// 1) Initialise A = C[0] and R[i] = C[i].
	var a [8]byte
	copy(a[:], wrapped[:8])
	r := make([]byte, n*8)
	copy(r, wrapped[8:])
	buf := make([]byte, 16)
	// 2) Calculate intermediate values, in reverse.
	for j := 5; j >= 0; j-- {
		for i := n - 1; i >= 0; i-- {
			t := uint64(n*j + i + 1)
			binary.BigEndian.PutUint64(buf, binary.BigEndian.Uint64(a[:])^t)
			copy(buf[8:], r[i*8:i*8+8])
			block.Decrypt(buf, buf)
			copy(a[:], buf[:8])
			copy(r[i*8:], buf[8:])
		}
	}
	// 3) Output the key if A is the initial value.
	if subtle.ConstantTimeCompare(a[:], kwIV[:]) != 1 {
		return nil, fmt.Errorf("%w: the wrapped key fails its integrity check (wrong key, or altered)", ErrCrypto)
	}
	return r, nil
}
