//! Base64 as choreo's text formats accept it, over the `base64` crate: a
//! CloudEvents structured-mode `data_base64` and a JSON-lines capture's binary
//! payloads and keys.
//!
//! Decoding first tries `base64-simd` (a vector decoder, about three times
//! the `base64` crate's speed here), which takes only canonical standard
//! base64; whatever it refuses is judged by the `base64` crate, so what is
//! accepted, and the bytes it decodes to, are the crate's alone (a test
//! compares the two on generated text).
//!
//! Not part of the contract a backend implements: it is here so that the
//! Kafka record reader and the capture reader accept the same text. Other
//! code uses the `base64` crate directly.

use base64::Engine;
use base64::alphabet;
use base64::engine::GeneralPurpose;
use base64::engine::general_purpose::{PAD_INDIFFERENT, STANDARD};

/// Padding optional, and bits after the last whole byte ignored: text a
/// person or another tool wrote is taken as it is meant.
const LENIENT: base64::engine::GeneralPurposeConfig =
    PAD_INDIFFERENT.with_decode_allow_trailing_bits(true);
const STANDARD_LENIENT: GeneralPurpose = GeneralPurpose::new(&alphabet::STANDARD, LENIENT);
const URL_SAFE_LENIENT: GeneralPurpose = GeneralPurpose::new(&alphabet::URL_SAFE, LENIENT);

/// Standard base64 (RFC 4648 §4), with padding.
pub fn encode(data: &[u8]) -> String {
    STANDARD.encode(data)
}

/// Decodes standard base64 (§4; padding optional, no line breaks); `None`
/// when `text` is not that.
pub fn decode(text: &str) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    standard_into(text, &mut out).then_some(out)
}

/// Like [`decode`], appended to `out`: `false` when `text` is not standard
/// base64 (and `out` then holds whatever the `base64` crate left in it).
fn standard_into(text: &str, out: &mut Vec<u8>) -> bool {
    canonical_into(text, out) || STANDARD_LENIENT.decode_vec(text, out).is_ok()
}

/// Canonical standard base64 (padded to a multiple of four, or not padded
/// at all; the bits after the last whole byte zero) decoded by the vector
/// decoder, appended to `out`: `false` (and `out` as it was, but for its
/// room) for anything else, which the `base64` crate then judges. What this
/// takes the crate takes too, as the same bytes.
fn canonical_into(text: &str, out: &mut Vec<u8>) -> bool {
    let engine = if text.len().is_multiple_of(4) {
        base64_simd::STANDARD
    } else {
        base64_simd::STANDARD_NO_PAD
    };
    let len = out.len();
    if engine.decode_append(text.as_bytes(), out).is_ok() {
        return true;
    }
    out.truncate(len);
    false
}

/// Like [`decode`], also accepting the URL-safe alphabet (§5: `-` and `_`),
/// for text a person or another tool may have written.
pub fn decode_either(text: &str) -> Option<Vec<u8>> {
    decode(text).or_else(|| URL_SAFE_LENIENT.decode(text).ok())
}

/// Like [`decode_either`], into `out` (cleared first, its room reused):
/// `false` when `text` is not base64.
pub fn decode_either_into(text: &str, out: &mut Vec<u8>) -> bool {
    out.clear();
    if standard_into(text, out) {
        return true;
    }
    out.clear();
    URL_SAFE_LENIENT.decode_vec(text, out).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        for data in [
            &b""[..],
            b"f",
            b"fo",
            b"foo",
            b"foob",
            b"fooba",
            b"foobar",
            &[0, 255, 7],
        ] {
            let e = encode(data);
            assert_eq!(decode(&e).as_deref(), Some(data), "{e}");
            assert_eq!(decode_either(&e).as_deref(), Some(data), "{e}");
            let mut into = vec![9; 3];
            assert!(decode_either_into(&e, &mut into));
            assert_eq!(into, data, "{e}");
        }
        assert_eq!(encode(b"foobar"), "Zm9vYmFy");
        assert_eq!(encode(b"fo"), "Zm8=");
    }

    #[test]
    fn decodes_with_and_without_padding() {
        assert_eq!(decode("aGVsbG8=").unwrap(), b"hello");
        assert_eq!(decode("aGVsbG8").unwrap(), b"hello");
        assert_eq!(decode("aGk=").unwrap(), b"hi");
        assert_eq!(decode("").unwrap(), b"");
        assert_eq!(decode("+/8=").unwrap(), [0xfb, 0xff]);
        assert_eq!(decode("Zm8"), Some(b"fo".to_vec()));
        for bad in ["a", "Z", "a$==", "a*b"] {
            assert!(decode(bad).is_none(), "{bad}");
            assert!(decode_either(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn only_the_lenient_decoder_takes_the_url_safe_alphabet() {
        assert_eq!(decode_either("-_8=").unwrap(), [0xfb, 0xff]);
        assert!(decode("-_8=").is_none());
    }

    /// The vector decoder only ever speeds up the `base64` crate's answer:
    /// on text near the edges (padding in every place and amount, the bits
    /// after the last byte set, characters of both alphabets and of
    /// neither), the answers are those of the crate alone.
    #[test]
    fn every_answer_is_the_base64_crates() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(64);
        const ODD: &[u8] = b"=-_+/ \n\"A*";
        let (mut fast, mut total) = (0, 0);
        for _ in 0..200_000 {
            let mut text = if rng.random_bool(0.7) {
                let n = rng.random_range(0..40);
                let data: Vec<u8> = (0..n).map(|_| rng.random()).collect();
                let mut e = encode(&data);
                if rng.random_bool(0.3) {
                    while e.ends_with('=') {
                        e.pop();
                    }
                }
                e.into_bytes()
            } else {
                // Long enough for the vector decoder's blocks of 32.
                let most = [12, 90][rng.random_range(0..2)];
                let n = rng.random_range(0..most);
                (0..n)
                    .map(|_| {
                        let c = rng.random_range(0..70u8);
                        match c {
                            0..26 => b'A' + c,
                            26..52 => b'a' + c - 26,
                            52..62 => b'0' + c - 52,
                            _ => ODD[usize::from(c - 62)],
                        }
                    })
                    .collect()
            };
            if !text.is_empty() && rng.random_bool(0.3) {
                let at = rng.random_range(0..text.len());
                text[at] = match rng.random_range(0..5) {
                    0 => text[at] ^ 1,
                    1 => b'=',
                    2 => ODD[rng.random_range(0..ODD.len())],
                    3 => 0x80 | text[at],
                    _ => b'A',
                };
            }
            // A byte with its high bit set, alone, is not UTF-8: made "é".
            let text = String::from_utf8_lossy(&text).replace('\u{fffd}', "é");
            total += 1;
            let standard = STANDARD_LENIENT.decode(&text).ok();
            assert_eq!(decode(&text), standard, "{text:?}");
            let either = standard
                .clone()
                .or_else(|| URL_SAFE_LENIENT.decode(&text).ok());
            assert_eq!(decode_either(&text), either, "{text:?}");
            let mut into = vec![7; 5];
            let ok = decode_either_into(&text, &mut into);
            assert_eq!(ok.then_some(into), either, "{text:?}");
            let mut probe = vec![1, 2];
            if canonical_into(&text, &mut probe) {
                fast += 1;
                assert_eq!(probe[2..], *standard.as_deref().unwrap(), "{text:?}");
            } else {
                assert_eq!(probe, [1, 2], "{text:?}");
            }
        }
        assert!(
            fast > total / 3,
            "the vector decoder took {fast} of {total}"
        );
    }
}
