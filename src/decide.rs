//! The decision for one request: given what the request says and what the
//! store says about its key, either where and how to forward it, or a refusal.
//! Pure: no host calls, so every rule here is unit-tested natively.

use std::net::IpAddr;

use keygate_proto::cidr;
use keygate_proto::lookup::{Access, Credential, Format, KeyStatus, Lookup, ProviderPlan};

use crate::access::{allows, endpoint_allowed, pattern_matches};
use crate::body::{Fallbacks, MAX_FALLBACKS};
use crate::errors::{quote, Code, Denial};
use crate::key_answer::{KeyAnswer, KeyFacts};
use crate::surface::{self, Judge, Surface};
use crate::upstream::{parse_base_url, Endpoint};

/// The `model` of the request body, as the gate's body reader (or `json_to_metadata`) found it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelField {
    Absent,
    Str(String),
    NotString,
    /// The body names `model` more than once (a provider might read another one).
    Repeated,
    /// A top-level key or form field equal to `model` but for case: a provider
    /// that matches keys without regard to case might read it instead.
    CaseVariant,
    InvalidJson,
    InvalidMultipart,
}

/// Longest model name judged; a longer one is refused (no provider has one).
pub const MAX_MODEL_NAME: usize = 256;

#[derive(Debug, Clone, Copy)]
pub struct RequestFacts<'a> {
    /// What the request is, from the surface table.
    pub surface: Surface<'a>,
    pub model: &'a ModelField,
    /// The body's fallback models (`models`).
    pub fallbacks: &'a Fallbacks,
    /// The body carries a well-formed keygate token.
    pub access_key_in_body: bool,
    /// The client's address as Envoy resolved it (read only for a key whose
    /// configuration lists client addresses; `None`: unknown).
    pub client_ip: Option<IpAddr>,
}

/// Where a request goes.
#[derive(Debug, PartialEq)]
pub struct Forward<'a> {
    pub key_id: &'a str,
    /// Where the request's `model` is served.
    pub primary: Target<'a>,
    /// Set when the body's `model` must be rewritten to the provider's name.
    pub rewrite_model: bool,
    /// Where the request's fallback models (`models`) are served, in order:
    /// tried when every credential of the ones before failed.
    pub fallbacks: Vec<Target<'a>>,
}

/// Where one model is served: its provider, credentials and path.
#[derive(Debug, PartialEq)]
pub struct Target<'a> {
    pub provider: &'a ProviderPlan,
    /// Credentials in failover order (never empty).
    pub credentials: &'a [Credential],
    pub endpoint: Endpoint<'a>,
    pub upstream_path: String,
    /// The provider's own name for the model, when the request names one.
    pub model: Option<String>,
}

pub fn decide<'a>(facts: RequestFacts<'_>, answer: &'a KeyAnswer, now_secs: i64) -> Result<Forward<'a>, Denial> {
    let key = check_key(answer, now_secs)?;
    let lookup: &Lookup = answer;
    if facts.access_key_in_body {
        return Err(Denial::new(
            400,
            Code::AccessKeyInBody,
            "the request body contains an access key; keys belong in the Authorization or x-api-key header only",
        ));
    }
    let allow_all = Access::default();
    let access: &Access = lookup.access.as_deref().unwrap_or(&allow_all);
    check_client_ip(access, facts.client_ip)?;
    let surface = facts.surface;

    let model = match surface.judge {
        Judge::Model(_) => Some(body_model(facts.model)?),
        Judge::PathModel => surface.path_model(),
        Judge::Listing | Judge::Account(_) | Judge::SelfCheck => None,
    };
    let (primary, qualified) = target(lookup, access, surface, model)?;
    let fallbacks = fallback_targets(lookup, access, surface, facts.fallbacks, &primary)?;
    Ok(Forward {
        key_id: &key.id,
        primary,
        rewrite_model: qualified && matches!(surface.judge, Judge::Model(_)),
        fallbacks,
    })
}

