//! The handshake's query string, decoded as a browser encodes it (`+` for space, `%XX` escapes).

/// The pairs in order; repeated names are kept. Escapes that are not UTF-8 decode to U+FFFD.
pub fn pairs(raw: &str) -> Vec<(String, String)> {
    form_urlencoded::parse(raw.as_bytes())
        .into_owned()
        .collect()
}

/// Whether the first value of `name` has escapes that are not UTF-8 (`name=%FF`): such a value
/// is not a valid parameter, and must not be silently repaired into one.
pub fn first_is_not_utf8(raw: &str, name: &str) -> bool {
    raw.split('&')
        .filter_map(|pair| {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            let key = decode(key)?;
            (key == name).then_some(value)
        })
        .next()
        .is_some_and(|value| decode(value).is_none())
}

fn decode(s: &str) -> Option<String> {
    let spaced = s.replace('+', " ");
    percent_encoding::percent_decode_str(&spaced)
        .decode_utf8()
        .ok()
        .map(|s| s.into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_are_decoded_in_order_with_repeats() {
        assert_eq!(
            pairs("name=Ada+L%C3%A9&x=1&name=second"),
            vec![
                ("name".to_owned(), "Ada Lé".to_owned()),
                ("x".to_owned(), "1".to_owned()),
                ("name".to_owned(), "second".to_owned()),
            ]
        );
    }

    #[test]
    fn only_the_first_name_decides_whether_it_is_utf8() {
        assert!(first_is_not_utf8("name=%FF", "name"));
        assert!(first_is_not_utf8("a=1&name=%C3", "name"));
        assert!(!first_is_not_utf8("name=ok&name=%FF", "name"));
        assert!(!first_is_not_utf8("other=%FF", "name"));
        assert!(!first_is_not_utf8("", "name"));
    }
}
