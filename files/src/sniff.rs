//! The content type of a file, from its first bytes. A client's `Content-Type` is a claim;
//! the bytes are evidence. Unknown binary is `application/octet-stream`, and text that no
//! signature matches is `text/plain`. What is safe to show inline is the server's choice
//! when it serves a file (markup is only ever sent as an attachment).

/// How many leading bytes [`sniff`] looks at.
pub const SNIFF_BYTES: usize = 8192;

/// The MIME type of a file whose first bytes are `head`.
pub fn sniff(head: &[u8]) -> String {
    if let Some(kind) = infer::get(head) {
        return kind.mime_type().to_string();
    }
    // Text: valid UTF-8 (the cut at SNIFF_BYTES may split a character) without NUL bytes.
    let valid = match std::str::from_utf8(head) {
        Ok(_) => true,
        Err(e) => e.error_len().is_none() && e.valid_up_to() + 4 > head.len(),
    };
    if !head.is_empty() && valid && !head.contains(&0) {
        "text/plain".into()
    } else {
        "application/octet-stream".into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_types_by_their_bytes() {
        assert_eq!(sniff(b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR"), "image/png");
        assert_eq!(sniff(b"\xff\xd8\xff\xe0\0\x10JFIF\0"), "image/jpeg");
        assert_eq!(sniff(b"%PDF-1.7\n"), "application/pdf");
        assert_eq!(sniff("plain words, ünïcode".as_bytes()), "text/plain");
        assert_eq!(sniff(b"<html><script>alert(1)</script>"), "text/html");
        assert_eq!(sniff(b"\0\x01\x02binary"), "application/octet-stream");
        assert_eq!(sniff(b""), "application/octet-stream");
        // A multi-byte character cut by the sniff window is still text.
        assert_eq!(sniff(&"é".as_bytes()[..1]), "text/plain");
    }
}