/// Where one model (or, for a surface that names none, the format's own
/// provider) is served, after every allow-list and check: the target and
/// whether the name was provider-qualified.
fn target<'a>(
    lookup: &'a Lookup,
    access: &Access,
    surface: Surface<'_>,
    model: Option<&str>,
) -> Result<(Target<'a>, bool), Denial> {
    if let Some(m) = model {
        if m.trim().is_empty() {
            return Err(Denial::new(400, Code::InvalidModel, "`model` must not be empty"));
        }
        if m.len() > MAX_MODEL_NAME {
            return Err(Denial::new(
                400,
                Code::InvalidModel,
                format!("`model` is longer than {MAX_MODEL_NAME} bytes: {}", quote(m)),
            ));
        }
    }

    let (provider, local_model, qualified) = match model {
        Some(m) => resolve_model(lookup, surface.format, m, access.providers.as_deref())?,
        None => (default_provider(lookup, surface.format)?, None, false),
    };

    if !allows(access.providers.as_deref(), &provider.id) {
        return Err(Denial::new(
            403,
            Code::ProviderNotAllowed,
            format!("this access key may not use provider `{}`", provider.id),
        ));
    }
    if let (Some(local), Some(_)) = (local_model, &access.models) {
        let qualified_name = format!("{}/{}", provider.id, local);
        if !allows(access.models.as_deref(), &qualified_name) {
            return Err(Denial::new(
                403,
                Code::ModelNotAllowed,
                format!("this access key may not use model {}", quote(&qualified_name)),
            ));
        }
    }
    if let Judge::Account(name) = surface.judge {
        if !endpoint_allowed(access.endpoints.as_deref(), name) {
            return Err(Denial::new(
                403,
                Code::EndpointNotAllowed,
                format!("this access key may not use `{name}` endpoints (its configuration does not allow them)"),
            ));
        }
    }
    if provider.format != surface.format {
        let hint = match provider.format {
            Format::Anthropic => "the Anthropic Messages API (/v1/messages)",
            Format::Openai => "the OpenAI API (e.g. /v1/chat/completions)",
        };
        return Err(Denial::new(
            400,
            Code::UnsupportedApi,
            format!("provider `{}` is reached through {hint}", provider.id),
        ));
    }

    let credentials = route_credentials(provider, local_model);
    if credentials.is_empty() {
        return Err(Denial::new(
            400,
            Code::NoProviderCredentials,
            format!("no provider key is configured for provider `{}`", provider.id),
        ));
    }
    let endpoint = parse_base_url(&provider.base_url).ok_or_else(|| {
        Denial::new(502, Code::BadProviderEndpoint, format!("provider `{}` has an unusable base URL", provider.id))
    })?;
    // A model named in the path goes upstream under the provider's own name.
    let path_model = match (surface.judge, local_model) {
        (Judge::PathModel, Some(local)) if qualified => Some(format!("models/{local}")),
        _ => None,
    };
    let rest = path_model.as_deref().unwrap_or(surface.rest);
    let upstream_path = surface::upstream_path(endpoint.path_prefix, rest, surface.query);
    let target = Target { provider, credentials, endpoint, upstream_path, model: local_model.map(str::to_string) };
    Ok((target, qualified))
}

/// The request's fallback models, each checked as its `model` is; a refusal
/// names the model. A model that resolves to a target already in the list
/// (the primary included) is left out: no model is tried twice.
fn fallback_targets<'a>(
    lookup: &'a Lookup,
    access: &Access,
    surface: Surface<'_>,
    fallbacks: &Fallbacks,
    primary: &Target<'a>,
) -> Result<Vec<Target<'a>>, Denial> {
    let invalid = |msg: &str| Err(Denial::new(400, Code::InvalidModel, msg));
    let names = match fallbacks {
        Fallbacks::None => return Ok(Vec::new()),
        Fallbacks::List(names) => names,
        Fallbacks::Malformed => {
            return invalid(&format!("`models` must be an array of at most {MAX_FALLBACKS} model names (strings)"))
        }
        Fallbacks::CaseVariant => {
            return invalid(
                "the request body has a field that is `models` but for case (e.g. `Models`); send `models` only",
            )
        }
    };
    if !names.is_empty() && !matches!(surface.judge, Judge::Model(_)) {
        return invalid("`models` (fallback models) applies to requests that name their `model` in the body");
    }
    let mut out: Vec<Target<'a>> = Vec::new();
    for name in names {
        let (t, _) = target(lookup, access, surface, Some(name))
            .map_err(|d| Denial { message: format!("`models` names {}: {}", quote(name), d.message), ..d })?;
        let same = |o: &Target<'_>| o.provider.id == t.provider.id && o.model == t.model;
        if !same(primary) && !out.iter().any(same) {
            out.push(t);
        }
    }
    Ok(out)
}

