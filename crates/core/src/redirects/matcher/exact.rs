//! Exact-match tables for `BASIC` and `BASIC_HOST` rules, looked up without building
//! the `host+uri` key.
//!
//! A `host+uri` key is hashed in two parts: the text before its first `/` and the
//! rest. A stored `BASIC_HOST` source is split the same way, so for an ordinary request
//! (a `Host` without `/` and a URI starting with `/`) the parts are exactly the `Host`
//! header and the URI, and the hash of the URI alone serves both tables. Any other
//! request is joined and split like a stored key, which gives the same answer as
//! comparing the plain concatenation.

use std::hash::{BuildHasher, Hasher};

use foldhash::fast::RandomState;
use hashbrown::HashTable;

/// Index meaning "none" in [`Answers`].
pub(super) const NONE: u32 = u32::MAX;

/// What an exact key answers: a page and/or a redirect (indices into the set's pages
/// and targets, [`NONE`] when absent).
#[derive(Clone, Copy)]
pub(super) struct Answers {
    pub page: u32,
    pub redirect: u32,
}

struct Entry {
    key: Box<str>,
    /// Where the key's host part ends in a `host+uri` table (0 in a URI table).
    split: u32,
    answers: Answers,
}

/// Where a `host+uri` key's host part ends: its first `/`, or its end.
pub(super) fn host_split(key: &str) -> usize {
    key.find('/').unwrap_or(key.len())
}

/// The hashing of a rule set's tables (one random seed per set).
#[derive(Default)]
pub(super) struct Hashing {
    state: RandomState,
}

/// The hashes of one request, computed once for both tables.
pub(super) struct RequestHashes {
    /// Hash of the URI (the `BASIC` key).
    pub uri: u64,
    /// Hash of `host+uri` when its parts are the `Host` header and the URI.
    pub host_uri: Option<u64>,
}

impl Hashing {
    pub fn one(&self, s: &str) -> u64 {
        let mut h = self.state.build_hasher();
        h.write(s.as_bytes());
        h.finish()
    }

    /// The hash of a `host+uri` key given as its host part and its path part.
    pub fn two(&self, host: &str, path: &str) -> u64 {
        combine(self.one(host), self.one(path))
    }

    pub fn request(&self, host: &str, uri: &str, with_host: bool) -> RequestHashes {
        let uri_hash = self.one(uri);
        let ordinary = with_host && uri.starts_with('/') && !host.contains('/');
        RequestHashes {
            uri: uri_hash,
            host_uri: ordinary.then(|| combine(self.one(host), uri_hash)),
        }
    }
}

fn combine(host: u64, path: u64) -> u64 {
    path ^ host.rotate_left(23).wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

/// Keys to [`Answers`]: either whole URIs or `host+uri` keys stored split. Entries sit
/// in the table itself, so a hit reads the control bytes, the entry and its key.
pub(super) struct ExactTable {
    host_keys: bool,
    table: HashTable<Entry>,
}

impl ExactTable {
    pub fn new(host_keys: bool, capacity: usize) -> Self {
        Self {
            host_keys,
            table: HashTable::with_capacity(capacity),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
    }

    /// Applies `update` to the answers of `key`, adding the key if it is new.
    pub fn upsert(&mut self, hashing: &Hashing, key: String, update: impl FnOnce(&mut Answers)) {
        let entry = Entry {
            split: if self.host_keys {
                host_split(&key) as u32
            } else {
                0
            },
            key: key.into_boxed_str(),
            answers: Answers {
                page: NONE,
                redirect: NONE,
            },
        };
        let host_keys = self.host_keys;
        let hash = entry_hash(hashing, host_keys, &entry);
        let rehash = |e: &Entry| entry_hash(hashing, host_keys, e);
        let slot = match self.table.entry(hash, |e| e.key == entry.key, rehash) {
            hashbrown::hash_table::Entry::Occupied(o) => o.into_mut(),
            hashbrown::hash_table::Entry::Vacant(v) => v.insert(entry).into_mut(),
        };
        update(&mut slot.answers);
    }

    pub fn shrink(&mut self, hashing: &Hashing) {
        let host_keys = self.host_keys;
        self.table
            .shrink_to_fit(|e| entry_hash(hashing, host_keys, e));
    }

    /// The answers of a whole key.
    #[inline]
    pub fn get(&self, hash: u64, key: &str) -> Option<Answers> {
        self.table.find(hash, |e| *e.key == *key).map(|e| e.answers)
    }

    /// The answers of a `host+uri` key given as its host part and its path part.
    #[inline]
    pub fn get_split(&self, hash: u64, host: &str, path: &str) -> Option<Answers> {
        self.table
            .find(hash, |e| {
                let (h, p) = e.key.split_at(e.split as usize);
                h == host && p == path
            })
            .map(|e| e.answers)
    }

    /// The answers of `host+uri` for any `host` and `uri`: ordinary requests use the
    /// precomputed hash, others are joined and split like a stored key.
    pub fn get_host_uri(
        &self,
        hashing: &Hashing,
        hashes: &RequestHashes,
        host: &str,
        uri: &str,
    ) -> Option<Answers> {
        if let Some(hash) = hashes.host_uri {
            return self.get_split(hash, host, uri);
        }
        let key = [host, uri].concat();
        let (h, p) = key.split_at(host_split(&key));
        self.get_split(hashing.two(h, p), h, p)
    }
}

fn entry_hash(hashing: &Hashing, host_keys: bool, e: &Entry) -> u64 {
    if host_keys {
        let (h, p) = e.key.split_at(e.split as usize);
        hashing.two(h, p)
    } else {
        hashing.one(&e.key)
    }
}
