//! The dummy provider: deterministic, offline drafts that respect variables and locked
//! sections.

mod common;

use common::*;
use domain::template::TemplateContent;
use drafting::{DraftRecord, DraftRequest, Drafter, ProviderConfig, ProviderKind, Task};

async fn dummy(req: &DraftRequest) -> DraftRecord {
    Drafter::new()
        .draft(&ProviderConfig::defaults(ProviderKind::Dummy), false, req)
        .await
}

fn count(haystack: &str, needle: &str) -> usize {
    haystack.matches(needle).count()
}

#[tokio::test]
async fn the_same_request_gives_a_byte_identical_record() {
    let req = request();
    let first = dummy(&req).await;
    let second = Drafter::new()
        .draft(&ProviderConfig::defaults(ProviderKind::Dummy), true, &req)
        .await;
    assert_eq!(without_latency(&first), without_latency(&second));

    assert_eq!(first.requested_provider, ProviderKind::Dummy);
    assert_eq!(first.provider, ProviderKind::Dummy);
    assert_eq!(first.model, "dummy-1");
    assert!(!first.failed_over);
    assert_eq!(first.provider_error, None);

    // A different request gives a different draft.
    let mut other = req.clone();
    if let Task::Generate(brief) = &mut other.task {
        brief.purpose = "Tell the customer their order was delayed".into();
    }
    assert_ne!(
        first.content.as_ref().map(|c| &c.subject),
        dummy(&other).await.content.as_ref().map(|c| &c.subject)
    );
}

#[tokio::test]
async fn a_generated_draft_follows_the_brief() {
    let req = request();
    let record = dummy(&req).await;
    let c = record.content.as_ref().expect("a draft");
    let html = c.html.as_deref().expect("html");
    let text = c.text.as_deref().expect("text");

    assert_eq!(c.subject, "Tell the customer that their order has shipped");
    assert_eq!(
        c.preview.as_deref(),
        Some("Delivery takes 2-3 business days")
    );
    assert_eq!(c.variables, req.variables);
    assert!(c.subject_variants.is_empty());
    // Mandatory facts: escaped in html, as written in text.
    assert!(
        html.contains("<p>Returns are free for 30 days &lt;with receipt&gt; &amp; tags</p>"),
        "{html}"
    );
    assert!(
        text.contains("Returns are free for 30 days <with receipt> & tags"),
        "{text}"
    );
    assert!(
        html.contains("<p>Delivery takes 2-3 business days</p>"),
        "{html}"
    );
    // Required variables only.
    for part in [html, text] {
        assert!(part.contains("{{ first_name }}"), "{part}");
        assert!(part.contains("{{ order_id }}"), "{part}");
        assert!(!part.contains("{{ coupon }}"), "{part}");
    }
    // Call to action.
    assert!(
        html.contains("<p><strong>Track your parcel</strong></p>"),
        "{html}"
    );
    assert!(text.contains("\n\nTrack your parcel"), "{text}");

    // Usage counts words of the prompt and of the answer.
    assert_eq!(
        record.usage.input_tokens,
        record.prompt.split_whitespace().count() as u64
    );
    let answer = serde_json::json!({
        "subject": c.subject, "preview": c.preview, "html": c.html, "text": c.text
    })
    .to_string();
    assert_eq!(
        record.usage.output_tokens,
        answer.split_whitespace().count() as u64
    );
}

#[tokio::test]
async fn author_text_never_becomes_template_syntax() {
    let mut req = request();
    req.locked_sections.clear();
    if let Task::Generate(brief) = &mut req.task {
        brief.purpose = "Say {{ secret }} and {% include 'x' %}".into();
        brief.mandatory_facts = vec!["{# not a comment #}".into()];
    }
    let record = dummy(&req).await;
    let c = record.content.expect("a draft");
    for part in [
        &c.subject,
        c.html.as_ref().expect("html"),
        c.text.as_ref().expect("text"),
    ] {
        let stripped = part
            .replace("{{ first_name }}", "")
            .replace("{{ order_id }}", "");
        for opener in ["{{", "{%", "{#"] {
            assert!(!stripped.contains(opener), "{opener} in {part:?}");
        }
    }
    assert!(c.subject.contains("{ { secret }}"), "{}", c.subject);
}

