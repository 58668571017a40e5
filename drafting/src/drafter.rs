//! The entry point: one call, one record. Failures are data here, not errors: the caller
//! stores the record whatever happened, so `draft` never returns `Err` and never panics on
//! provider input.

use std::time::Instant;

use domain::template::TemplateContent;
use reqwest::redirect::Policy;
use reqwest::Client;
use tracing::{debug, info, warn};

use crate::config::{ProviderConfig, ProviderKind};
use crate::dummy;
use crate::prompt::build_prompt;
use crate::providers::{self, Answer, ProviderError};
use crate::record::{join_prompt, DraftRecord, DraftRequest, Task, Usage};
use crate::reply::parse_reply;

/// Most characters in a revision instruction.
const MAX_INSTRUCTION_CHARS: usize = 2000;

/// Drafts templates with a configured provider. Holds one HTTP client (rustls) that is
/// reused for every call; cheap to share behind an `Arc`.
#[derive(Debug)]
pub struct Drafter {
    /// `Err` when the TLS backend could not be set up; calls to real providers then fail
    /// with that reason (and fail over if allowed) instead of `new` panicking.
    client: Result<Client, String>,
}

impl Default for Drafter {
    fn default() -> Self {
        Drafter::new()
    }
}

impl Drafter {
    pub fn new() -> Drafter {
        let client = Client::builder()
            .user_agent(concat!("postledger-drafting/", env!("CARGO_PKG_VERSION")))
            .redirect(Policy::none())
            .build()
            .map_err(|e| e.to_string());
        if let Err(e) = &client {
            warn!(error = %e, "drafting HTTP client unavailable; only the dummy provider works");
        }
        Drafter { client }
    }

    /// Drafts with `cfg`'s provider. When that provider cannot be reached or answers an
    /// error and `failover` is on, the dummy's draft is used (`failed_over`); when it
    /// answers but the answer is unusable, there is no failover: the record says why.
    pub async fn draft(
        &self,
        cfg: &ProviderConfig,
        failover: bool,
        req: &DraftRequest,
    ) -> DraftRecord {
        let started = Instant::now();
        let (system, user) = build_prompt(req);
        let prompt = join_prompt(&system, &user);
        let mut record = DraftRecord {
            requested_provider: cfg.kind,
            provider: cfg.kind,
            model: cfg.model.clone(),
            failed_over: false,
            provider_error: None,
            prompt,
            usage: Usage::default(),
            latency_ms: 0,
            content: Err(String::new()),
        };

        if let Some(reason) = unusable_request(req) {
            record.content = Err(reason);
        } else if cfg.kind == ProviderKind::Dummy {
            let (content, usage) = dummy::answer(req, &record.prompt);
            record.content = content;
            record.usage = usage;
        } else {
            debug!(
                template_key = %req.template_key,
                provider = %cfg.kind,
                model = %cfg.model,
                prompt_chars = record.prompt.len(),
                "sending draft request"
            );
            let answer = match &self.client {
                Ok(client) => providers::call(client, cfg, &system, &user, req.temperature).await,
                Err(e) => Err(ProviderError::Client(e.clone())),
            };
            match answer {
                Ok(answer) => {
                    if let Some(model) = &answer.model {
                        record.model = model.clone();
                    }
                    record.usage = answer.usage.clone();
                    record.content = interpret(&answer, req);
                }
                Err(error) => {
                    let error = error.to_string();
                    warn!(
                        template_key = %req.template_key,
                        provider = %cfg.kind,
                        failover,
                        error = %error,
                        "draft provider failed"
                    );
                    if failover {
                        let (content, usage) = dummy::answer(req, &record.prompt);
                        record.provider = ProviderKind::Dummy;
                        record.model = ProviderConfig::defaults(ProviderKind::Dummy).model;
                        record.failed_over = true;
                        record.usage = usage;
                        record.content = content;
                    } else {
                        record.content = Err(format!("no draft: {error}"));
                    }
                    record.provider_error = Some(error);
                }
            }
        }

        record.latency_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        info!(
            template_key = %req.template_key,
            requested_provider = %record.requested_provider,
            provider = %record.provider,
            model = %record.model,
            failed_over = record.failed_over,
            input_tokens = record.usage.input_tokens,
            output_tokens = record.usage.output_tokens,
            latency_ms = record.latency_ms,
            drafted = record.content.is_ok(),
            "template draft finished"
        );
        record
    }
}

/// Why a request cannot be drafted by any provider, checked before anything is sent.
fn unusable_request(req: &DraftRequest) -> Option<String> {
    match &req.task {
        Task::Generate(brief) => {
            let problems = brief.validate();
            (!problems.is_empty()).then(|| {
                let list: Vec<String> = problems
                    .iter()
                    .map(|(field, message)| format!("{field}: {message}"))
                    .collect();
                format!("the brief is invalid: {}", list.join("; "))
            })
        }
        Task::Revise { instruction } => {
            let chars = instruction.chars().count();
            if instruction.trim().is_empty() {
                Some("the revision instruction is empty".to_string())
            } else if chars > MAX_INSTRUCTION_CHARS {
                Some(format!(
                    "the revision instruction is too long ({chars} characters, at most \
                     {MAX_INSTRUCTION_CHARS})"
                ))
            } else if req.base.is_none() {
                Some("a revision needs the version to revise (no base was given)".to_string())
            } else {
                None
            }
        }
    }
}

/// What a provider's answer yields as a draft.
fn interpret(answer: &Answer, req: &DraftRequest) -> Result<TemplateContent, String> {
    if let Some(refusal) = &answer.refusal {
        return Err(format!("the model declined to draft: {refusal}"));
    }
    parse_reply(&answer.text, &req.variables).map_err(|reason| {
        if answer.truncated {
            format!("{reason} (the answer was cut off at the max_tokens limit)")
        } else {
            reason
        }
    })
}
