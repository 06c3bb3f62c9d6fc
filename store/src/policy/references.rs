//! References between resources: what a configuration may name, and what may
//! not go while something still uses it. Pure functions over what the backend
//! read inside its transaction (existence as booleans or lookups, the specs of
//! stored configurations); each returns the refusal the API shows.

use keygate_proto::lookup::Format;

use crate::error::StoreError;
use crate::model::{split_qualified_model, AccessSpec, Provider, RouterSpec, StepSpec};

type V<T> = Result<T, StoreError>;

/// The resources an id names, for "not found" answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resource {
    AccessKey,
    ProviderKey,
    Config,
    Provider,
    AlertWebhook,
    ApiKey,
}

impl Resource {
    pub fn label(self) -> &'static str {
        match self {
            Resource::AccessKey => "access key",
            Resource::ProviderKey => "provider key",
            Resource::Config => "access key configuration",
            Resource::Provider => "provider",
            Resource::AlertWebhook => "alert webhook",
            Resource::ApiKey => "management API key",
        }
    }
}

/// The answer when `id` names no stored resource of that kind.
pub fn not_found(what: Resource, id: &str) -> StoreError {
    StoreError::NotFound(format!("{} {id} not found", what.label()))
}

/// The parts of a stored configuration that refer to other resources.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ConfigSpecs {
    pub id: String,
    pub access: Option<AccessSpec>,
    pub router: Option<RouterSpec>,
}

/// An access key may name only a configuration that exists.
pub fn require_config(id: &str, exists: bool) -> V<()> {
    if exists {
        Ok(())
    } else {
        Err(StoreError::invalid("accessKeyConfigurationId", format!("access key configuration {id} does not exist")))
    }
}

/// A provider key belongs to a provider that exists.
pub fn require_provider(id: &str, exists: bool) -> V<()> {
    if exists {
        Ok(())
    } else {
        Err(StoreError::invalid("providerId", format!("provider {id} does not exist")))
    }
}

/// A new provider needs an id no provider has.
pub fn require_new_provider(id: &str, exists: bool) -> V<()> {
    if exists {
        Err(StoreError::Conflict(format!("provider {id} already exists")))
    } else {
        Ok(())
    }
}

/// Configuration names are unique: `holder` is the configuration that has
/// `name` now (if any), `except` the one being renamed.
pub fn require_free_config_name(name: &str, holder: Option<&str>, except: Option<&str>) -> V<()> {
    match holder {
        Some(h) if Some(h) != except => {
            Err(StoreError::Conflict(format!("an access key configuration named {name:?} already exists")))
        }
        _ => Ok(()),
    }
}

/// The format of a built-in provider is fixed (its endpoints depend on it).
pub fn may_change_provider(current: &Provider, format: Option<Format>) -> V<()> {
    if current.built_in && format.is_some_and(|f| f != current.format) {
        return Err(StoreError::invalid("format", "the format of a built-in provider cannot change"));
    }
    Ok(())
}

/// A configuration goes only when no access key uses it.
pub fn may_delete_config(id: &str, key_users: i64) -> V<()> {
    if key_users > 0 {
        return Err(StoreError::Conflict(format!(
            "access key configuration {id} is used by {key_users} access key(s)"
        )));
    }
    Ok(())
}

/// A provider goes only when it is custom, has no provider keys and no
/// configuration mentions it.
pub fn may_delete_provider(provider: &Provider, provider_keys: i64, configs: &[ConfigSpecs]) -> V<()> {
    let id = &provider.id;
    if provider.built_in {
        return Err(StoreError::Conflict(format!("provider {id} is built in and cannot be deleted")));
    }
    if provider_keys > 0 {
        return Err(StoreError::Conflict(format!("provider {id} has {provider_keys} provider key(s)")));
    }
    let users = users(configs, |c| config_mentions_provider(c.access.as_ref(), c.router.as_ref(), id));
    if !users.is_empty() {
        return Err(StoreError::Conflict(format!(
            "provider {id} is used by access key configuration(s) {}",
            users.join(", ")
        )));
    }
    Ok(())
}

/// A provider key goes only when no configuration's router uses it.
pub fn may_delete_provider_key(id: &str, configs: &[ConfigSpecs]) -> V<()> {
    let users = users(configs, |c| config_mentions_key(c.router.as_ref(), id));
    if !users.is_empty() {
        return Err(StoreError::Conflict(format!(
            "provider key {id} is used by the router of access key configuration(s) {}",
            users.join(", ")
        )));
    }
    Ok(())
}

fn users(configs: &[ConfigSpecs], uses: impl Fn(&ConfigSpecs) -> bool) -> Vec<&str> {
    configs.iter().filter(|c| uses(c)).map(|c| c.id.as_str()).collect()
}

