//! The byte loops of keygate's JSON readers: where a JSON string's plain
//! contents end (the body reader, and `model_json`'s skip over an answer to
//! its `usage`), and how far a chunk is ASCII (the body reader's UTF-8
//! check). A chat body is mostly string contents, so these loops are most of
//! what a large body costs the gate.
//!
//! Every wasm build here has wasm's SIMD (`simd128`, `.cargo/config.toml`),
//! which V8 runs as SSE: sixteen bytes a step. Native builds (the unit tests,
//! the hot-path harness run natively) take eight bytes a step in a `u64`.
//! Both give the same answers; `tests` checks the portable one against a
//! byte loop, and `tests/e2e/test_body_scan.py` the SIMD one inside Envoy
//! (and that the module holds SIMD at all).

/// The index of the first `"`, `\` or control character (< 0x20) at or after
/// `i`, or `c.len()`: what ends a run of a string's plain contents. Bytes
/// >= 0x80 are plain here (their UTF-8 is checked apart: [`ascii_head`]).
///
/// The wide loop only skips blocks it knows hold no stop byte; the byte loop
/// always has the last word. So a wide loop that stopped too early would
/// cost speed, never a wrong answer; one that skipped a stop byte would be a
/// wrong answer, which is what the tests look for at every offset.
#[inline]
pub fn plain_end(c: &[u8], i: usize) -> usize {
    let i = wide::plain_end(c, i);
    bytes_plain_end(c, i)
}

/// A length of `c`'s start that is all ASCII, so UTF-8 as it is: the rest
/// is checked as UTF-8. Whole 16-byte blocks with SIMD; 0 elsewhere, where
/// `std::str::from_utf8` already takes two words a step (on wasm32 without
/// SIMD its words are four bytes).
#[inline]
pub fn ascii_head(c: &[u8]) -> usize {
    wide::ascii_head(c)
}

fn bytes_plain_end(c: &[u8], mut i: usize) -> usize {
    while let Some(&b) = c.get(i) {
        if b == b'"' || b == b'\\' || b < 0x20 {
            break;
        }
        i += 1;
    }
    i
}

#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
mod wide {
    use core::arch::wasm32::{u8x16, u8x16_bitmask, u8x16_eq, u8x16_lt, u8x16_splat, v128, v128_or};

    /// Sixteen bytes as one vector (a plain load: LLVM folds the lanes).
    #[inline(always)]
    fn load(block: &[u8; 16]) -> v128 {
        let [a, b, c, d, e, f, g, h, i, j, k, l, m, n, o, p] = *block;
        u8x16(a, b, c, d, e, f, g, h, i, j, k, l, m, n, o, p)
    }

    fn block(c: &[u8], i: usize) -> Option<&[u8; 16]> {
        c.get(i..i.checked_add(16)?)?.try_into().ok()
    }

    /// Stops at the first block holding a stop byte, at that byte.
    pub fn plain_end(c: &[u8], mut i: usize) -> usize {
        let (quote, backslash, space) = (u8x16_splat(b'"'), u8x16_splat(b'\\'), u8x16_splat(0x20));
        while let Some(b) = block(c, i) {
            let v = load(b);
            let stop = v128_or(v128_or(u8x16_eq(v, quote), u8x16_eq(v, backslash)), u8x16_lt(v, space));
            let mask = u8x16_bitmask(stop);
            if mask != 0 {
                return i + mask.trailing_zeros() as usize;
            }
            i += 16;
        }
        i
    }

    /// The ASCII blocks at the start.
    pub fn ascii_head(c: &[u8]) -> usize {
        let mut i = 0;
        while let Some(b) = block(c, i) {
            // A lane's high bit is set for a byte >= 0x80.
            if u8x16_bitmask(load(b)) != 0 {
                break;
            }
            i += 16;
        }
        i
    }
}

#[cfg(not(all(target_arch = "wasm32", target_feature = "simd128")))]
mod wide {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;

    /// Stops at the first word that may hold a stop byte (the byte loop
    /// finds it): for ASCII bytes, one < 0x20, == '"' or == '\' sets its high
    /// bit in `hit`; a word with a byte >= 0x80 stops too.
    pub fn plain_end(c: &[u8], mut i: usize) -> usize {
        let hit = |w: u64| {
            let lt = w.wrapping_sub(ONES * 0x20);
            let q = (w ^ (ONES * u64::from(b'"'))).wrapping_sub(ONES);
            let b = (w ^ (ONES * u64::from(b'\\'))).wrapping_sub(ONES);
            (lt | q | b | w) & HIGH
        };
        while let Some(chunk) = c.get(i..i + 8) {
            let mut word = [0u8; 8];
            word.copy_from_slice(chunk);
            if hit(u64::from_le_bytes(word)) != 0 {
                break;
            }
            i += 8;
        }
        i
    }

    pub fn ascii_head(_: &[u8]) -> usize {
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn plain_end_bytewise(c: &[u8], i: usize) -> usize {
        (i..c.len()).find(|&j| matches!(c[j], b'"' | b'\\' | 0..=0x1f)).unwrap_or(c.len().max(i))
    }

    /// Every stop byte at every position of a 40-byte run, from every start.
    #[test]
    fn finds_each_stop_byte_wherever_it_is() {
        for stop in [b'"', b'\\', 0x00, 0x1f, b'\n'] {
            for filler in [b'a', 0x80, 0xff, b' ', 0x7f] {
                for at in 0..40 {
                    let mut c = vec![filler; 40];
                    c[at] = stop;
                    for start in 0..=40 {
                        assert_eq!(
                            plain_end(&c, start),
                            plain_end_bytewise(&c, start),
                            "{stop:#x} at {at} from {start}"
                        );
                    }
                }
            }
        }
        assert_eq!(plain_end(b"", 0), 0);
        assert_eq!(plain_end(b"abc", 5), 5);
    }

    #[test]
    fn the_ascii_head_holds_no_high_byte() {
        for at in 0..40 {
            let mut c = vec![b'x'; 40];
            c[at] = 0xc3;
            assert!(ascii_head(&c) <= at);
        }
        assert!(ascii_head(&[b'x'; 40]) <= 40);
        assert_eq!(ascii_head(b""), 0);
    }

    proptest! {
        #[test]
        fn plain_end_matches_a_byte_loop(c in proptest::collection::vec(prop_oneof![Just(b'"'), Just(b'\\'), Just(0x05u8), Just(0xe2u8), 0x20u8..0x7f], 0..80), start in 0usize..90) {
            prop_assert_eq!(plain_end(&c, start), plain_end_bytewise(&c, start));
        }

        #[test]
        fn the_ascii_head_is_ascii(c in proptest::collection::vec(prop_oneof![Just(0x80u8), Just(0xffu8), 0u8..0x80], 0..80)) {
            prop_assert!(ascii_head(&c) <= c.iter().take_while(|b| b.is_ascii()).count());
        }
    }
}
