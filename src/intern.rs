//! Store answers shared by cache entries: keys of one configuration get
//! equal answers from the store but for the key's own facts, so the rest is
//! kept once (by content hash) and a cached key costs its map entry alone.
//! Provider plans and scopes are shared too, between configurations.

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::rc::Rc;
use std::sync::Arc;

use keygate_proto::lookup::{Access, KeyInfo, Limits, Lookup, ProviderPlan, RequestLimits};

use crate::cache;
use crate::key_answer::{KeyAnswer, KeyFacts, KeyId};

/// Most distinct answers / plans / scopes kept for sharing; past it a table
/// starts over.
const MAX_INTERNED: usize = 4_096;

#[derive(Default)]
pub struct Interner {
    answers: HashMap<u64, Rc<Lookup>>,
    plans: HashMap<u64, Arc<Vec<ProviderPlan>>>,
    scopes: HashMap<u64, Arc<Access>>,
}

impl Interner {
    /// A fresh store answer: the key's own facts apart, the rest shared with
    /// the equal answers of other keys. A key whose facts the cache cannot
    /// keep inline (an id the store does not make) keeps its answer whole.
    pub fn answer(&mut self, lookup: Lookup) -> KeyAnswer {
        let mut lookup = self.intern(lookup);
        let version = std::mem::take(&mut lookup.version);
        let key = match lookup.key.as_mut() {
            None => None,
            Some(k) => {
                let facts = KeyFacts { id: KeyId::new(&k.id), valid_until: k.valid_until };
                if cache::inline(&facts).is_none() {
                    lookup.version = version;
                    return KeyAnswer::of(Rc::new(lookup));
                }
                (k.id, k.valid_until) = (String::new(), None);
                Some(facts)
            }
        };
        let slot = answer_hash(&lookup);
        let shared = match self.answers.get(&slot) {
            Some(shared) if **shared == lookup => shared.clone(),
            _ => {
                if self.answers.len() >= MAX_INTERNED {
                    self.answers.clear();
                }
                let shared = Rc::new(lookup);
                self.answers.insert(slot, shared.clone());
                shared
            }
        };
        KeyAnswer::split(shared, version, key)
    }

    /// A fresh store answer, sharing its plan and scope with equal earlier ones.
    fn intern(&mut self, mut lookup: Lookup) -> Lookup {
        if !lookup.providers.is_empty() {
            share(&mut self.plans, &mut lookup.providers);
        }
        if let Some(access) = lookup.access.as_mut() {
            share(&mut self.scopes, access);
        }
        lookup
    }
}

/// A shared answer's hash: its plan and scope by address (interned first,
/// so equal ones are one). Every field is named: a new one is not left out.
fn answer_hash(lookup: &Lookup) -> u64 {
    let Lookup { schema, version, status, key, access, providers, limits, request_limits, budgeted } = lookup;
    let mut h = DefaultHasher::new();
    (schema, version, *status as u8, budgeted).hash(&mut h);
    key.as_ref().map(|KeyInfo { id, config_id, valid_until }| (id, config_id, valid_until)).hash(&mut h);
    // An empty plan is not interned (a refused key's): its address differs.
    let plan = (!providers.is_empty()).then_some(Arc::as_ptr(providers));
    (access.as_ref().map(Arc::as_ptr), plan).hash(&mut h);
    if let Some(Limits { requests_per_minute, tokens_per_minute }) = limits {
        (requests_per_minute, tokens_per_minute).hash(&mut h);
    }
    if let Some(r) = request_limits {
        let RequestLimits {
            max_input_tokens,
            max_output_tokens,
            max_concurrent_requests,
            attempt_timeout_ms,
            total_timeout_ms,
        } = r;
        (max_input_tokens, max_output_tokens, max_concurrent_requests, attempt_timeout_ms, total_timeout_ms)
            .hash(&mut h);
    }
    h.finish()
}

