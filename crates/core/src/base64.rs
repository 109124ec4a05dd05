//! Base64 (RFC 4648) for the few places choreo carries bytes in text: a
//! CloudEvents structured-mode `data_base64`, a JSON-lines capture's binary
//! payloads and keys, a schema registry's basic-auth header.

const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Standard base64 (§4), with padding.
pub fn encode(data: &[u8]) -> String {
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Decodes standard base64 (§4; padding optional, no line breaks); `None`
/// when `text` is not that.
pub fn decode(text: &str) -> Option<Vec<u8>> {
    decode_with(text, false)
}

/// Like [`decode`], also accepting the URL-safe alphabet (§5: `-` and `_`),
/// for text a person or another tool may have written.
pub fn decode_either(text: &str) -> Option<Vec<u8>> {
    decode_with(text, true)
}

fn decode_with(text: &str, url_safe: bool) -> Option<Vec<u8>> {
    let sextet = |c: u8| -> Option<u32> {
        Some(u32::from(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            b'-' if url_safe => 62,
            b'_' if url_safe => 63,
            _ => return None,
        }))
    };
    let s = text.trim_end_matches('=').as_bytes();
    if s.len() % 4 == 1 {
        return None;
    }
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    for chunk in s.chunks(4) {
        let mut acc = 0u32;
        for (i, &c) in chunk.iter().enumerate() {
            acc |= sextet(c)? << (18 - 6 * i);
        }
        out.extend_from_slice(&acc.to_be_bytes()[1..chunk.len()]);
    }
    Some(out)
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
