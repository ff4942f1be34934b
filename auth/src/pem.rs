//! PEM encoding (RFC 7468): pki-types only decodes.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;

/// Encodes `der` as a PEM block with 64-column lines (RFC 7468).
pub(crate) fn encode(label: &str, der: &[u8]) -> String {
    let b64 = STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        // Base64 is ASCII, so every chunk boundary is a char boundary.
        out.push_str(std::str::from_utf8(line).unwrap_or_default());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

#[cfg(test)]
mod tests {
    use super::encode;
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;

    #[test]
    fn rfc4648_vectors_in_a_block() {
        for (data, b64) in [
            (&b""[..], ""),
            (b"f", "Zg=="),
            (b"fo", "Zm8="),
            (b"foo", "Zm9v"),
            (b"foob", "Zm9vYg=="),
            (b"fooba", "Zm9vYmE="),
            (b"foobar", "Zm9vYmFy"),
        ] {
            let body = if b64.is_empty() {
                String::new()
            } else {
                format!("{b64}\n")
            };
            assert_eq!(
                encode("X", data),
                format!("-----BEGIN X-----\n{body}-----END X-----\n")
            );
        }
    }

    #[test]
    fn long_input_wraps_at_64_columns_and_round_trips() {
        let der: Vec<u8> = (0..=255u8).cycle().take(1000).collect();
        let pem = encode("CERTIFICATE", &der);
        let body: Vec<&str> = pem
            .lines()
            .skip(1)
            .take_while(|l| !l.starts_with("-----"))
            .collect();
        assert!(body[..body.len() - 1].iter().all(|l| l.len() == 64));
        assert!(body.last().unwrap().len() <= 64);
        let back = CertificateDer::from_pem_slice(pem.as_bytes()).unwrap();
        assert_eq!(back.as_ref(), &der[..]);
    }
}
