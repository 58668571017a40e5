//! Address normalisation for suppression matching.
//!
//! Why this exists: a suppression must catch the address however a tenant or a provider
//! spells it. `Jane@Example.COM` and `jane@example.com` are the same mailbox in practice (no
//! real mailbox provider treats the local part case-sensitively), so matching always
//! lower-cases. When the tenant opts into plus-addressing awareness, `jane+news@…` is the
//! same mailbox as `jane@…`, and on Gmail dots in the local part are ignored and
//! `googlemail.com` is an alias of `gmail.com`; a suppression of one spelling then covers
//! them all. The rules are deliberately few and conservative: a false "same address" would
//! silently stop mail to somebody who never asked for it.
//!
//! The check for plausibility is not RFC 5321 validation: it rejects what cannot be a
//! deliverable address (no `@`, two `@`, empty parts, whitespace or control characters,
//! more than 254 characters) and leaves the rest to the relay.

/// The longest address SMTP can carry (RFC 5321's 256-octet path less the angle brackets).
pub const MAX_LEN: usize = 254;

/// Normalises `email` for matching, or `None` when it is not a plausible address.
///
/// Leading and trailing whitespace is trimmed first. The result is always lower-cased.
/// With `plus_addressing`, a `+tag` suffix of the local part is dropped (when something is
/// left before the `+`), and for `gmail.com` / `googlemail.com` the dots of the local part
/// are removed and the domain becomes `gmail.com`.
pub fn normalise(email: &str, plus_addressing: bool) -> Option<String> {
    let email = email.trim();
    if email.is_empty() || email.len() > MAX_LEN {
        return None;
    }
    if email.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return None;
    }
    let (local, domain) = email.split_once('@')?;
    if local.is_empty() || domain.is_empty() || domain.contains('@') {
        return None;
    }
    if domain.starts_with('.') || domain.ends_with('.') || domain.contains("..") {
        return None;
    }
    let mut local = local.to_lowercase();
    let mut domain = domain.to_lowercase();
    if plus_addressing {
        if let Some((base, _tag)) = local.split_once('+') {
            if !base.is_empty() {
                local = base.to_string();
            }
        }
        if domain == "gmail.com" || domain == "googlemail.com" {
            domain = "gmail.com".to_string();
            let undotted: String = local.chars().filter(|c| *c != '.').collect();
            if !undotted.is_empty() {
                local = undotted;
            }
        }
    }
    let normalised = format!("{local}@{domain}");
    // Lower-casing can lengthen some characters; the limit holds for the result too, which
    // keeps `normalise` idempotent.
    (normalised.len() <= MAX_LEN).then_some(normalised)
}

/// A form of `email` that is safe to put in a log line or an error message: the first
/// character of the local part, `***`, and the domain (`j***@example.com`). Never the whole
/// address. Input that has no `@` becomes `***`.
pub fn redact(email: &str) -> String {
    match email.trim().rsplit_once('@') {
        Some((local, domain)) => {
            let first: String = local.chars().take(1).collect();
            format!("{first}***@{domain}")
        }
        None => "***".to_string(),
    }
}

/// The bare address inside `Name <addr>` or `<addr>`; anything else is returned trimmed.
pub(crate) fn bare(value: &str) -> &str {
    let value = value.trim();
    match value.strip_suffix('>').and_then(|v| v.rsplit_once('<')) {
        Some((_, inside)) => inside.trim(),
        None => value,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lower_cases_always() {
        assert_eq!(
            normalise("Jane.Doe@Example.COM", false).as_deref(),
            Some("jane.doe@example.com")
        );
        assert_eq!(
            normalise("Jane.Doe@Example.COM", true).as_deref(),
            Some("jane.doe@example.com")
        );
    }

    #[test]
    fn trims_surrounding_whitespace() {
        assert_eq!(
            normalise("  a@b.example \n", false).as_deref(),
            Some("a@b.example")
        );
    }

    #[test]
    fn rejects_implausible_addresses() {
        for bad in [
            "",
            "   ",
            "no-at-sign",
            "@example.com",
            "jane@",
            "jane@@example.com",
            "ja@ne@example.com",
            "jane doe@example.com",
            "jane@exa mple.com",
            "jane\u{0}@example.com",
            "jane\t@example.com",
            "jane@.example.com",
            "jane@example.com.",
            "jane@example..com",
        ] {
            assert_eq!(normalise(bad, false), None, "{bad:?}");
            assert_eq!(normalise(bad, true), None, "{bad:?}");
        }
    }

    #[test]
    fn length_limit_is_254() {
        let domain = "example.com";
        let at_limit = format!("{}@{domain}", "a".repeat(MAX_LEN - 1 - domain.len()));
        assert_eq!(at_limit.len(), 254);
        assert!(normalise(&at_limit, false).is_some());
        let over = format!("a{at_limit}");
        assert_eq!(normalise(&over, false), None);
        // 'İ' (2 bytes) lower-cases to 'i̇' (3 bytes): the result must fit as well.
        let grows = format!("{}İ@{domain}", "a".repeat(MAX_LEN - 3 - domain.len()));
        assert_eq!(grows.len(), 254);
        assert_eq!(normalise(&grows, false), None);
    }

    #[test]
    fn plus_tag_dropped_only_when_asked() {
        assert_eq!(
            normalise("jane+news@example.com", false).as_deref(),
            Some("jane+news@example.com")
        );
        assert_eq!(
            normalise("jane+news@example.com", true).as_deref(),
            Some("jane@example.com")
        );
        assert_eq!(
            normalise("jane+a+b@example.com", true).as_deref(),
            Some("jane@example.com")
        );
        // Nothing before the `+`: not a tag, left alone.
        assert_eq!(
            normalise("+news@example.com", true).as_deref(),
            Some("+news@example.com")
        );
    }

    #[test]
    fn dots_kept_outside_gmail() {
        assert_eq!(
            normalise("jane.doe@example.com", true).as_deref(),
            Some("jane.doe@example.com")
        );
        assert_eq!(
            normalise("jane.doe@gmail.co.uk", true).as_deref(),
            Some("jane.doe@gmail.co.uk")
        );
    }

    #[test]
    fn gmail_dots_removed_when_asked() {
        assert_eq!(
            normalise("Jane.Doe@Gmail.com", true).as_deref(),
            Some("janedoe@gmail.com")
        );
        assert_eq!(
            normalise("jane.doe@gmail.com", false).as_deref(),
            Some("jane.doe@gmail.com")
        );
        assert_eq!(
            normalise("j.a.n.e+x@gmail.com", true).as_deref(),
            Some("jane@gmail.com")
        );
    }

    #[test]
    fn googlemail_maps_to_gmail_when_asked() {
        assert_eq!(
            normalise("jane.doe@googlemail.com", true).as_deref(),
            Some("janedoe@gmail.com")
        );
        assert_eq!(
            normalise("jane.doe@googlemail.com", false).as_deref(),
            Some("jane.doe@googlemail.com")
        );
    }

    #[test]
    fn redact_never_shows_the_local_part() {
        assert_eq!(redact("jane.doe@example.com"), "j***@example.com");
        assert_eq!(redact("no-at"), "***");
        assert!(!redact("secretname@example.com").contains("secretname"));
    }

    #[test]
    fn bare_strips_display_names_and_brackets() {
        assert_eq!(bare("\"Jane\" <jane@example.com>"), "jane@example.com");
        assert_eq!(bare("<jane@example.com>"), "jane@example.com");
        assert_eq!(bare(" jane@example.com "), "jane@example.com");
    }
}
