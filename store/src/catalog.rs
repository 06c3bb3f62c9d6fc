//! Built-in providers, seeded into the database at first start (so that
//! overrides of `baseUrl` and friends persist).

use keygate_proto::lookup::{AuthStyle, Format};

pub struct BuiltIn {
    pub id: &'static str,
    pub name: &'static str,
    pub base_url: &'static str,
    pub format: Format,
    pub auth: AuthStyle,
    pub models: &'static [&'static str],
}

const fn openai_compatible(
    id: &'static str,
    name: &'static str,
    base_url: &'static str,
    models: &'static [&'static str],
) -> BuiltIn {
    BuiltIn { id, name, base_url, format: Format::Openai, auth: AuthStyle::Bearer, models }
}

pub const BUILT_INS: &[BuiltIn] = &[
    openai_compatible(
        "openai",
        "OpenAI",
        "https://api.openai.com/v1",
        &[
            "gpt-*",
            "o1*",
            "o3*",
            "o4*",
            "chatgpt-*",
            "text-embedding-*",
            "dall-e-*",
            "whisper-*",
            "tts-*",
            "omni-moderation-*",
        ],
    ),
    BuiltIn {
        id: "anthropic",
        name: "Anthropic",
        base_url: "https://api.anthropic.com/v1",
        format: Format::Anthropic,
        auth: AuthStyle::XApiKey,
        models: &["claude-*"],
    },
    openai_compatible(
        "google",
        "Google Gemini (OpenAI-compatible)",
        "https://generativelanguage.googleapis.com/v1beta/openai",
        &["gemini-*", "gemma-*"],
    ),
    openai_compatible("groq", "Groq", "https://api.groq.com/openai/v1", &[]),
    openai_compatible("deepseek", "DeepSeek", "https://api.deepseek.com/v1", &["deepseek-*"]),
    openai_compatible(
        "mistral",
        "Mistral AI",
        "https://api.mistral.ai/v1",
        &["mistral-*", "codestral-*", "ministral-*", "pixtral-*", "magistral-*"],
    ),
    openai_compatible("openrouter", "OpenRouter", "https://openrouter.ai/api/v1", &[]),
    openai_compatible("xai", "xAI", "https://api.x.ai/v1", &["grok-*"]),
];
