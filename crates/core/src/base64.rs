//! Base64 as choreo's text formats accept it, over the `base64` crate: a
//! CloudEvents structured-mode `data_base64` and a JSON-lines capture's binary
//! payloads and keys.
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
    STANDARD_LENIENT.decode(text).ok()
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
    if STANDARD_LENIENT.decode_vec(text, out).is_ok() {
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
}