/// The body's `model` for an inference surface, or why there is none.
fn body_model(field: &ModelField) -> Result<&str, Denial> {
    let invalid = |msg: &str| Err(Denial::new(400, Code::InvalidModel, msg));
    match field {
        ModelField::Str(m) => Ok(m),
        ModelField::Absent => Err(Denial::new(400, Code::MissingModel, "the request body must name a `model`")),
        ModelField::NotString => invalid("`model` must be a string"),
        ModelField::Repeated => invalid("the request body names `model` more than once"),
        ModelField::CaseVariant => {
            invalid("the request body has a field that is `model` but for case (e.g. `MODEL`); send `model` only")
        }
        ModelField::InvalidJson => Err(Denial::new(400, Code::InvalidJson, "the request body is not valid JSON")),
        ModelField::InvalidMultipart => Err(Denial::new(
            400,
            Code::InvalidMultipart,
            "the request body is not a well-formed multipart/form-data body for its boundary",
        )),
    }
}

/// 401 unless the key is active and within its validity.
/// The configuration's client addresses, if it lists any (an unknown
/// address is outside every range).
pub fn check_client_ip(access: &Access, client_ip: Option<IpAddr>) -> Result<(), Denial> {
    let Some(allow) = access.client_ips.as_deref() else { return Ok(()) };
    if client_ip.is_some_and(|ip| cidr::allowed(allow, ip)) {
        return Ok(());
    }
    let from = client_ip.map_or_else(|| "an unknown address".to_string(), |ip| ip.to_string());
    Err(Denial::new(
        403,
        Code::IpNotAllowed,
        format!("this access key may not be used from {from} (its configuration lists client addresses)"),
    ))
}

pub fn check_key(answer: &KeyAnswer, now_secs: i64) -> Result<&KeyFacts, Denial> {
    let denied = |code, msg: &str| Err(Denial::new(401, code, msg));
    match (answer.status, &answer.key) {
        (KeyStatus::Active, Some(key)) if key.valid_until.is_none_or(|t| now_secs < t) => Ok(key),
        (KeyStatus::Active | KeyStatus::Expired, Some(_)) => {
            denied(Code::AccessKeyExpired, "the access key has expired")
        }
        (KeyStatus::Disabled, _) => denied(Code::AccessKeyDisabled, "the access key is disabled"),
        _ => denied(Code::InvalidAccessKey, "the access key is not valid (unknown or deleted)"),
    }
}

/// `openai/gpt-4o` and `openai:gpt-4o` are qualified when the prefix is a
/// provider; anything else is a bare model name resolved through the catalog.
fn resolve_model<'a, 'm>(
    lookup: &'a Lookup,
    format: Format,
    model: &'m str,
    allowed_providers: Option<&[String]>,
) -> Result<(&'a ProviderPlan, Option<&'m str>, bool), Denial> {
    if let Some(i) = model.find(['/', ':']) {
        let (prefix, rest) = (model.get(..i).unwrap_or_default(), model.get(i + 1..).unwrap_or_default());
        if let Some(p) = lookup.providers.iter().find(|p| p.id == prefix) {
            if rest.is_empty() {
                return Err(Denial::new(
                    400,
                    Code::InvalidModel,
                    format!("{} names a provider but no model", quote(model)),
                ));
            }
            return Ok((p, Some(rest), true));
        }
    }
    // Bare name: the API surface narrows the format, the catalog the provider,
    // and a provider the key may use wins over one it may not.
    let serves = |p: &&ProviderPlan| p.models.iter().any(|pat| pattern_matches(pat, model));
    let mut candidates = lookup.providers.iter().filter(serves);
    let first = candidates.clone().next();
    let allowed = candidates.find(|p| allows(allowed_providers, &p.id));
    if let Some(p) = allowed.or(first) {
        return Ok((p, Some(model), false));
    }
    if format == Format::Anthropic {
        if let Some(p) = lookup.providers.iter().find(|p| p.id == "anthropic") {
            return Ok((p, Some(model), false));
        }
    }
    Err(Denial::new(
        400,
        Code::UnknownModel,
        format!(
            "model {} is not in the provider catalog; name it as provider/model (e.g. openai/gpt-4o)",
            quote(model)
        ),
    ))
}

