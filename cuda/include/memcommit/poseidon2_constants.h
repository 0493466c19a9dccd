// Poseidon2-16 round constants and internal diagonal for BabyBear, as canonical integers.
//
// Copied from Plonky3 p3-baby-bear 0.8.0 `src/poseidon2.rs`:
// BABYBEAR_POSEIDON2_RC_16_EXTERNAL_INITIAL / _EXTERNAL_FINAL (4 rounds x 16) and
// BABYBEAR_POSEIDON2_RC_16_INTERNAL (13), the constants of `default_babybear_poseidon2_16()`.
// The internal diagonal V of the matrix 1 + diag(V) is p3's BabyBear16 vector
// [-2, 1, 2, 1/2, 3, 4, -1/2, -3, -4, 1/2^8, 1/4, 1/8, 1/2^27, -1/2^8, -1/16, -1/2^27] reduced mod p.
// tests/cuda_emulated.rs compares every value here with p3's through the host build.
//
// Each list is an X-macro, so one source yields both the canonical table (exported for the
// test) and the Montgomery table the permutation reads (see poseidon2.h).
#pragma once

// 4 rounds x 16 elements, round-major.
#define MC_P2_RC_EXTERNAL_INITIAL(X) \
    X(0x69cbb6af) X(0x46ad93f9) X(0x60a00f4e) X(0x6b1297cd) X(0x23189afe) X(0x732e7bef) X(0x72c246de) X(0x2c941900) \
    X(0x0557eede) X(0x1580496f) X(0x3a3ea77b) X(0x54f3f271) X(0x0f49b029) X(0x47872fe1) X(0x221e2e36) X(0x1ab7202e) \
    X(0x487779a6) X(0x3851c9d8) X(0x38dc17c0) X(0x209f8849) X(0x268dcee8) X(0x350c48da) X(0x5b9ad32e) X(0x0523272b) \
    X(0x3f89055b) X(0x01e894b2) X(0x13ddedde) X(0x1b2ef334) X(0x7507d8b4) X(0x6ceeb94e) X(0x52eb6ba2) X(0x50642905) \
    X(0x05453f3f) X(0x06349efc) X(0x6922787c) X(0x04bfff9c) X(0x768c714a) X(0x3e9ff21a) X(0x15737c9c) X(0x2229c807) \
    X(0x0d47f88c) X(0x097e0ecc) X(0x27eadba0) X(0x2d7d29e4) X(0x3502aaa0) X(0x0f475fd7) X(0x29fbda49) X(0x018afffd) \
    X(0x0315b618) X(0x6d4497d1) X(0x1b171d9e) X(0x52861abd) X(0x2e5d0501) X(0x3ec8646c) X(0x6e5f250a) X(0x148ae8e6) \
    X(0x17f5fa4a) X(0x3e66d284) X(0x0051aa3b) X(0x483f7913) X(0x2cfe5f15) X(0x023427ca) X(0x2cc78315) X(0x1e36ea47)

// 4 rounds x 16 elements, round-major.
#define MC_P2_RC_EXTERNAL_FINAL(X) \
    X(0x7290a80d) X(0x6f7e5329) X(0x598ec8a8) X(0x76a859a0) X(0x6559e868) X(0x657b83af) X(0x13271d3f) X(0x1f876063) \
    X(0x0aeeae37) X(0x706e9ca6) X(0x46400cee) X(0x72a05c26) X(0x2c589c9e) X(0x20bd37a7) X(0x6a2d3d10) X(0x20523767) \
    X(0x5b8fe9c4) X(0x2aa501d6) X(0x1e01ac3e) X(0x1448bc54) X(0x5ce5ad1c) X(0x4918a14d) X(0x2c46a83f) X(0x4fcf6876) \
    X(0x61d8d5c8) X(0x6ddf4ff9) X(0x11fda4d3) X(0x02933a8f) X(0x170eaf81) X(0x5a9c314f) X(0x49a12590) X(0x35ec52a1) \
    X(0x58eb1611) X(0x5e481e65) X(0x367125c9) X(0x0eba33ba) X(0x1fc28ded) X(0x066399ad) X(0x0cbec0ea) X(0x75fd1af0) \
    X(0x50f5bf4e) X(0x643d5f41) X(0x6f4fe718) X(0x5b3cbbde) X(0x1e3afb3e) X(0x296fb027) X(0x45e1547b) X(0x4a8db2ab) \
    X(0x59986d19) X(0x30bcdfa3) X(0x1db63932) X(0x1d7c2824) X(0x53b33681) X(0x0673b747) X(0x038a98a3) X(0x2c5bce60) \
    X(0x351979cd) X(0x5008fb73) X(0x547bca78) X(0x711af481) X(0x3f93bf64) X(0x644d987b) X(0x3c8bcd87) X(0x608758b8)

// 13 partial rounds, one constant each (added to state[0]).
#define MC_P2_RC_INTERNAL(X) \
    X(0x5a8053c0) X(0x693be639) X(0x3858867d) X(0x19334f6b) X(0x128f0fd8) X(0x4e2b1ccb) X(0x61210ce0) X(0x3c318939) \
    X(0x0b5b2f22) X(0x2edb11d5) X(0x213effdf) X(0x0cac4606) X(0x241af16d)

// The internal layer's diagonal V: state[i] <- sum(state) + V[i] * state[i].
#define MC_P2_INTERNAL_DIAGONAL(X) \
    X(2013265919) X(1) X(2) X(1006632961) X(3) X(4) X(1006632960) X(2013265918) \
    X(2013265917) X(2005401601) X(1509949441) X(1761607681) X(2013265906) X(7864320) X(125829120) X(15)