/// Reference checks of a configuration: every provider exists, every user-step
/// key exists and belongs to its rule's provider.
pub fn check_config_refs(
    access: Option<&AccessSpec>,
    router: Option<&RouterSpec>,
    mut provider_exists: impl FnMut(&str) -> V<bool>,
    mut key_provider: impl FnMut(&str) -> V<Option<String>>,
) -> V<()> {
    if let Some(a) = access {
        if let Some(p) = &a.providers {
            for (i, id) in p.allow.iter().enumerate() {
                if !provider_exists(id)? {
                    return Err(StoreError::invalid(
                        format!("access.providers.allow[{i}]"),
                        format!("unknown provider `{id}`"),
                    ));
                }
            }
        }
        if let Some(m) = &a.models {
            for (i, model) in m.allow.iter().enumerate() {
                let f = format!("access.models.allow[{i}]");
                let (p, _) = split_qualified_model(&f, model)?;
                if !provider_exists(p)? {
                    return Err(StoreError::invalid(f, format!("unknown provider `{p}` in `{model}`")));
                }
            }
        }
    }
    if let Some(r) = router {
        for (i, rule) in r.rules.iter().enumerate() {
            let f = format!("router.rules[{i}]");
            let Some(p) = rule.provider_id() else { continue };
            if !provider_exists(p)? {
                return Err(StoreError::invalid(
                    if rule.provider.is_some() { format!("{f}.provider") } else { format!("{f}.model") },
                    format!("unknown provider `{p}`"),
                ));
            }
            for (j, step) in rule.steps.iter().enumerate() {
                let StepSpec::User { keys, .. } = step else { continue };
                for (k, key) in keys.iter().enumerate() {
                    let kf = format!("{f}.steps[{j}].keys[{k}].id");
                    match key_provider(&key.id)? {
                        None => {
                            return Err(StoreError::invalid(kf, format!("unknown provider key `{}`", key.id)));
                        }
                        Some(kp) if kp != p => {
                            return Err(StoreError::invalid(
                                kf,
                                format!("provider key `{}` belongs to `{kp}`, not `{p}`", key.id),
                            ));
                        }
                        Some(_) => {}
                    }
                }
            }
        }
    }
    Ok(())
}

/// Whether a configuration mentions a provider anywhere.
pub fn config_mentions_provider(access: Option<&AccessSpec>, router: Option<&RouterSpec>, id: &str) -> bool {
    let in_access = access.is_some_and(|a| {
        a.providers.as_ref().is_some_and(|p| p.allow.iter().any(|x| x == id))
            || a.models
                .as_ref()
                .is_some_and(|m| m.allow.iter().any(|x| x.split_once('/').is_some_and(|(p, _)| p == id)))
    });
    in_access || router.is_some_and(|r| r.rules.iter().any(|rule| rule.provider_id() == Some(id)))
}

