//! The content filter (SPEC.md §7, SEND: content filter): an operator's word list, matched in
//! TEXT bodies with an Aho-Corasick automaton (one pass over the body whatever the list's
//! length), ignoring ASCII case. A match refuses the message (CONTENT_REJECTED) or masks each
//! matched character with `*`, as configured. The list is a file, one word per line (blank
//! lines and lines starting with `#` ignored), read at start and again on SIGHUP; a list that
//! fails to load keeps the previous one.
//!
//! Only ASCII letters match case-insensitively (the automaton compares bytes); other scripts
//! match as written in the list.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use aho_corasick::{AhoCorasick, AhoCorasickBuilder, MatchKind};

/// What a match does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FilterMode {
    /// Refuse the SEND with CONTENT_REJECTED; nothing is stored.
    #[default]
    Reject,
    /// Store and deliver the message with every matched character replaced by `*`.
    Mask,
}

/// Why a word list could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum FilterError {
    #[error("reading the word list {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("building the word matcher: {0}")]
    Build(#[from] aho_corasick::BuildError),
}

/// One loaded word list.
#[derive(Debug)]
pub struct WordList {
    matcher: Option<AhoCorasick>,
    words: usize,
}

impl WordList {
    /// A list from the file's text.
    pub fn parse(text: &str) -> Result<WordList, FilterError> {
        let words: Vec<&str> = text
            .lines()
            .map(str::trim)
            .filter(|w| !w.is_empty() && !w.starts_with('#'))
            .collect();
        let matcher = if words.is_empty() {
            None
        } else {
            Some(
                AhoCorasickBuilder::new()
                    .ascii_case_insensitive(true)
                    // The longest word wins where several start at one place ("ass" inside
                    // "assassin" masks the whole listed word).
                    .match_kind(MatchKind::LeftmostLongest)
                    .build(&words)?,
            )
        };
        Ok(WordList {
            matcher,
            words: words.len(),
        })
    }

    /// Number of words.
    pub fn len(&self) -> usize {
        self.words
    }

    pub fn is_empty(&self) -> bool {
        self.words == 0
    }

    /// Whether `text` contains a listed word.
    pub fn matches(&self, text: &str) -> bool {
        self.matcher.as_ref().is_some_and(|m| m.is_match(text))
    }

    /// `text` with every character of every match replaced by `*`, or `None` without a match.
    pub fn mask(&self, text: &str) -> Option<String> {
        let m = self.matcher.as_ref()?;
        let mut out = String::with_capacity(text.len());
        let mut last = 0;
        let mut any = false;
        for found in m.find_iter(text) {
            // Matches of whole UTF-8 words start and end on character boundaries.
            out.push_str(&text[last..found.start()]);
            out.extend(text[found.start()..found.end()].chars().map(|_| '*'));
            last = found.end();
            any = true;
        }
        if !any {
            return None;
        }
        out.push_str(&text[last..]);
        Some(out)
    }
}

/// What the filter decided for a message body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Store as sent.
    Pass,
    /// Refuse (CONTENT_REJECTED).
    Reject,
    /// Store this body instead.
    Masked(Vec<u8>),
}

/// The node's filter: the file, the mode and the list in force (replaced whole on reload).
#[derive(Debug)]
pub struct ContentFilter {
    path: PathBuf,
    mode: FilterMode,
    list: RwLock<Arc<WordList>>,
}

impl ContentFilter {
    /// Loads the list from `path`.
    pub fn load(path: &Path, mode: FilterMode) -> Result<ContentFilter, FilterError> {
        let list = read(path)?;
        Ok(ContentFilter {
            path: path.to_owned(),
            mode,
            list: RwLock::new(Arc::new(list)),
        })
    }

    /// Reads the file again; on failure the previous list stays. Returns the number of words.
    pub fn reload(&self) -> Result<usize, FilterError> {
        let list = read(&self.path)?;
        let n = list.len();
        // A poisoned lock only means a reader panicked holding it: the `Arc` is intact.
        *self.list.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(list);
        Ok(n)
    }

    /// The list in force.
    pub fn list(&self) -> Arc<WordList> {
        Arc::clone(&self.list.read().unwrap_or_else(|e| e.into_inner()))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The decision for a message of `kind` (only TEXT is looked at) with `body`.
    pub fn check(&self, kind: u8, body: &[u8]) -> Verdict {
        if kind != tern_protocol::MessageKind::TEXT.0 {
            return Verdict::Pass;
        }
        // A TEXT body that is not UTF-8 is checked with the invalid bytes replaced, so they
        // cannot hide a word from the filter; it cannot be masked in place, so when it matches
        // it is refused whatever the mode.
        let lossy;
        let (text, whole) = match std::str::from_utf8(body) {
            Ok(t) => (t, true),
            Err(_) => {
                lossy = String::from_utf8_lossy(body);
                (lossy.as_ref(), false)
            }
        };
        let list = self.list();
        match self.mode {
            FilterMode::Reject if list.matches(text) => Verdict::Reject,
            FilterMode::Reject => Verdict::Pass,
            FilterMode::Mask => match list.mask(text) {
                None => Verdict::Pass,
                Some(_) if !whole => Verdict::Reject,
                Some(masked) => Verdict::Masked(masked.into_bytes()),
            },
        }
    }
}

fn read(path: &Path) -> Result<WordList, FilterError> {
    let text = std::fs::read_to_string(path).map_err(|source| FilterError::Read {
        path: path.to_owned(),
        source,
    })?;
    WordList::parse(&text)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn words_match_ignoring_ascii_case_and_mask_per_character() {
        let l = WordList::parse("# operator list\ndarn\n\n  heck  \nbäd\n").unwrap();
        assert_eq!(l.len(), 3);
        assert!(l.matches("oh DARN it"));
        assert!(!l.matches("oh dam it"));
        assert_eq!(l.mask("Darn, heck! darned").unwrap(), "****, ****! ****ed");
        assert_eq!(
            l.mask("so bäd").unwrap(),
            "so ***",
            "one star per character"
        );
        assert_eq!(l.mask("fine"), None);
        let empty = WordList::parse("# nothing\n").unwrap();
        assert!(empty.is_empty() && !empty.matches("darn") && empty.mask("darn").is_none());
    }

    #[test]
    fn the_mode_decides_and_reload_replaces_the_list() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("words.txt");
        std::fs::write(&path, "darn\n").unwrap();
        let reject = ContentFilter::load(&path, FilterMode::Reject).unwrap();
        let mask = ContentFilter::load(&path, FilterMode::Mask).unwrap();
        let text = tern_protocol::MessageKind::TEXT.0;
        assert_eq!(reject.check(text, b"darn it"), Verdict::Reject);
        assert_eq!(reject.check(text, b"fine"), Verdict::Pass);
        assert_eq!(
            reject.check(tern_protocol::MessageKind::CUSTOM.0, b"darn"),
            Verdict::Pass,
            "only TEXT is looked at"
        );
        assert_eq!(
            mask.check(text, b"darn it"),
            Verdict::Masked(b"**** it".to_vec())
        );
        assert_eq!(mask.check(text, b"darn \xff"), Verdict::Reject);
        std::fs::write(&path, "heck\n").unwrap();
        assert_eq!(reject.reload().unwrap(), 1);
        assert_eq!(reject.check(text, b"darn it"), Verdict::Pass);
        assert_eq!(reject.check(text, b"HECK"), Verdict::Reject);
        std::fs::remove_file(&path).unwrap();
        assert!(reject.reload().is_err());
        assert_eq!(
            reject.check(text, b"heck"),
            Verdict::Reject,
            "old list kept"
        );
    }
}