/// For surfaces that name no model (model lists, account endpoints): the
/// format's own provider, `openai` or `anthropic`.
fn default_provider(lookup: &Lookup, format: Format) -> Result<&ProviderPlan, Denial> {
    let id = match format {
        Format::Anthropic => "anthropic",
        Format::Openai => "openai",
    };
    lookup.providers.iter().find(|p| p.id == id).ok_or_else(|| {
        Denial::new(400, Code::MissingModel, format!("the request names no model and provider `{id}` is not available"))
    })
}

/// The credentials of the most specific route: a model route, else the
/// provider's default route.
fn route_credentials<'a>(provider: &'a ProviderPlan, local_model: Option<&str>) -> &'a [Credential] {
    let model_route = local_model
        .and_then(|m| provider.routes.iter().find(|r| r.model.as_deref().is_some_and(|pat| pattern_matches(pat, m))));
    model_route
        .or_else(|| provider.routes.iter().find(|r| r.model.is_none()))
        .map(|r| r.keys.as_slice())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use keygate_proto::lookup::{Access, AuthStyle, KeyInfo, Route};

    fn cred(id: &str) -> Credential {
        Credential { id: id.into(), value: format!("secret-{id}") }
    }

    fn provider(id: &str, format: Format, base: &str, models: &[&str], routes: Vec<Route>) -> ProviderPlan {
        ProviderPlan {
            id: id.into(),
            format,
            auth: if format == Format::Anthropic { AuthStyle::XApiKey } else { AuthStyle::Bearer },
            base_url: base.into(),
            models: models.iter().map(|s| s.to_string()).collect(),
            routes,
        }
    }

    fn default_route(ids: &[&str]) -> Route {
        Route { model: None, keys: ids.iter().map(|i| cred(i)).collect() }
    }

    fn lookup(access: Access) -> KeyAnswer {
        KeyAnswer::whole(doc(access))
    }

    fn doc(access: Access) -> Lookup {
        Lookup {
            schema: 1,
            version: 1,
            status: KeyStatus::Active,
            key: Some(KeyInfo { id: "ak_1".into(), config_id: None, valid_until: None }),
            access: Some(access.into()),
            providers: std::sync::Arc::new(vec![
                provider(
                    "openai",
                    Format::Openai,
                    "https://api.openai.com/v1",
                    &["gpt-*"],
                    vec![
                        Route { model: Some("gpt-4o-mini".into()), keys: vec![cred("pk_mini")] },
                        default_route(&["pk_oa1", "pk_oa2"]),
                    ],
                ),
                provider(
                    "anthropic",
                    Format::Anthropic,
                    "http://127.0.0.1:18102/v1",
                    &["claude-*"],
                    vec![default_route(&["pk_an"])],
                ),
                provider("my-vllm", Format::Openai, "http://10.0.0.5:8000/v1", &[], vec![default_route(&["pk_vllm"])]),
                provider(
                    "azure",
                    Format::Openai,
                    "https://az.example/openai",
                    &["gpt-*"],
                    vec![default_route(&["pk_az"])],
                ),
                provider("groq", Format::Openai, "https://api.groq.com/openai/v1", &[], vec![]),
            ]),
            limits: None,
            request_limits: None,
            budgeted: false,
        }
    }

    fn all() -> KeyAnswer {
        lookup(Access::default())
    }

    fn s(v: &[&str]) -> Option<Vec<String>> {
        Some(v.iter().map(|x| x.to_string()).collect())
    }

    fn chat(model: &str) -> ModelField {
        ModelField::Str(model.into())
    }

    fn run_as<'a>(l: &'a KeyAnswer, method: &str, path: &str, model: &ModelField) -> Result<Forward<'a>, Denial> {
        let surface = crate::surface::classify(method, path, false).expect("a path of the table");
        decide(
            RequestFacts { surface, model, fallbacks: &Fallbacks::None, access_key_in_body: false, client_ip: None },
            l,
            1_000,
        )
    }

    fn run<'a>(l: &'a KeyAnswer, path: &str, model: &ModelField) -> Result<Forward<'a>, Denial> {
        run_as(l, "POST", path, model)
    }

    fn code(r: Result<Forward<'_>, Denial>) -> &'static str {
        r.err().map(|d| d.code.as_str()).unwrap_or("forwarded")
    }

    /// A chat request for `gpt-4o` with fallbacks `models`.
    fn with_fallbacks<'a>(l: &'a KeyAnswer, models: &[&str]) -> Result<Forward<'a>, Denial> {
        let surface = surface::classify("POST", "/v1/chat/completions", false).unwrap();
        let fallbacks = Fallbacks::List(models.iter().map(|m| m.to_string()).collect());
        let facts = RequestFacts {
            surface,
            model: &chat("gpt-4o"),
            fallbacks: &fallbacks,
            access_key_in_body: false,
            client_ip: None,
        };
        decide(facts, l, 1_000)
    }

    #[test]
    fn fallbacks_are_resolved_and_checked_like_the_model() {
        let l = lookup(Access::default());
        let f = with_fallbacks(&l, &["my-vllm/llama-3", "gpt-4o-mini", "openai/gpt-4o", "my-vllm:llama-3"]).unwrap();
        let legs: Vec<(&str, Option<&str>, &str)> = f
            .fallbacks
            .iter()
            .map(|t| (t.provider.id.as_str(), t.model.as_deref(), t.upstream_path.as_str()))
            .collect();
        assert_eq!(
            legs,
            [
                ("my-vllm", Some("llama-3"), "/v1/chat/completions"),
                ("openai", Some("gpt-4o-mini"), "/v1/chat/completions")
            ],
            "the primary and a repeat are left out"
        );
        assert_eq!(f.fallbacks[1].credentials.iter().map(|c| c.id.as_str()).collect::<Vec<_>>(), ["pk_mini"]);
        assert!(with_fallbacks(&l, &[]).unwrap().fallbacks.is_empty());

        let only_4o = lookup(Access { models: Some(vec!["openai/gpt-4o".into()]), ..Access::default() });
        let d = with_fallbacks(&only_4o, &["gpt-4o-mini"]).unwrap_err();
        assert_eq!((d.status, d.code.as_str()), (403, "model_not_allowed"));
        assert!(d.message.starts_with("`models` names `gpt-4o-mini`: "), "{}", d.message);
        let no_vllm = lookup(Access { providers: Some(vec!["openai".into()]), ..Access::default() });
        assert_eq!(code(with_fallbacks(&no_vllm, &["my-vllm/llama-3"])), "provider_not_allowed");
        assert_eq!(code(with_fallbacks(&l, &["anthropic/claude-x"])), "unsupported_api");
        assert_eq!(code(with_fallbacks(&l, &["nobody-serves-this"])), "unknown_model");
        assert_eq!(code(with_fallbacks(&l, &[""])), "invalid_model");
    }

    #[test]
    fn malformed_fallbacks_and_fallbacks_without_a_body_model_are_refused() {
        let l = lookup(Access::default());
        for (fallbacks, path) in [
            (Fallbacks::Malformed, "/v1/chat/completions"),
            (Fallbacks::CaseVariant, "/v1/chat/completions"),
            (Fallbacks::List(vec!["gpt-4o-mini".into()]), "/v1/models/gpt-4o"),
        ] {
            let method = if path.starts_with("/v1/models") { "GET" } else { "POST" };
            let surface = surface::classify(method, path, false).unwrap();
            let facts = RequestFacts {
                surface,
                model: &chat("gpt-4o"),
                fallbacks: &fallbacks,
                access_key_in_body: false,
                client_ip: None,
            };
            assert_eq!(code(decide(facts, &l, 1_000)), "invalid_model", "{fallbacks:?} {path}");
        }
    }

    #[test]
    fn qualified_models_are_rewritten_to_the_providers_name() {
        let l = all();
        for m in ["openai/gpt-4o", "openai:gpt-4o"] {
            let f = run(&l, "/v1/chat/completions", &chat(m)).unwrap();
            assert_eq!(f.primary.provider.id, "openai");
            assert_eq!(f.primary.model.as_deref(), Some("gpt-4o"));
            assert!(f.rewrite_model);
            assert_eq!(f.primary.upstream_path, "/v1/chat/completions");
            assert_eq!(f.primary.endpoint.authority, "api.openai.com");
            assert_eq!(f.primary.credentials.iter().map(|c| c.id.as_str()).collect::<Vec<_>>(), ["pk_oa1", "pk_oa2"]);
        }
    }

    #[test]
    fn bare_models_resolve_through_the_catalog_and_the_api_surface() {
        let l = all();
        let f = run(&l, "/v1/chat/completions", &chat("gpt-4o")).unwrap();
        assert_eq!((f.primary.provider.id.as_str(), f.rewrite_model), ("openai", false));
        let f = run(&l, "/v1/messages", &chat("claude-sonnet-4-6")).unwrap();
        assert_eq!(f.primary.provider.id, "anthropic");
        assert_eq!(f.primary.upstream_path, "/v1/messages");
        // Anthropic surface: a model outside the catalog still goes to anthropic.
        assert_eq!(run(&l, "/v1/messages", &chat("some-new-model")).unwrap().primary.provider.id, "anthropic");
        assert_eq!(code(run(&l, "/v1/chat/completions", &chat("llama-3"))), "unknown_model");
        // A slash that is not a provider prefix is part of a bare name.
        assert_eq!(code(run(&l, "/v1/chat/completions", &chat("meta-llama/llama-3"))), "unknown_model");
    }

    #[test]
    fn bare_model_prefers_a_provider_the_key_may_use() {
        let l = lookup(Access { providers: s(&["azure"]), models: None, ..Access::default() });
        let f = run(&l, "/v1/chat/completions", &chat("gpt-4o")).unwrap();
        assert_eq!(f.primary.provider.id, "azure");
        assert_eq!(f.primary.upstream_path, "/openai/chat/completions");
    }

    #[test]
    fn custom_provider() {
        let l = all();
        let f = run(&l, "/v1/chat/completions", &chat("my-vllm/llama-3")).unwrap();
        assert_eq!(f.primary.provider.id, "my-vllm");
        assert_eq!(f.primary.model.as_deref(), Some("llama-3"));
        assert!(!f.primary.endpoint.tls);
        assert_eq!(f.primary.endpoint.authority, "10.0.0.5:8000");
    }

    #[test]
    fn allow_lists_refuse_with_distinct_codes() {
        let l = lookup(Access {
            providers: s(&["openai"]),
            models: s(&["openai/gpt-4o", "openai/o3*"]),
            ..Access::default()
        });
        assert_eq!(code(run(&l, "/v1/chat/completions", &chat("openai/gpt-4o"))), "forwarded");
        assert_eq!(code(run(&l, "/v1/chat/completions", &chat("o3-mini"))), "unknown_model");
        assert_eq!(code(run(&l, "/v1/chat/completions", &chat("openai/o3-mini"))), "forwarded");
        assert_eq!(code(run(&l, "/v1/chat/completions", &chat("openai/gpt-4o-mini"))), "model_not_allowed");
        assert_eq!(code(run(&l, "/v1/messages", &chat("anthropic/claude-sonnet-4-6"))), "provider_not_allowed");
        let none = lookup(Access { providers: Some(vec![]), models: None, ..Access::default() });
        assert_eq!(code(run(&none, "/v1/chat/completions", &chat("gpt-4o"))), "provider_not_allowed");
        let no_models = lookup(Access { providers: None, models: Some(vec![]), ..Access::default() });
        assert_eq!(code(run(&no_models, "/v1/chat/completions", &chat("gpt-4o"))), "model_not_allowed");
        let wild = lookup(Access { providers: None, models: s(&["anthropic/claude-*"]), ..Access::default() });
        assert_eq!(code(run(&wild, "/v1/messages", &chat("claude-haiku-4-5"))), "forwarded");
        assert_eq!(code(run(&wild, "/v1/chat/completions", &chat("gpt-4o"))), "model_not_allowed");
    }

    #[test]
    fn model_routes_win_over_the_provider_route() {
        let l = all();
        let f = run(&l, "/v1/chat/completions", &chat("gpt-4o-mini")).unwrap();
        assert_eq!(f.primary.credentials[0].id, "pk_mini");
    }

    #[test]
    fn body_problems() {
        let l = all();
        assert_eq!(code(run(&l, "/v1/chat/completions", &ModelField::InvalidJson)), "invalid_json");
        assert_eq!(code(run(&l, "/v1/chat/completions", &ModelField::NotString)), "invalid_model");
        assert_eq!(code(run(&l, "/v1/chat/completions", &chat(" "))), "invalid_model");
        assert_eq!(code(run(&l, "/v1/chat/completions", &chat("openai/"))), "invalid_model");
        assert_eq!(code(run(&l, "/v1/chat/completions", &ModelField::Absent)), "missing_model");
        assert_eq!(code(run(&l, "/v1/chat/completions", &ModelField::CaseVariant)), "invalid_model");
        assert_eq!(code(run(&l, "/v1/audio/transcriptions", &ModelField::InvalidMultipart)), "invalid_multipart");
        let long = run(&l, "/v1/chat/completions", &chat(&"m".repeat(1_000_000))).unwrap_err();
        assert_eq!(long.code, "invalid_model");
        assert!(long.message.len() < 200, "{}", long.message);
        let unknown = run(&l, "/v1/chat/completions", &chat(&format!("x{}", "y".repeat(250)))).unwrap_err();
        assert_eq!(unknown.code, "unknown_model");
        assert!(unknown.message.len() < 250, "{}", unknown.message);
    }

    #[test]
    fn a_body_carrying_an_access_key_is_refused() {
        let l = all();
        let surface = crate::surface::classify("POST", "/v1/chat/completions", false).unwrap();
        let facts = RequestFacts {
            surface,
            model: &chat("gpt-4o"),
            fallbacks: &Fallbacks::None,
            access_key_in_body: true,
            client_ip: None,
        };
        assert_eq!(code(decide(facts, &l, 0)), "access_key_in_body");
    }

    #[test]
    fn a_key_limited_to_client_addresses() {
        let l = lookup(Access { client_ips: s(&["10.0.0.0/8", "2001:db8::/32"]), ..Access::default() });
        let surface = crate::surface::classify("POST", "/v1/chat/completions", false).unwrap();
        let from = |ip: Option<&str>| {
            let facts = RequestFacts {
                surface,
                model: &chat("gpt-4o"),
                fallbacks: &Fallbacks::None,
                access_key_in_body: false,
                client_ip: ip.map(|i| i.parse().unwrap()),
            };
            decide(facts, &l, 0).map(|f| f.primary.provider.id.clone())
        };
        assert!(from(Some("10.1.2.3")).is_ok());
        assert!(from(Some("2001:db8::7")).is_ok());
        let refused = from(Some("192.0.2.1")).unwrap_err();
        assert_eq!((refused.status, refused.code.as_str()), (403, "ip_not_allowed"));
        assert!(refused.message.contains("192.0.2.1"), "{}", refused.message);
        assert_eq!(from(None).unwrap_err().code, "ip_not_allowed", "an unknown address is refused");
        let nobody = lookup(Access { client_ips: Some(vec![]), ..Access::default() });
        let facts = RequestFacts {
            surface,
            model: &chat("gpt-4o"),
            fallbacks: &Fallbacks::None,
            access_key_in_body: false,
            client_ip: Some("10.1.2.3".parse().unwrap()),
        };
        assert_eq!(code(decide(facts, &nobody, 0)), "ip_not_allowed", "an empty list allows nobody");
        assert!(run(&all(), "/v1/chat/completions", &chat("gpt-4o")).is_ok(), "no list: any address");
    }

    #[test]
    fn account_endpoints_need_the_endpoint_allow_list() {
        let l = all();
        assert_eq!(code(run_as(&l, "DELETE", "/v1/files/file-victim", &ModelField::Absent)), "endpoint_not_allowed");
        assert_eq!(code(run_as(&l, "GET", "/v1/messages/batches", &ModelField::Absent)), "endpoint_not_allowed");
        let files = |allow: &[&str]| lookup(Access { endpoints: s(allow), ..Access::default() });
        let reader = files(&["files.read"]);
        let f = run_as(&reader, "GET", "/v1/files/file-1/content?x=1", &ModelField::Absent).unwrap();
        assert_eq!(
            (f.primary.provider.id.as_str(), f.primary.upstream_path.as_str()),
            ("openai", "/v1/files/file-1/content?x=1")
        );
        assert_eq!(code(run_as(&reader, "DELETE", "/v1/files/file-1", &ModelField::Absent)), "endpoint_not_allowed");
        let all_files = files(&["files.*"]);
        assert_eq!(code(run_as(&all_files, "DELETE", "/v1/files/file-1", &ModelField::Absent)), "forwarded");
        assert_eq!(code(run_as(&all_files, "GET", "/v1/batches", &ModelField::Absent)), "endpoint_not_allowed");
        // The provider allow-list still applies.
        let no_openai = lookup(Access { providers: s(&["anthropic"]), endpoints: s(&["*"]), ..Access::default() });
        assert_eq!(code(run_as(&no_openai, "GET", "/v1/files", &ModelField::Absent)), "provider_not_allowed");
    }

    #[test]
    fn a_model_in_the_path_is_judged_like_a_model_in_the_body() {
        let l = lookup(Access { models: s(&["openai/gpt-4o-mini"]), ..Access::default() });
        let f = run_as(&l, "GET", "/v1/models/gpt-4o-mini", &ModelField::Absent).unwrap();
        assert_eq!(f.primary.upstream_path, "/v1/models/gpt-4o-mini");
        assert_eq!(code(run_as(&l, "GET", "/v1/models/gpt-4o", &ModelField::Absent)), "model_not_allowed");
        let f = run_as(&l, "GET", "/v1/models/openai:gpt-4o-mini", &ModelField::Absent).unwrap();
        assert_eq!((f.primary.upstream_path.as_str(), f.rewrite_model), ("/v1/models/gpt-4o-mini", false));
    }

    #[test]
    fn model_lists_use_the_formats_provider() {
        let l = all();
        let f = run_as(&l, "GET", "/v1/models", &ModelField::Absent).unwrap();
        assert_eq!((f.primary.provider.id.as_str(), f.primary.model), ("openai", None));
        let l = lookup(Access { providers: s(&["anthropic"]), ..Access::default() });
        assert_eq!(code(run_as(&l, "GET", "/v1/models", &ModelField::Absent)), "provider_not_allowed");
    }

    #[test]
    fn wrong_api_surface_and_missing_credentials() {
        let l = all();
        assert_eq!(code(run(&l, "/v1/messages", &chat("openai/gpt-4o"))), "unsupported_api");
        assert_eq!(code(run(&l, "/v1/chat/completions", &chat("claude-sonnet-4-6"))), "unsupported_api");
        let d = run(&l, "/v1/chat/completions", &chat("groq/llama-3")).unwrap_err();
        assert_eq!((d.status, d.code.as_str()), (400, "no_provider_credentials"));
        assert!(d.message.contains("groq"));
    }

    #[test]
    fn key_status() {
        let run_with = |status, key: Option<KeyInfo>| {
            let mut l = doc(Access::default());
            (l.status, l.key) = (status, key);
            code(run(&KeyAnswer::whole(l), "/v1/chat/completions", &chat("gpt-4o")))
        };
        let key = |valid_until| Some(KeyInfo { id: "ak_1".into(), config_id: None, valid_until });
        assert_eq!(run_with(KeyStatus::Disabled, key(None)), "access_key_disabled");
        assert_eq!(run_with(KeyStatus::Unknown, None), "invalid_access_key");
        assert_eq!(run_with(KeyStatus::Active, key(Some(1_000))), "access_key_expired");
        assert_eq!(run_with(KeyStatus::Active, key(Some(1_001))), "forwarded");
        assert_eq!(run_with(KeyStatus::Expired, key(Some(1_001))), "access_key_expired");
    }
}
