//! Builds the per-provider routing plans of a lookup document from the
//! providers, provider keys and an access key's configuration. Pure: values are
//! resolved through a callback so only the keys actually used get decrypted.

use std::collections::HashMap;

use keygate_proto::lookup::{Access, AuthStyle, Credential, Format, ProviderPlan, Route};

use crate::model::{AccessSpec, RouterSpec, RuleSpec, StepSpec};

#[derive(Debug, Clone)]
pub struct ProviderRow {
    pub id: String,
    pub format: Format,
    pub auth: AuthStyle,
    pub base_url: String,
    pub models: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct KeyRow {
    pub id: String,
    pub provider_id: String,
    pub managed: bool,
}

/// The wire form of a configuration's allow-lists.
pub fn access_of(access: Option<&AccessSpec>) -> Access {
    Access {
        providers: access.and_then(|a| a.providers.as_ref()).map(|l| l.allow.clone()),
        models: access.and_then(|a| a.models.as_ref()).map(|l| l.allow.clone()),
        endpoints: access.and_then(|a| a.endpoints.as_ref()).map(|l| l.allow.clone()),
        client_ips: access.and_then(|a| a.client_ips.as_ref()).map(|l| l.allow.clone()),
    }
}

/// One plan per provider, in `providers` order. Providers that
/// `access.providers` does not allow are listed without routes, so no secret
/// of theirs leaves the store, yet the filter can still tell "provider not
/// allowed" from "unknown provider" (and resolve qualified model names).
/// `keys` must be in creation order.
pub fn build<E>(
    providers: &[ProviderRow],
    keys: &[KeyRow],
    access: Option<&AccessSpec>,
    router: Option<&RouterSpec>,
    mut value_of: impl FnMut(&str) -> Result<Option<String>, E>,
) -> Result<Vec<ProviderPlan>, E> {
    let allowed = access.and_then(|a| a.providers.as_ref()).map(|l| &l.allow);
    let rules: &[RuleSpec] = router.map(|r| r.rules.as_slice()).unwrap_or(&[]);
    let mut values: HashMap<String, Option<String>> = HashMap::new();
    let mut plans = Vec::new();
    for p in providers {
        let entry = |routes| ProviderPlan {
            id: p.id.clone(),
            format: p.format,
            auth: p.auth,
            base_url: p.base_url.clone(),
            models: p.models.clone(),
            routes,
        };
        if allowed.is_some_and(|a| !a.contains(&p.id)) {
            plans.push(entry(Vec::new()));
            continue;
        }
        let managed: Vec<&str> =
            keys.iter().filter(|k| k.managed && k.provider_id == p.id).map(|k| k.id.as_str()).collect();
        let mut routes = Vec::new();
        for rule in rules.iter().filter(|r| r.provider_id() == Some(p.id.as_str())) {
            if let Some(model) = rule.local_model() {
                let ids = flatten(rule, &managed);
                routes.push(Route { model: Some(model.to_string()), keys: resolve(&ids, &mut values, &mut value_of)? });
            }
        }
        let default_ids = match rules.iter().find(|r| r.model.is_none() && r.provider_id() == Some(p.id.as_str())) {
            Some(rule) => flatten(rule, &managed),
            None => managed.clone(),
        };
        routes.push(Route { model: None, keys: resolve(&default_ids, &mut values, &mut value_of)? });
        plans.push(entry(routes));
    }
    Ok(plans)
}

/// Steps in order; a `managed` step expands to the provider's managed keys;
/// each key at most once.
fn flatten<'a>(rule: &'a RuleSpec, managed: &[&'a str]) -> Vec<&'a str> {
    let mut out: Vec<&str> = Vec::new();
    for step in &rule.steps {
        match step {
            StepSpec::User { keys, .. } => {
                for k in keys {
                    if !out.contains(&k.id.as_str()) {
                        out.push(&k.id);
                    }
                }
            }
            StepSpec::Managed {} => {
                for k in managed {
                    if !out.contains(k) {
                        out.push(k);
                    }
                }
            }
        }
    }
    out
}

fn resolve<E>(
    ids: &[&str],
    cache: &mut HashMap<String, Option<String>>,
    value_of: &mut impl FnMut(&str) -> Result<Option<String>, E>,
) -> Result<Vec<Credential>, E> {
    let mut out = Vec::with_capacity(ids.len());
    for id in ids {
        let value = match cache.get(*id) {
            Some(v) => v.clone(),
            None => {
                let v = value_of(id)?;
                cache.insert((*id).to_string(), v.clone());
                v
            }
        };
        if let Some(value) = value {
            out.push(Credential { id: (*id).to_string(), value });
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{AllowList, KeyRef, KeySelectionStrategy};

    fn provider(id: &str) -> ProviderRow {
        ProviderRow {
            id: id.into(),
            format: Format::Openai,
            auth: AuthStyle::Bearer,
            base_url: format!("https://{id}.example/v1"),
            models: vec![],
        }
    }

    fn key(id: &str, p: &str, managed: bool) -> KeyRow {
        KeyRow { id: id.into(), provider_id: p.into(), managed }
    }

    fn user(ids: &[&str]) -> StepSpec {
        StepSpec::User {
            key_selection_strategy: KeySelectionStrategy::Ordered,
            keys: ids.iter().map(|i| KeyRef { id: (*i).into() }).collect(),
        }
    }

    fn ids(r: &Route) -> Vec<&str> {
        r.keys.iter().map(|k| k.id.as_str()).collect()
    }

    #[test]
    fn routes_order_and_dedup() {
        let providers = [provider("openai"), provider("anthropic"), provider("groq")];
        let keys = [
            key("pk_1", "openai", true),
            key("pk_2", "openai", false),
            key("pk_3", "openai", true),
            key("pk_4", "anthropic", true),
        ];
        let access = AccessSpec {
            providers: Some(AllowList { allow: vec!["openai".into(), "anthropic".into()] }),
            ..AccessSpec::default()
        };
        let router = RouterSpec {
            rules: vec![
                RuleSpec {
                    provider: Some("openai".into()),
                    model: None,
                    steps: vec![user(&["pk_2", "pk_1"]), StepSpec::Managed {}],
                },
                RuleSpec { provider: None, model: Some("openai/gpt-4o".into()), steps: vec![user(&["pk_3", "pk_3"])] },
                RuleSpec {
                    provider: None,
                    model: Some("openai/o3*".into()),
                    steps: vec![StepSpec::Managed {}, user(&["pk_2"])],
                },
            ],
        };
        let plans =
            build::<()>(&providers, &keys, Some(&access), Some(&router), |id| Ok(Some(format!("v-{id}")))).unwrap();
        assert_eq!(plans.len(), 3);
        assert!(plans[2].routes.is_empty(), "groq is not allowed: listed without credentials");
        let openai = &plans[0];
        assert_eq!(openai.routes.len(), 3);
        assert_eq!(openai.routes[0].model.as_deref(), Some("gpt-4o"));
        assert_eq!(ids(&openai.routes[0]), ["pk_3"]);
        assert_eq!(openai.routes[1].model.as_deref(), Some("o3*"));
        assert_eq!(ids(&openai.routes[1]), ["pk_1", "pk_3", "pk_2"]);
        assert_eq!(openai.routes[2].model, None);
        assert_eq!(ids(&openai.routes[2]), ["pk_2", "pk_1", "pk_3"]);
        assert_eq!(openai.routes[2].keys[0].value, "v-pk_2");
        let anthropic = &plans[1];
        assert_eq!(anthropic.routes.len(), 1);
        assert_eq!(ids(&anthropic.routes[0]), ["pk_4"]);
    }

    #[test]
    fn no_config_means_all_providers_with_managed_keys() {
        let providers = [provider("openai"), provider("groq")];
        let keys = [key("pk_1", "openai", true), key("pk_2", "openai", false)];
        let mut calls = 0;
        let plans = build::<()>(&providers, &keys, None, None, |id| {
            calls += 1;
            Ok(Some(id.to_string()))
        })
        .unwrap();
        assert_eq!(plans.len(), 2);
        assert_eq!(ids(&plans[0].routes[0]), ["pk_1"]);
        assert!(plans[1].routes[0].keys.is_empty());
        assert_eq!(calls, 1);
        assert_eq!(access_of(None), Access::default());
    }

    #[test]
    fn empty_provider_allow_list_gives_no_credentials() {
        let access = AccessSpec { providers: Some(AllowList { allow: vec![] }), ..AccessSpec::default() };
        let keys = [key("pk_1", "openai", true)];
        let plans = build::<()>(&[provider("openai")], &keys, Some(&access), None, |_| Ok(Some("v".into()))).unwrap();
        assert_eq!(plans.len(), 1);
        assert!(plans[0].routes.is_empty());
    }
}
