//! How an API key is shown: enough to tell keys apart, never enough to use one.

/// `sk-proj-abcdef…wxyz` → `sk-…wxyz`: the first three characters and the last
/// four of a key of 16 characters or more, only the last four of a shorter one
/// (of 8 or more), and nothing of a key shorter than that.
pub fn mask_key(key: &str) -> String {
    let chars: Vec<char> = key.chars().collect();
    let n = chars.len();
    let tail: String = chars[n.saturating_sub(4)..].iter().collect();
    if n >= 16 {
        let head: String = chars[..3].iter().collect();
        format!("{head}…{tail}")
    } else if n >= 8 {
        format!("…{tail}")
    } else {
        "…".to_string()
    }
}

/// `text` with every occurrence of `key` replaced by its mask (a provider may
/// echo a key it refused in its error message).
pub fn scrub(text: &str, key: Option<&str>) -> String {
    match key {
        Some(k) if k.len() >= 4 && text.contains(k) => text.replace(k, &mask_key(k)),
        _ => text.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks() {
        assert_eq!(mask_key("sk-proj-0123456789abcd"), "sk-…abcd");
        assert_eq!(mask_key("0123456789"), "…6789");
        assert_eq!(mask_key("short"), "…");
        assert_eq!(mask_key(""), "…");
        assert_eq!(
            scrub(
                "bad key sk-proj-0123456789abcd given",
                Some("sk-proj-0123456789abcd")
            ),
            "bad key sk-…abcd given"
        );
        assert_eq!(scrub("nothing", None), "nothing");
    }
}
