//! The prompt tells the model every rule the caller's validation will apply.

mod common;

use common::*;
use drafting::{build_prompt, Task};

#[test]
fn the_system_message_states_format_variables_and_locked_sections() {
    let req = request();
    let (system, user) = build_prompt(&req);

    assert!(
        system.contains("\"Order shipped\" (key \"order_shipped\")"),
        "{system}"
    );
    assert!(system.contains("transactional"), "{system}");
    assert!(
        system.contains(r#"{"subject": "...", "preview": "...", "html": "...", "text": "..."}"#)
    );
    assert!(system
        .contains("- {{ first_name }} (required; always has a value): The customer's first name"));
    assert!(system.contains(
        "- {{ coupon }} (optional; \"WELCOME10\" when not given): Discount code for the next order"
    ));
    assert!(
        system.contains("only one of the declared variables"),
        "{system}"
    );
    assert!(system.contains(&format!(
        "----- BEGIN LOCKED SECTION \"legal\" (put it in: html) -----\n{}\n----- END LOCKED SECTION \"legal\" -----",
        locked_block()
    )));
    assert!(system.contains("byte for byte"), "{system}");
    assert!(
        system.contains("Plain words. No exclamation marks."),
        "{system}"
    );
    assert!(
        system.contains("Make none of the prohibited claims"),
        "{system}"
    );

    // The brief is in the user message, not the system message.
    assert!(!system.contains("Guaranteed next-day delivery"));
    assert!(user.contains("Purpose:\nTell the customer that their order has shipped"));
    assert!(user.contains("Audience: Customers who ordered in the web shop"));
    assert!(user.contains("Tone: warm and brief"));
    assert!(user.contains("Call to action: Track your parcel"));
    assert!(user.contains("1. Delivery takes 2-3 business days\n2. Returns are free"));
    assert!(user.contains(
        "Prohibited claims (make none of them, not even implied):\n1. Guaranteed next-day delivery"
    ));
    assert!(
        !user.contains("current version"),
        "no base, no reference version"
    );
}

#[test]
fn the_locked_section_placement_follows_the_base() {
    let mut req = request();
    let mut base = base();
    base.html = Some("<p>x</p>".into());
    base.text = Some(format!("x\n{}", locked_block()));
    req.base = Some(base);
    let (system, user) = build_prompt(&req);
    assert!(system.contains("\"legal\" (put it in: text)"), "{system}");
    assert!(
        user.contains("The template's current version, for reference"),
        "{user}"
    );
}

#[test]
fn without_variables_or_locked_sections_the_model_is_told_so() {
    let mut req = request();
    req.variables.clear();
    req.locked_sections.clear();
    req.brand_voice = Some("  ".into());
    req.category = "marketing".into();
    let (system, _) = build_prompt(&req);
    assert!(system.contains("declares no variables: do not use {{ }} at all"));
    assert!(system.contains("has no locked sections"));
    assert!(!system.contains("Brand voice"));
    assert!(system.contains("It is a marketing email"));
}

#[test]
fn a_revision_prompt_carries_the_instruction_and_the_base() {
    let mut req = request();
    req.base = Some(base());
    req.task = Task::Revise {
        instruction: "Make it shorter".into(),
    };
    let (system, user) = build_prompt(&req);
    assert!(system.contains(&locked_block()));
    assert!(user.contains("Instruction:\nMake it shorter"), "{user}");
    assert!(
        user.contains(
            "Current version:\n{\n  \"subject\": \"Your order {{ order_id }} is on its way\""
        ),
        "{user}"
    );
    // The base's html, locked block included, is shown JSON-encoded.
    let html_json =
        serde_json::to_string(base().html.as_deref().unwrap_or_default()).expect("encode");
    assert!(user.contains(&html_json), "{user}");
    assert!(!user.contains("Purpose:"));
    // The prompt is a pure function of the request.
    assert_eq!(build_prompt(&req), build_prompt(&req));
}