fn share<T: Hash + PartialEq>(table: &mut HashMap<u64, Arc<T>>, value: &mut Arc<T>) {
    let mut h = DefaultHasher::new();
    value.hash(&mut h);
    let slot = h.finish();
    match table.get(&slot) {
        Some(shared) if **shared == **value => *value = shared.clone(),
        _ => {
            if table.len() >= MAX_INTERNED {
                table.clear();
            }
            table.insert(slot, value.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(provider: &str) -> Lookup {
        let json = format!(
            r#"{{"schema":1,"version":1,"status":"active","providers":[{{"id":"{provider}","format":"openai","auth":"bearer","baseUrl":"https://x","models":[],"routes":[]}}]}}"#
        );
        serde_json::from_str(&json).unwrap()
    }

    #[test]
    fn equal_plans_are_kept_once() {
        let mut i = Interner::default();
        let a = i.intern(answer("openai"));
        let b = i.intern(answer("openai"));
        let c = i.intern(answer("groq"));
        assert!(Arc::ptr_eq(&a.providers, &b.providers));
        assert!(!Arc::ptr_eq(&a.providers, &c.providers));
    }

    #[test]
    fn a_full_table_starts_over() {
        let mut i = Interner::default();
        for n in 0..MAX_INTERNED + 10 {
            i.answer(answer(&format!("p{n}")));
        }
        assert!(i.plans.len() <= MAX_INTERNED);
        assert!(i.answers.len() <= MAX_INTERNED);
    }

    fn key_answer(own: &str, version: u64, extra: &str) -> Lookup {
        let json = format!(
            r#"{{"schema":1,"version":{version},"status":"active","key":{{{own},"configId":"akc_1"}},"access":{{"models":["gpt-*"]}},
            "providers":[{{"id":"openai","format":"openai","auth":"bearer","baseUrl":"https://x","models":[],"routes":[]}}]{extra}}}"#
        );
        serde_json::from_str(&json).unwrap()
    }

    #[test]
    fn keys_of_one_configuration_share_all_but_their_own_facts() {
        let mut i = Interner::default();
        let a = i.answer(key_answer(r#""id":"ak_0197a3b2c4d5e65f3a9c0e1d""#, 7, ""));
        let b = i.answer(key_answer(r#""id":"ak_0197a3b2c4d5e65f3a9c0e1e","validUntil":1800000000"#, 9, ""));
        assert!(Rc::ptr_eq(a.shared(), b.shared()));
        assert_eq!((a.version, b.version, a.shared().version), (7, 9, 0));
        let own = |x: &KeyAnswer| x.key.as_ref().map(|k| (k.id.to_string(), k.valid_until));
        assert_eq!(own(&a), Some(("ak_0197a3b2c4d5e65f3a9c0e1d".into(), None)));
        assert_eq!(own(&b), Some(("ak_0197a3b2c4d5e65f3a9c0e1e".into(), Some(1_800_000_000))));
        assert_eq!((a.config_id(), b.config_id()), (Some("akc_1"), Some("akc_1")));
        // Unknown keys share one answer too.
        let unknown = || serde_json::from_str::<Lookup>(r#"{"schema":1,"version":3,"status":"unknown"}"#).unwrap();
        assert!(Rc::ptr_eq(i.answer(unknown()).shared(), i.answer(unknown()).shared()));
    }

    #[test]
    fn a_keys_own_cap_keeps_its_answer_apart() {
        let mut i = Interner::default();
        let cap = r#","requestLimits":{"maxConcurrentRequests":2}"#;
        let a = i.answer(key_answer(r#""id":"ak_0197a3b2c4d5e65f3a9c0e1d""#, 1, ""));
        let b = i.answer(key_answer(r#""id":"ak_0197a3b2c4d5e65f3a9c0e1e""#, 1, cap));
        assert!(!Rc::ptr_eq(a.shared(), b.shared()));
        assert_eq!(b.request_limits.as_ref().and_then(|r| r.max_concurrent_requests), Some(2));
    }

    #[test]
    fn a_key_whose_facts_do_not_fit_keeps_its_answer_whole() {
        let mut i = Interner::default();
        for own in [r#""id":"ak_1""#, r#""id":"ak_0197a3b2c4d5e65f3a9c0e1d","validUntil":-9223372036854775807"#] {
            let whole = key_answer(own, 4, "");
            let a = i.answer(whole.clone());
            assert_eq!(**a.shared(), i.intern(whole.clone()), "{own}");
            assert_eq!(a.version, 4);
            let k = a.key.as_ref().unwrap();
            assert_eq!(
                (k.id.as_str(), k.valid_until),
                (whole.key.as_ref().unwrap().id.as_str(), whole.key.as_ref().unwrap().valid_until)
            );
        }
    }
}
