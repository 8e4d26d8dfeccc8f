//! The list of common and breached passwords that new passwords may not be (NIST SP 800-63B
//! 5.1.1.2). Source, licence and how to regenerate the file: `data/README.md`.
//!
//! The list is compiled into the binary gzip-compressed and unpacked once into a hash set (about
//! 7 MB): a lookup is one keyed hash and a probe, well under a microsecond (`cargo run --release -p broker-auth-common-passwords --example lookup`).

use std::collections::HashSet;
use std::io::Read;
use std::sync::LazyLock;

/// Lowercased, 8–128 characters, unique, sorted by byte order, one per line.
const COMPRESSED: &[u8] = include_bytes!("../data/common-passwords.txt.gz");

/// The unpacked list.
pub struct CommonPasswords {
    /// The entries, borrowed from the unpacked text, which lives as long as the process.
    entries: HashSet<&'static str>,
    /// The longest entry in bytes: a longer password is not on the list, whatever its case.
    longest: usize,
}

static LIST: LazyLock<CommonPasswords> = LazyLock::new(CommonPasswords::load);

impl CommonPasswords {
    /// The compiled-in list, unpacked at the first call (the API calls this at start, so no
    /// request pays for it).
    pub fn get() -> &'static Self {
        LazyLock::force(&LIST)
    }

    fn load() -> Self {
        let mut text = String::new();
        // The input is a constant compiled into the binary and checked by the tests below, so
        // failing to unpack it is a build defect, not a runtime condition.
        flate2::read::GzDecoder::new(COMPRESSED)
            .read_to_string(&mut text)
            .unwrap_or_else(|error| panic!("the compiled-in password list is corrupt: {error}"));
        // Loaded once per process and kept to its end: leaking the text lets the set borrow it
        // instead of holding 200,000 separate allocations.
        let text: &'static str = Box::leak(text.into_boxed_str());
        let entries: HashSet<&'static str> = text.lines().collect();
        let longest = entries.iter().map(|entry| entry.len()).max().unwrap_or(0);
        Self { entries, longest }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Whether `password`, compared without regard to case, is on the list.
    pub fn contains(&self, password: &str) -> bool {
        // Lowercasing never shrinks text by more than a few bytes per character; anything
        // well past the longest entry cannot match, and is not worth lowercasing.
        if password.len() > self.longest.saturating_mul(2) {
            return false;
        }
        if password.is_ascii() {
            if password.bytes().any(|b| b.is_ascii_uppercase()) {
                return self
                    .entries
                    .contains(password.to_ascii_lowercase().as_str());
            }
            return self.entries.contains(password);
        }
        // Most characters of a non-ASCII password are still ASCII: lowercase those without the
        // Unicode tables (str::to_lowercase costs about a microsecond on twenty characters).
        let mut lowered = String::with_capacity(password.len() + 8);
        for c in password.chars() {
            if c.is_ascii() {
                lowered.push(c.to_ascii_lowercase());
            } else {
                lowered.extend(c.to_lowercase());
            }
        }
        self.entries.contains(lowered.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_list_holds_well_over_a_hundred_thousand_lowercase_entries() {
        let list = CommonPasswords::get();
        assert!(list.len() >= 100_000, "only {} entries", list.len());
        let mut text = String::new();
        flate2::read::GzDecoder::new(COMPRESSED)
            .read_to_string(&mut text)
            .unwrap();
        assert_eq!(text.lines().count(), list.len(), "the file has duplicates");
        for entry in text.lines() {
            assert_eq!(entry, entry.to_lowercase(), "{entry:?} is not lowercase");
            assert!(list.contains(entry), "{entry:?} is not found");
        }
    }

    #[test]
    fn common_passwords_are_found_whatever_their_case() {
        let list = CommonPasswords::get();
        for common in [
            "password",
            "12345678",
            "iloveyou",
            "Password1",
            "QWERTYUIOP",
        ] {
            assert!(list.contains(common), "{common:?} was not found");
        }
    }

    #[test]
    fn uncommon_passwords_are_not_found() {
        let list = CommonPasswords::get();
        let long = "𝄞".repeat(128);
        for rare in [
            "correct horse battery staple 42",
            "Zx9!kq#Lm2@vT7",
            "𝄞𝄞𝄞𝄞𝄞𝄞𝄞𝄞",
            "",
            &long,
        ] {
            assert!(!list.contains(rare), "{rare:?} was found");
        }
    }
}
