//! Shell-style words: a `command:` or `entrypoint:` written as one string is
//! split into a program and its arguments the way a POSIX shell splits words —
//! blanks separate words, single quotes keep everything literally, double quotes
//! keep everything but `\"`, `\\`, `\$` and `` \` `` escapes, a backslash outside
//! quotes escapes the next character — but nothing is expanded: `$HOME`, `*`,
//! `~`, `#` and `|` are ordinary characters, since no shell runs the command.

/// Splits `text` into words; the error names the unterminated quote or the
/// trailing backslash.
pub fn split(text: &str) -> Result<Vec<String>, String> {
    let mut words = Vec::new();
    let mut word = String::new();
    // A word may be empty (`''`), so whether one is open is tracked apart from
    // its text.
    let mut in_word = false;
    let mut chars = text.char_indices().peekable();
    while let Some((at, c)) = chars.next() {
        match c {
            ' ' | '\t' | '\n' | '\r' => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            '\\' => match chars.next() {
                // A backslash before a newline joins the lines.
                Some((_, '\n')) => {}
                Some((_, next)) => {
                    word.push(next);
                    in_word = true;
                }
                None => {
                    return Err(format!(
                        "`{}` ends with a backslash that escapes nothing",
                        shorten(text)
                    ))
                }
            },
            '\'' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some((_, '\'')) => break,
                        Some((_, ch)) => word.push(ch),
                        None => {
                            return Err(format!(
                                "`{}` has a single quote at character {} that is never closed",
                                shorten(text),
                                at + 1
                            ))
                        }
                    }
                }
            }
            '"' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some((_, '"')) => break,
                        Some((_, '\\')) => match chars.peek() {
                            Some((_, e @ ('"' | '\\' | '$' | '`'))) => {
                                word.push(*e);
                                chars.next();
                            }
                            Some((_, '\n')) => {
                                chars.next();
                            }
                            _ => word.push('\\'),
                        },
                        Some((_, ch)) => word.push(ch),
                        None => {
                            return Err(format!(
                                "`{}` has a double quote at character {} that is never closed",
                                shorten(text),
                                at + 1
                            ))
                        }
                    }
                }
            }
            other => {
                word.push(other);
                in_word = true;
            }
        }
    }
    if in_word {
        words.push(word);
    }
    Ok(words)
}

/// Quotes `word` so that [`split`] reads it back as one word.
pub fn quote(word: &str) -> String {
    let plain = !word.is_empty()
        && word
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_@%+=:,./-".contains(c));
    if plain {
        word.to_string()
    } else {
        // Inside single quotes only `'` is special; it is closed, escaped and
        // reopened.
        format!("'{}'", word.replace('\'', "'\\''"))
    }
}

/// Joins words into one line that [`split`] turns back into the same words.
pub fn join<S: AsRef<str>>(words: &[S]) -> String {
    words
        .iter()
        .map(|w| quote(w.as_ref()))
        .collect::<Vec<_>>()
        .join(" ")
}

/// The start of a long text, for messages.
fn shorten(text: &str) -> String {
    const MAX: usize = 60;
    match text.char_indices().nth(MAX) {
        Some((end, _)) => format!("{}…", &text[..end]),
        None => text.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn words(s: &str) -> Vec<String> {
        split(s).expect("splits")
    }

    #[test]
    fn splits_like_a_shell() {
        assert_eq!(words("  a  b\tc\n"), ["a", "b", "c"]);
        assert_eq!(words("echo 'a b' \"c d\""), ["echo", "a b", "c d"]);
        assert_eq!(words(r"a\ b c\\d"), ["a b", r"c\d"]);
        assert_eq!(words(r#""a\"b\$c\d""#), [r#"a"b$c\d"#]);
        assert_eq!(words("'' \"\""), ["", ""]);
        assert_eq!(words("a'b'\"c\"d"), ["abcd"]);
        assert_eq!(words("a\\\nb"), ["ab"]);
        assert_eq!(words("'it'\\''s'"), ["it's"]);
        assert_eq!(words("$HOME *.txt # x"), ["$HOME", "*.txt", "#", "x"]);
        assert!(words("   ").is_empty());
    }

    #[test]
    fn refuses_unterminated_quotes() {
        let e = split("echo 'abc").expect_err("an error");
        assert!(e.contains("single quote at character 6"), "{e}");
        let e = split("echo \"abc").expect_err("an error");
        assert!(e.contains("double quote at character 6"), "{e}");
        let e = split("echo \\").expect_err("an error");
        assert!(e.contains("backslash"), "{e}");
    }

    #[test]
    fn quotes_only_what_needs_it() {
        assert_eq!(quote("abc"), "abc");
        assert_eq!(quote("/usr/bin/x=1"), "/usr/bin/x=1");
        assert_eq!(quote(""), "''");
        assert_eq!(quote("a b"), "'a b'");
        assert_eq!(quote("it's"), "'it'\\''s'");
    }

    proptest! {
        #[test]
        fn join_then_split_round_trips(ws in proptest::collection::vec("\\PC{0,12}|[ '\"\\\\\n\t$a]{0,8}", 0..6)) {
            prop_assert_eq!(split(&join(&ws)), Ok(ws.clone()));
        }

        #[test]
        fn split_never_panics(s in "\\PC{0,40}|[ '\"\\\\\na]{0,20}") {
            let _ = split(&s);
        }
    }
}