#[tokio::test]
async fn locked_sections_are_copied_verbatim_into_the_right_part() {
    let block = locked_block();

    // No base: html only.
    let record = dummy(&request()).await;
    let c = record.content.expect("a draft");
    assert_eq!(count(c.html.as_deref().unwrap_or_default(), &block), 1);
    assert_eq!(count(c.text.as_deref().unwrap_or_default(), "{# locked"), 0);

    // The base has it in the text only: text only.
    let mut req = request();
    req.base = Some(TemplateContent {
        subject: "s".into(),
        html: Some("<p>Hello</p>\n".into()),
        text: Some(format!("Hello\n\n{block}\n")),
        ..TemplateContent::default()
    });
    let c = dummy(&req).await.content.expect("a draft");
    assert_eq!(count(c.text.as_deref().unwrap_or_default(), &block), 1);
    assert_eq!(count(c.html.as_deref().unwrap_or_default(), "{# locked"), 0);

    // The base has it in both: both.
    let mut req = request();
    req.base = Some(TemplateContent {
        subject: "s".into(),
        html: Some(format!("<p>Hello</p>\n{block}\n")),
        text: Some(format!("Hello\n\n{block}\n")),
        ..TemplateContent::default()
    });
    let c = dummy(&req).await.content.expect("a draft");
    assert_eq!(count(c.html.as_deref().unwrap_or_default(), &block), 1);
    assert_eq!(count(c.text.as_deref().unwrap_or_default(), &block), 1);
    // Locked blocks come after the generated paragraphs.
    let html = c.html.as_deref().unwrap_or_default();
    assert!(html.find("Track your parcel") < html.find(&block), "{html}");
}

#[tokio::test]
async fn a_revision_changes_the_base_but_not_its_locked_blocks() {
    let mut req = request();
    req.base = Some(base());
    req.task = Task::Revise {
        instruction: "Mention the <holiday> delays & say {{ sorry }}".into(),
    };
    let record = dummy(&req).await;
    let c = record.content.expect("a revision");
    let original = base();
    let html = c.html.as_deref().expect("html");
    let text = c.text.as_deref().expect("text");

    assert_ne!(c.html, original.html, "the html must change");
    assert_ne!(c.text, original.text, "the text must change");
    assert_eq!(c.subject, original.subject);
    assert_eq!(c.preview, original.preview);
    assert_eq!(c.variables, req.variables);

    // The locked block is untouched, and the note comes before it.
    let block = locked_block();
    assert_eq!(count(html, &block), 1, "{html}");
    let note = "<p>Revised: Mention the &lt;holiday&gt; delays &amp; say &#123;&#123; sorry &#125;&#125;</p>\n";
    assert_eq!(
        html,
        original
            .html
            .as_deref()
            .expect("base html")
            .replace(&block, &format!("{note}{block}"))
    );
    // The text part has no locked block: the note goes at the end.
    assert_eq!(
        text,
        "Hi {{ first_name }},\n\nYour order shipped.\n\nRevised: Mention the <holiday> delays & say { { sorry }}\n"
    );

    // Deterministic as well.
    assert_eq!(
        without_latency(&dummy(&req).await),
        without_latency(&dummy(&req).await)
    );
}

#[tokio::test]
async fn unusable_requests_get_a_reason_and_no_provider_call() {
    let server = FakeProvider::answering("/v1", 200, openai_completion(&model_draft())).await;
    let cfg = config(ProviderKind::OpenAi, &server.base_url);
    let drafter = Drafter::new();

    let mut revise_without_base = request();
    revise_without_base.task = Task::Revise {
        instruction: "Shorter".into(),
    };
    let record = drafter.draft(&cfg, true, &revise_without_base).await;
    let reason = record.content.expect_err("nothing to revise");
    assert!(reason.contains("no base"), "{reason}");
    assert!(!record.failed_over);

    let mut invalid_brief = request();
    if let Task::Generate(brief) = &mut invalid_brief.task {
        brief.purpose = " ".into();
    }
    let record = drafter.draft(&cfg, true, &invalid_brief).await;
    let reason = record.content.expect_err("invalid brief");
    assert_eq!(reason, "the brief is invalid: purpose: must not be empty");

    let record = dummy(&invalid_brief).await;
    assert!(record.content.is_err(), "the dummy refuses it too");

    assert!(server.requests().is_empty());
}
