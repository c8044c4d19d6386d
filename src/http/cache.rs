//! Registry answers kept at the chain's head: a discovery answer is a function of the projection
//! and the query, and the projection is a function of the chain, so an answer written as JSON
//! once serves every same query until the next commit (dashboards poll the same few queries).
//! Bounded by bytes; every commit (a new head hash) starts it afresh.

use std::collections::HashMap;

use axum::body::Bytes;

use crate::core::sync;
use crate::core::types::ChainHash;

/// The answers written at one head, by query.
pub(super) struct AnswerCache {
    inner: std::sync::Mutex<Kept>,
    bytes_max: usize,
}

#[derive(Default)]
struct Kept {
    /// The head the answers were written at (`None`: no chain yet).
    head: Option<ChainHash>,
    answers: HashMap<String, Bytes>,
    bytes: usize,
}

impl AnswerCache {
    /// A cache of at most `bytes_max` bytes of answers (0: none kept).
    pub(super) fn new(bytes_max: usize) -> Self {
        AnswerCache { inner: std::sync::Mutex::new(Kept::default()), bytes_max }
    }

    /// The answer to `query` written at `head`, if one is kept.
    pub(super) fn get(&self, head: Option<ChainHash>, query: &str) -> Option<Bytes> {
        if self.bytes_max == 0 {
            return None;
        }
        let kept = sync::lock(&self.inner);
        if kept.head != head {
            return None;
        }
        kept.answers.get(query).cloned()
    }

    /// Keeps `answer` to `query`, written at `head`: the answers of another head go; an answer
    /// that would pass the bound is not kept.
    pub(super) fn put(&self, head: Option<ChainHash>, query: &str, answer: &Bytes) {
        if answer.len() > self.bytes_max {
            return;
        }
        let mut kept = sync::lock(&self.inner);
        if kept.head != head {
            *kept = Kept { head, ..Kept::default() };
        }
        if kept.bytes + answer.len() > self.bytes_max || kept.answers.contains_key(query) {
            return;
        }
        kept.bytes += answer.len();
        kept.answers.insert(query.to_string(), answer.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_serve_their_own_head_only_within_the_bound() {
        let cache = AnswerCache::new(10);
        let (h1, h2) = (Some(ChainHash([1; 32])), Some(ChainHash([2; 32])));
        cache.put(h1, "a", &Bytes::from_static(b"12345"));
        assert_eq!(cache.get(h1, "a").as_deref(), Some(b"12345".as_slice()));
        assert_eq!(cache.get(h2, "a"), None, "another head");
        cache.put(h1, "b", &Bytes::from_static(b"123456"));
        assert_eq!(cache.get(h1, "b"), None, "past the bound");
        cache.put(h2, "b", &Bytes::from_static(b"123456"));
        assert_eq!(
            (cache.get(h1, "a"), cache.get(h2, "b").map(|b| b.len())),
            (None, Some(6)),
            "a new head starts afresh"
        );
        let none = AnswerCache::new(0);
        none.put(h1, "a", &Bytes::new());
        assert_eq!(none.get(h1, "a"), None);
    }
}
