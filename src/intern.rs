//! Provider plans and scopes shared by cache entries: keys of one
//! configuration get equal ones from the store, kept once (by content hash),
//! so that a cache of many keys costs a few hundred bytes a key.

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Arc;

use keygate_proto::lookup::{Access, Lookup, ProviderPlan};

/// Most distinct plans / scopes kept for sharing; past it a table starts over.
const MAX_INTERNED: usize = 4_096;

#[derive(Default)]
pub struct Interner {
    plans: HashMap<u64, Arc<Vec<ProviderPlan>>>,
    scopes: HashMap<u64, Arc<Access>>,
}

impl Interner {
    /// A fresh store answer, sharing its plan and scope with equal earlier ones.
    pub fn intern(&mut self, mut lookup: Lookup) -> Lookup {
        if !lookup.providers.is_empty() {
            share(&mut self.plans, &mut lookup.providers);
        }
        if let Some(access) = lookup.access.as_mut() {
            share(&mut self.scopes, access);
        }
        lookup
    }
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
            i.intern(answer(&format!("p{n}")));
        }
        assert!(i.plans.len() <= MAX_INTERNED);
    }
}