/// Whether a configuration's router uses a provider key.
pub fn config_mentions_key(router: Option<&RouterSpec>, key_id: &str) -> bool {
    router.is_some_and(|r| {
        r.rules.iter().flat_map(|rule| rule.steps.iter()).any(|s| match s {
            StepSpec::User { keys, .. } => keys.iter().any(|k| k.id == key_id),
            StepSpec::Managed {} => false,
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{AllowList, KeyRef, KeySelectionStrategy, RuleSpec};
    use keygate_proto::lookup::AuthStyle;

    fn provider(id: &str, built_in: bool) -> Provider {
        Provider {
            id: id.into(),
            name: id.into(),
            base_url: "https://example.test".into(),
            format: Format::Openai,
            auth: AuthStyle::Bearer,
            models: vec![],
            built_in,
            created_at: String::new(),
            updated_at: String::new(),
        }
    }

    fn router(provider: &str, keys: &[&str]) -> RouterSpec {
        RouterSpec {
            rules: vec![RuleSpec {
                provider: Some(provider.into()),
                model: None,
                steps: vec![StepSpec::User {
                    key_selection_strategy: KeySelectionStrategy::Ordered,
                    keys: keys.iter().map(|k| KeyRef { id: (*k).into() }).collect(),
                }],
            }],
        }
    }

    fn conflict(r: V<()>) -> String {
        match r {
            Err(StoreError::Conflict(m)) => m,
            other => format!("not a conflict: {other:?}"),
        }
    }

    fn invalid(r: V<()>) -> (String, String) {
        match r {
            Err(StoreError::Invalid { field, msg }) => (field, msg),
            other => (String::new(), format!("not invalid: {other:?}")),
        }
    }

    #[test]
    fn not_found_names_the_kind_and_the_id() {
        let StoreError::NotFound(m) = not_found(Resource::Config, "akc_1") else { unreachable!() };
        assert_eq!(m, "access key configuration akc_1 not found");
    }

    #[test]
    fn an_access_key_cannot_name_a_missing_configuration() {
        assert!(require_config("akc_1", true).is_ok());
        assert_eq!(
            invalid(require_config("akc_1", false)),
            ("accessKeyConfigurationId".into(), "access key configuration akc_1 does not exist".into())
        );
    }

    #[test]
    fn a_provider_key_needs_an_existing_provider_and_a_new_provider_a_free_id() {
        assert_eq!(invalid(require_provider("x", false)), ("providerId".into(), "provider x does not exist".into()));
        assert!(require_provider("x", true).is_ok());
        assert_eq!(conflict(require_new_provider("x", true)), "provider x already exists");
        assert!(require_new_provider("x", false).is_ok());
    }

    #[test]
    fn a_configuration_may_keep_its_own_name_but_not_take_another_s() {
        assert!(require_free_config_name("a", None, None).is_ok());
        assert!(require_free_config_name("a", Some("akc_1"), Some("akc_1")).is_ok());
        assert_eq!(
            conflict(require_free_config_name("a", Some("akc_1"), Some("akc_2"))),
            "an access key configuration named \"a\" already exists"
        );
        assert!(require_free_config_name("a", Some("akc_1"), None).is_err());
    }

    #[test]
    fn the_format_of_a_built_in_provider_is_fixed() {
        let openai = provider("openai", true);
        assert!(may_change_provider(&openai, Some(Format::Openai)).is_ok());
        assert!(may_change_provider(&openai, None).is_ok());
        assert_eq!(invalid(may_change_provider(&openai, Some(Format::Anthropic))).0, "format");
        assert!(may_change_provider(&provider("mine", false), Some(Format::Anthropic)).is_ok());
    }

    #[test]
    fn a_configuration_in_use_by_access_keys_cannot_be_deleted() {
        assert!(may_delete_config("akc_1", 0).is_ok());
        assert_eq!(
            conflict(may_delete_config("akc_1", 2)),
            "access key configuration akc_1 is used by 2 access key(s)"
        );
    }

    #[test]
    fn a_provider_goes_only_when_custom_keyless_and_unmentioned() {
        let none: &[ConfigSpecs] = &[];
        assert_eq!(
            conflict(may_delete_provider(&provider("openai", true), 0, none)),
            "provider openai is built in and cannot be deleted"
        );
        assert_eq!(
            conflict(may_delete_provider(&provider("mine", false), 1, none)),
            "provider mine has 1 provider key(s)"
        );
        let configs = [
            ConfigSpecs { id: "akc_1".into(), access: None, router: Some(router("mine", &["pk_1"])) },
            ConfigSpecs { id: "akc_2".into(), access: None, router: None },
            ConfigSpecs {
                id: "akc_3".into(),
                access: Some(AccessSpec {
                    models: Some(AllowList { allow: vec!["mine/m".into()] }),
                    ..AccessSpec::default()
                }),
                router: None,
            },
        ];
        assert_eq!(
            conflict(may_delete_provider(&provider("mine", false), 0, &configs)),
            "provider mine is used by access key configuration(s) akc_1, akc_3"
        );
        assert!(may_delete_provider(&provider("other", false), 0, &configs).is_ok());
    }

    #[test]
    fn a_provider_key_in_a_router_cannot_be_deleted() {
        let configs = [ConfigSpecs { id: "akc_1".into(), access: None, router: Some(router("openai", &["pk_1"])) }];
        assert_eq!(
            conflict(may_delete_provider_key("pk_1", &configs)),
            "provider key pk_1 is used by the router of access key configuration(s) akc_1"
        );
        assert!(may_delete_provider_key("pk_2", &configs).is_ok());
    }

    #[test]
    fn configuration_references_must_resolve_to_the_rule_s_provider() {
        let exists = |p: &str| Ok(p == "openai");
        let key_provider = |k: &str| Ok((k == "pk_1").then(|| "anthropic".to_string()));
        let access = AccessSpec { providers: Some(AllowList { allow: vec!["nope".into()] }), ..AccessSpec::default() };
        assert_eq!(
            invalid(check_config_refs(Some(&access), None, exists, key_provider)),
            ("access.providers.allow[0]".into(), "unknown provider `nope`".into())
        );
        let r = router("openai", &["pk_2"]);
        assert_eq!(
            invalid(check_config_refs(None, Some(&r), exists, key_provider)),
            ("router.rules[0].steps[0].keys[0].id".into(), "unknown provider key `pk_2`".into())
        );
        let r = router("openai", &["pk_1"]);
        assert_eq!(
            invalid(check_config_refs(None, Some(&r), exists, key_provider)).1,
            "provider key `pk_1` belongs to `anthropic`, not `openai`"
        );
    }
}
