//! Small helpers for SMTP status codes shared by the providers and the DSN parser.

/// The class digit (2, 4 or 5) of an RFC 3463 enhanced status code `x.y.z`, or `None` when
/// `status` is not one.
pub(crate) fn status_class(status: &str) -> Option<u8> {
    let mut parts = status.trim().split('.');
    let (Some(class), Some(subject), Some(detail), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return None;
    };
    let digits = |s: &str, max: usize| {
        !s.is_empty() && s.len() <= max && s.bytes().all(|b| b.is_ascii_digit())
    };
    if !(digits(subject, 3) && digits(detail, 3)) {
        return None;
    }
    match class {
        "2" => Some(2),
        "4" => Some(4),
        "5" => Some(5),
        _ => None,
    }
}

/// The first enhanced status code (`5.1.1`) in free text such as a diagnostic, or `None`.
pub(crate) fn find_enhanced_status(text: &str) -> Option<String> {
    text.split(|c: char| !(c.is_ascii_digit() || c == '.'))
        .map(|t| t.trim_matches('.'))
        .find(|t| status_class(t).is_some())
        .map(str::to_string)
}

/// The class (2, 4 or 5) of a basic SMTP reply code at the start of `text` (`550 …`,
/// `smtp; 550 …`), or `None`.
pub(crate) fn reply_class(text: &str) -> Option<u8> {
    let text = text.trim();
    let text = match text.split_once(';') {
        Some((kind, rest)) if !kind.contains(' ') => rest.trim(),
        _ => text,
    };
    let code: String = text.chars().take_while(char::is_ascii_digit).collect();
    if code.len() != 3 {
        return None;
    }
    match code.as_bytes().first() {
        Some(b'2') => Some(2),
        Some(b'4') => Some(4),
        Some(b'5') => Some(5),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes() {
        assert_eq!(status_class("5.1.1"), Some(5));
        assert_eq!(status_class(" 4.2.2 "), Some(4));
        assert_eq!(status_class("2.0.0"), Some(2));
        assert_eq!(status_class("5.7.123"), Some(5));
        for bad in [
            "", "5", "5.1", "5.1.1.1", "3.1.1", "5.x.1", "5..1", "5.1.1234", "550",
        ] {
            assert_eq!(status_class(bad), None, "{bad}");
        }
    }

    #[test]
    fn finds_status_in_text() {
        assert_eq!(
            find_enhanced_status("smtp; 550 5.1.1 <a@b>... User unknown").as_deref(),
            Some("5.1.1")
        );
        assert_eq!(
            find_enhanced_status("452 4.2.2 Mailbox full.").as_deref(),
            Some("4.2.2")
        );
        assert_eq!(
            find_enhanced_status("version 1.2.3 of 550 #5.1.0 Address rejected").as_deref(),
            Some("5.1.0")
        );
        assert_eq!(find_enhanced_status("550 user unknown"), None);
    }

    #[test]
    fn reply_classes() {
        assert_eq!(reply_class("smtp; 550 5.1.1 user unknown"), Some(5));
        assert_eq!(reply_class("452 mailbox full"), Some(4));
        assert_eq!(reply_class("X-Postfix; host said: 550"), None);
        assert_eq!(reply_class("55 short"), None);
    }
}
