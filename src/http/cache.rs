//! Registry answers kept at the chain's head: a discovery answer is a function of the projection
//! and the query, and the projection is a function of the chain, so an answer written as JSON
//! once serves every same query until the next commit (dashboards poll the same few queries).
//! Bounded by bytes; every commit (a new head hash) starts it afresh. An answer is kept by its
//! whole path and query string, limit and cursor included: each page is an answer of its own,
//! kept with its next cursor.

use std::collections::HashMap;

use axum::body::Bytes;

use crate::core::sync;
use crate::core::types::ChainHash;

/// One kept answer: the JSON body and the page's next cursor (`spores-next-cursor`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Kept {
    /// The body as written.
    pub(super) body: Bytes,
    /// The next page's cursor (`None`: the last page).
    pub(super) next: Option<String>,
}

/// The answers written at one head, by query.
pub(super) struct AnswerCache {
    inner: std::sync::Mutex<AtHead>,
    bytes_max: usize,
}

#[derive(Default)]
struct AtHead {
    /// The head the answers were written at (`None`: no chain yet).
    head: Option<ChainHash>,
    answers: HashMap<String, Kept>,
    bytes: usize,
}

impl AnswerCache {
    /// A cache of at most `bytes_max` bytes of answers (0: none kept).
    pub(super) fn new(bytes_max: usize) -> Self {
        AnswerCache { inner: std::sync::Mutex::new(AtHead::default()), bytes_max }
    }

    /// The answer to `query` written at `head`, if one is kept.
    pub(super) fn get(&self, head: Option<ChainHash>, query: &str) -> Option<Kept> {
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
    pub(super) fn put(&self, head: Option<ChainHash>, query: &str, answer: &Kept) {
        let size = answer.body.len() + answer.next.as_ref().map_or(0, String::len);
        if size > self.bytes_max {
            return;
        }
        let mut kept = sync::lock(&self.inner);
        if kept.head != head {
            *kept = AtHead { head, ..AtHead::default() };
        }
        if kept.bytes + size > self.bytes_max || kept.answers.contains_key(query) {
            return;
        }
        kept.bytes += size;
        kept.answers.insert(query.to_string(), answer.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kept(body: &'static [u8]) -> Kept {
        Kept { body: Bytes::from_static(body), next: None }
    }

    #[test]
    fn answers_serve_their_own_head_only_within_the_bound() {
        let cache = AnswerCache::new(10);
        let (h1, h2) = (Some(ChainHash([1; 32])), Some(ChainHash([2; 32])));
        cache.put(h1, "a", &kept(b"12345"));
        assert_eq!(cache.get(h1, "a").map(|k| k.body).as_deref(), Some(b"12345".as_slice()));
        assert_eq!(cache.get(h2, "a"), None, "another head");
        cache.put(h1, "b", &kept(b"123456"));
        assert_eq!(cache.get(h1, "b"), None, "past the bound");
        cache.put(h2, "b", &kept(b"123456"));
        assert_eq!(
            (cache.get(h1, "a"), cache.get(h2, "b").map(|k| k.body.len())),
            (None, Some(6)),
            "a new head starts afresh"
        );
        let none = AnswerCache::new(0);
        none.put(h1, "a", &kept(b""));
        assert_eq!(none.get(h1, "a"), None);
    }

    #[test]
    fn each_page_is_kept_with_its_own_next_cursor() {
        let cache = AnswerCache::new(1 << 10);
        let h = Some(ChainHash([1; 32]));
        let first = Kept { body: Bytes::from_static(b"[1]"), next: Some("1".into()) };
        cache.put(h, "/v1/services?limit=1", &first);
        cache.put(h, "/v1/services?limit=1&cursor=1", &kept(b"[2]"));
        assert_eq!(cache.get(h, "/v1/services?limit=1"), Some(first));
        assert_eq!(cache.get(h, "/v1/services?limit=1&cursor=1"), Some(kept(b"[2]")));
        assert_eq!(cache.get(h, "/v1/services"), None, "another limit is another answer");
    }
}
