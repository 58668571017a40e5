use std::time::{Duration, Instant};

use domain::template::{SubjectVariant, TemplateContent, TemplateVariable};
use proptest::prelude::*;
use serde_json::json;

use crate::*;

fn var(name: &str) -> TemplateVariable {
    TemplateVariable {
        name: name.to_owned(),
        required: false,
        default: None,
        description: None,
    }
}

fn required(name: &str) -> TemplateVariable {
    TemplateVariable {
        required: true,
        ..var(name)
    }
}

fn with_default(name: &str, default: serde_json::Value) -> TemplateVariable {
    TemplateVariable {
        default: Some(default),
        ..var(name)
    }
}

fn content(subject: &str, html: Option<&str>, text: Option<&str>) -> TemplateContent {
    TemplateContent {
        subject: subject.to_owned(),
        html: html.map(str::to_owned),
        text: text.map(str::to_owned),
        ..TemplateContent::default()
    }
}

fn compile(c: &TemplateContent) -> Compiled {
    match Compiled::new(c, Limits::default()) {
        Ok(compiled) => compiled,
        Err(issues) => panic!("expected a valid template, got {issues:#?}"),
    }
}

fn codes(issues: &[Issue]) -> Vec<(&str, &str)> {
    issues.iter().map(|i| (i.part.as_str(), i.code)).collect()
}

// ---------------------------------------------------------------------------------------
// analyse

#[test]
fn syntax_error_in_html_has_part_line_and_column() {
    let c = content(
        "Hi",
        Some("<p>Hello</p>\n<p>{{ name }}</p>\n<p>{{ 1 + }}</p>"),
        None,
    );
    let issues = analyse(&c).unwrap_err();
    let syntax: Vec<_> = issues
        .iter()
        .filter(|i| i.code == "TEMPLATE_SYNTAX")
        .collect();
    assert_eq!(syntax.len(), 1, "{issues:#?}");
    assert_eq!(syntax[0].part, "html");
    assert_eq!(syntax[0].line, Some(3));
    // the `}}` that ends the expression too early
    assert_eq!(syntax[0].column, Some(11));
    assert!(
        syntax[0].message.starts_with("syntax error"),
        "{}",
        syntax[0].message
    );
}

#[test]
fn syntax_error_column_counts_characters_not_bytes() {
    let c = content("Hi", None, Some("héllo wörld {% if %}"));
    let issues = analyse(&c).unwrap_err();
    assert_eq!(issues.len(), 1, "{issues:#?}");
    assert_eq!((issues[0].line, issues[0].column), (Some(1), Some(19)));
}

#[test]
fn undeclared_variable_in_text_is_named_with_its_part_and_line() {
    let mut c = content(
        "Hi {{ name }}",
        Some("<p>{{ name }}</p>"),
        Some("Hello {{ name }}\nyour code: {{ code }}\n"),
    );
    c.variables = vec![var("name")];
    let issues = analyse(&c).unwrap_err();
    assert_eq!(issues.len(), 1, "{issues:#?}");
    let issue = &issues[0];
    assert_eq!(issue.part, "text");
    assert_eq!(issue.code, "UNDECLARED_VARIABLE");
    assert!(issue.message.contains("`code`"), "{}", issue.message);
    assert_eq!((issue.line, issue.column), (Some(2), Some(15)));
}

#[test]
fn globals_loop_and_template_assignments_are_not_undeclared() {
    let mut c = content(
        "{{ items|length }} items",
        Some(concat!(
            "{% set total = namespace(n=0) %}",
            "{% for i in items %}{{ loop.index }}{% set total.n = total.n + i %}{% endfor %}",
            "{% for x in range(3) %}{{ x }}{% endfor %}{{ dict(a=1).a }}",
            "{% macro row(v) %}<td>{{ v }}{{ varargs|length }}</td>{% endmacro %}{{ row(1) }}",
            "{% with y = 2 %}{{ y }}{% endwith %}{{ total.n }}",
        )),
        None,
    );
    c.variables = vec![var("items"), var("unused")];
    let analysis = analyse(&c).unwrap();
    assert_eq!(
        analysis.used_variables.into_iter().collect::<Vec<_>>(),
        vec!["items".to_owned()]
    );
}

#[test]
fn all_issues_are_collected() {
    let mut c = TemplateContent {
        subject: "{{ a }".to_owned(),
        subject_variants: vec![
            SubjectVariant {
                subject: "ok".to_owned(),
                weight: 0,
            },
            SubjectVariant {
                subject: " ".to_owned(),
                weight: 1,
            },
        ],
        preview: Some("{{ ghost }}".to_owned()),
        html: None,
        text: Some(" \n".to_owned()),
        variables: vec![var("1bad"), var("ok"), var("ok"), var("loop")],
    };
    let issues = analyse(&c).unwrap_err();
    assert_eq!(
        codes(&issues),
        vec![
            ("variables[0]", "INVALID_VARIABLE_NAME"),
            ("variables[2]", "DUPLICATE_VARIABLE"),
            ("variables[3]", "INVALID_VARIABLE_NAME"),
            ("subject_variants[0]", "INVALID_VARIANT"),
            ("subject_variants[1]", "INVALID_VARIANT"),
            ("html", "EMPTY_BODY"),
            ("subject", "TEMPLATE_SYNTAX"),
            ("preview", "UNDECLARED_VARIABLE"),
        ]
    );
    c.html = Some("x".repeat(MAX_PART_BYTES + 1));
    let issues = analyse(&c).unwrap_err();
    assert!(
        codes(&issues).contains(&("html", "TOO_LARGE")),
        "{issues:#?}"
    );
    assert!(!codes(&issues).contains(&("html", "EMPTY_BODY")));
}

#[test]
fn include_import_and_extends_are_refused_at_save() {
    for src in [
        "{% include 'header.html' %}",
        "{%- import 'macros' as m %}",
        "{% from 'macros' import row %}",
        "{% extends 'layout' %}",
        "{% include 'text' %}",
    ] {
        let c = content("Hi", Some(src), Some("plain"));
        let issues = analyse(&c).unwrap_err();
        assert_eq!(codes(&issues), vec![("html", "TEMPLATE_SYNTAX")], "{src}");
        assert_eq!((issues[0].line, issues[0].column), (Some(1), Some(1)));
        assert!(
            issues[0].message.contains("not available"),
            "{}",
            issues[0].message
        );
        assert!(Compiled::new(&c, Limits::default()).is_err());
    }
}

#[test]
fn include_and_extends_fail_cleanly_at_render_even_without_analyse() {
    // The save-time refusal is the first line; the sandbox itself has no loader either.
    let mut env = crate::render::environment(&Limits::default());
    env.add_template_owned("html", "a{% include 'other' %}b")
        .unwrap();
    env.add_template_owned("text", "{% extends 'layout' %}")
        .unwrap();
    for part in ["html", "text"] {
        let err = env
            .get_template(part)
            .unwrap()
            .render(minijinja::Value::from(()))
            .unwrap_err();
        assert_eq!(err.kind(), minijinja::ErrorKind::TemplateNotFound, "{part}");
    }
}

// ---------------------------------------------------------------------------------------
// locked sections

const LOCKED_HTML: &str = "<p>{{ x }}</p>\n{# locked: legal #}\n<small>Acme Ltd, {{ year }}</small>\n{# endlocked #}\n{#- locked: a_b-9 -#}{% if x %}y{% endif %}{# endlocked #}";

#[test]
fn locked_sections_are_extracted_verbatim_and_rendering_ignores_markers() {
    let mut c = content(
        "Hi",
        Some(LOCKED_HTML),
        Some("{# locked: text-footer #} Bye {# endlocked #}"),
    );
    c.variables = vec![var("x"), with_default("year", json!(2025))];
    let sections = locked_sections(&c).unwrap();
    assert_eq!(
        sections.into_iter().collect::<Vec<_>>(),
        vec![
            ("a_b-9".to_owned(), "{% if x %}y{% endif %}".to_owned()),
            (
                "legal".to_owned(),
                "\n<small>Acme Ltd, {{ year }}</small>\n".to_owned()
            ),
            ("text-footer".to_owned(), " Bye ".to_owned()),
        ]
    );
    assert_eq!(analyse(&c).unwrap().locked_sections.len(), 3);
    let rendered = compile(&c).render(&json!({"x": "<b>"}), "k").unwrap();
    assert_eq!(
        rendered.html.unwrap(),
        "<p>&lt;b&gt;</p>\n\n<small>Acme Ltd, 2025</small>\ny"
    );
    assert_eq!(rendered.text.unwrap(), " Bye ");
}

#[test]
fn malformed_locked_markers_are_reported() {
    let cases = [
        ("unclosed", "a\n{# locked: x #}b", None, 2, "never closed"),
        (
            "nested",
            "{# locked: x #}{# locked: y #}{# endlocked #}{# endlocked #}",
            None,
            1,
            "nested",
        ),
        (
            "unknown closing",
            "a {# endlocked #}",
            None,
            1,
            "without a matching",
        ),
        (
            "duplicate across parts",
            "{# locked: x #}a{# endlocked #}",
            Some("{# locked: x #}b{# endlocked #}"),
            1,
            "more than once",
        ),
        (
            "bad name",
            "{# locked: Legal Footer #}a{# endlocked #}",
            None,
            1,
            "name",
        ),
        (
            "no name",
            "{# locked #}a{# endlocked #}",
            None,
            1,
            "locked: NAME",
        ),
        (
            "trailing text",
            "{# locked: x #}a{# endlocked x #}",
            None,
            1,
            "exactly",
        ),
        (
            "unclosed after a closed one",
            "{# locked: a #}{# endlocked #}\n\n{#- locked: b #}",
            None,
            3,
            "`b` is never closed",
        ),
    ];
    for (what, html, text, line, needle) in cases {
        let c = content("Hi", Some(html), text);
        let issues = locked_sections(&c).unwrap_err();
        assert_eq!(issues.len(), 1, "{what}: {issues:#?}");
        let issue = &issues[0];
        assert_eq!(issue.code, "LOCKED_SECTION_MALFORMED", "{what}");
        assert_eq!(issue.line, Some(line), "{what}");
        assert!(issue.message.contains(needle), "{what}: {}", issue.message);
        let expected_part = if text.is_some() { "text" } else { "html" };
        assert_eq!(issue.part, expected_part, "{what}");
        assert_eq!(analyse(&c).unwrap_err(), issues, "{what}");
    }
}

#[test]
fn markers_inside_strings_raw_blocks_and_other_comments_are_not_markers() {
    let c = content(
        "Hi",
        Some("{{ '{# endlocked #}' }}{% raw %}{# locked: x #}{% endraw %}{# lockedown #}{# unlocked: y #}"),
        None,
    );
    assert_eq!(locked_sections(&c).unwrap().len(), 0);
}

// ---------------------------------------------------------------------------------------
// rendering

#[test]
fn optional_variable_without_value_renders_as_nothing() {
    let mut c = content(
        "Hi{% if nick %} {{ nick }}{% endif %}",
        Some("<p>[{{ nick }}]</p>"),
        Some("[{{ nick }}]{{ nick is none }}"),
    );
    c.variables = vec![var("nick")];
    let compiled = compile(&c);
    for ctx in [json!({}), json!(null), json!({"nick": null})] {
        let r = compiled.render(&ctx, "k").unwrap();
        assert_eq!(r.subject, "Hi");
        assert_eq!(r.html.as_deref(), Some("<p>[]</p>"));
        assert_eq!(r.text.as_deref(), Some("[]True"));
        assert_eq!(r.context, json!({"nick": null}));
    }
    let r = compiled.render(&json!({"nick": "Bo"}), "k").unwrap();
    assert_eq!(r.subject, "Hi Bo");
}

#[test]
fn defaults_are_applied_and_show_in_the_effective_context() {
    let mut c = content(
        "{{ greeting }}, {{ name }}",
        None,
        Some("{{ greeting }} {{ limits.max }}"),
    );
    c.variables = vec![
        with_default("greeting", json!("Hello")),
        required("name"),
        with_default("limits", json!({"max": 3})),
    ];
    let compiled = compile(&c);
    let r = compiled
        .render(&json!({"name": "Ann", "extra": 1}), "k")
        .unwrap();
    assert_eq!(r.subject, "Hello, Ann");
    assert_eq!(r.text.as_deref(), Some("Hello 3"));
    assert_eq!(
        r.context,
        json!({"name": "Ann", "extra": 1, "greeting": "Hello", "limits": {"max": 3}})
    );
    let r = compiled
        .render(&json!({"name": "Ann", "greeting": "Hi"}), "k")
        .unwrap();
    assert_eq!(r.subject, "Hi, Ann");
}

#[test]
fn missing_required_variables_are_all_listed_sorted() {
    let mut c = content("{{ zeta }}{{ alpha }}{{ mid }}", None, Some("{{ opt }}"));
    c.variables = vec![
        required("zeta"),
        required("alpha"),
        required("mid"),
        var("opt"),
    ];
    let err = compile(&c).render(&json!({"mid": null}), "k").unwrap_err();
    assert_eq!(
        err,
        RenderError::MissingVariables {
            names: vec!["alpha".into(), "mid".into(), "zeta".into()]
        }
    );
    assert_eq!(err.code(), "MISSING_VARIABLES");
}

#[test]
fn json_objects_behave_like_template_maps() {
    // The context is built with our own map type; it must behave as minijinja's own maps.
    let src = concat!(
        "{% for k in m %}{{ k }},{% endfor %}|{% for k, v in m|items %}{{ k }}={{ v }};{% endfor %}|",
        "{{ m|length }}|{{ 'b' in m }}{{ 'z' in m }}|{{ m.b }}{{ m['a'] }}|{{ m.nested }}|{{ m }}|",
        "{{ m|dictsort|first }}|{{ m.nested.list[1] }}|{{ e|length }}{{ not e }}{{ m == m }}|",
        "{{ m|list }}{{ m.nested|items|list }}{{ m|attr('b') }}"
    );
    let ctx = json!({"m": {"b": 2, "a": "x", "nested": {"list": [1, 2]}}, "e": {}});
    let mut c = content("x", None, Some(src));
    c.variables = vec![var("m"), var("e")];
    let ours = compile(&c).render(&ctx, "k").unwrap().text.unwrap();
    let mut env = crate::render::environment(&Limits::default());
    env.add_template("t", src).unwrap();
    let theirs = env
        .get_template("t")
        .unwrap()
        .render(minijinja::Value::from_serialize(&ctx))
        .unwrap();
    assert_eq!(ours, theirs);
    assert!(ours.starts_with("a,b,nested,|a=x;b=2;"), "{ours}");
}

#[test]
fn context_must_be_an_object() {
    let mut c = content("Hi", None, Some("x"));
    c.variables = vec![var("a")];
    let err = compile(&c).render(&json!([1, 2]), "k").unwrap_err();
    assert_eq!(err.code(), "INVALID_CONTEXT");
    assert!(err.to_string().contains("an array"), "{err}");
}

#[test]
fn html_is_escaped_only_in_the_html_part() {
    let mut c = content("Re: {{ v }}", Some("<p>{{ v }}</p>"), Some("{{ v }}"));
    c.preview = Some("{{ v }}".to_owned());
    c.variables = vec![var("v")];
    let r = compile(&c)
        .render(&json!({"v": "<b>Tom & \"Jerry\"</b>"}), "k")
        .unwrap();
    assert_eq!(
        r.html.as_deref(),
        Some("<p>&lt;b&gt;Tom &amp; &quot;Jerry&quot;&lt;&#x2f;b&gt;</p>")
    );
    assert_eq!(r.subject, "Re: <b>Tom & \"Jerry\"</b>");
    assert_eq!(r.preview.as_deref(), Some("<b>Tom & \"Jerry\"</b>"));
    assert_eq!(r.text.as_deref(), Some("<b>Tom & \"Jerry\"</b>"));
}

#[test]
fn strict_undefined_attribute_is_an_error_naming_it() {
    let mut c = content("Hi", None, Some("Hello\n{{ user.nmae }}"));
    c.variables = vec![required("user")];
    let err = compile(&c)
        .render(&json!({"user": {"name": "Ann"}}), "k")
        .unwrap_err();
    assert_eq!(err.code(), "RENDER_FAILED");
    match &err {
        RenderError::Failed {
            part,
            line,
            message,
        } => {
            assert_eq!(part, "text");
            assert_eq!(*line, Some(2));
            assert!(message.contains("user.nmae"), "{message}");
            assert!(message.contains("undefined"), "{message}");
        }
        other => panic!("unexpected {other:?}"),
    }
    // `if` on a missing attribute is just as strict
    c.text = Some("{% if user.nmae %}x{% endif %}".to_owned());
    assert!(compile(&c).render(&json!({"user": {}}), "k").is_err());
}

#[test]
fn runaway_nested_loop_stops_quickly_on_fuel() {
    let c = content(
        "Hi",
        Some("{% for a in range(100000) %}{% for b in range(100000) %}x{% endfor %}{% endfor %}"),
        None,
    );
    let compiled = compile(&c);
    let started = Instant::now();
    let err = compiled.render(&json!({}), "k").unwrap_err();
    let took = started.elapsed();
    assert!(took < Duration::from_millis(900), "took {took:?}");
    assert_eq!(err.code(), "RENDER_LIMIT_EXCEEDED");
    let message = err.to_string();
    assert!(message.contains("fuel limit"), "{message}");
    assert!(message.contains("ran too long"), "{message}");
}

#[test]
fn output_limit_stops_the_render() {
    let c = content(
        "Hi",
        None,
        Some("{% for i in range(100) %}{{ 'x' * 10000 }}{% endfor %}"),
    );
    let limits = Limits {
        max_output_bytes: 500_000,
        ..Limits::default()
    };
    let err = Compiled::new(&c, limits)
        .unwrap()
        .render(&json!({}), "k")
        .unwrap_err();
    assert_eq!(err.code(), "RENDER_LIMIT_EXCEEDED");
    assert!(err.to_string().contains("500000 bytes"), "{err}");
    // the same template fits the default 2 MiB
    assert!(compile(&c).render(&json!({}), "k").is_ok());
}

#[test]
fn unbounded_recursion_is_an_error_not_a_crash() {
    let c = content(
        "Hi",
        None,
        Some("{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}"),
    );
    let compiled = compile(&c);
    // request handlers run on threads with the default 2 MiB stack
    let err = std::thread::Builder::new()
        .stack_size(2 * 1024 * 1024)
        .spawn(move || compiled.render(&json!({}), "k"))
        .unwrap()
        .join()
        .unwrap()
        .unwrap_err();
    assert!(
        matches!(err.code(), "RENDER_FAILED" | "RENDER_LIMIT_EXCEEDED"),
        "{err:?}"
    );
}

#[test]
fn deep_nesting_in_sources_and_contexts_is_refused_without_crashing() {
    let deep_expr = format!("{{{{ {}a{} }}}}", "(".repeat(5000), ")".repeat(5000));
    let deep_blocks = format!(
        "{}x{}",
        "{% if a %}".repeat(3000),
        "{% endif %}".repeat(3000)
    );
    let deep_context = (0..200).fold(json!(1), |inner, _| json!([inner]));
    let outcome = std::thread::Builder::new()
        .stack_size(2 * 1024 * 1024)
        .spawn(move || {
            let mut results = Vec::new();
            for src in [deep_expr, deep_blocks] {
                let mut c = content("Hi", None, Some(&src));
                c.variables = vec![var("a")];
                let issues = analyse(&c).unwrap_err();
                results.push(codes(&issues).first().map(|(_, code)| code.to_string()));
            }
            let mut c = content("Hi", None, Some("{{ a }}"));
            c.variables = vec![var("a")];
            let err = compile(&c)
                .render(&json!({ "a": deep_context }), "k")
                .unwrap_err();
            results.push(Some(err.code().to_owned()));
            results
        })
        .unwrap()
        .join()
        .unwrap();
    assert_eq!(
        outcome,
        vec![
            Some("TEMPLATE_SYNTAX".to_owned()),
            Some("TEMPLATE_SYNTAX".to_owned()),
            Some("INVALID_CONTEXT".to_owned())
        ]
    );
}

#[test]
fn subject_is_one_line_and_variants_are_picked_by_key() {
    let mut c = content("  Base\n{{ n }}  ", None, Some("t"));
    c.variables = vec![var("n")];
    let r = compile(&c).render(&json!({"n": 1}), "k").unwrap();
    assert_eq!(r.subject, "Base 1");
    assert_eq!(r.variant, None);

    c.subject_variants = vec![
        SubjectVariant {
            subject: "A {{ n }}\r\n\r\nline".to_owned(),
            weight: 1,
        },
        SubjectVariant {
            subject: "B {{ n }}".to_owned(),
            weight: 1,
        },
    ];
    let compiled = compile(&c);
    let mut seen = [false, false];
    for i in 0..64 {
        let key = format!("user-{i}");
        let r = compiled.render(&json!({"n": 1}), &key).unwrap();
        let expected = pick_variant(&[1, 1], &key).unwrap();
        assert_eq!(r.variant, Some(expected as u32));
        assert_eq!(r.subject, ["A 1 line", "B 1"][expected]);
        seen[expected] = true;
    }
    assert_eq!(seen, [true, true]);
}

#[test]
fn pick_variant_is_deterministic() {
    let weights = [3, 1, 5];
    for i in 0..200 {
        let key = format!("recipient-{i}@example.com");
        let first = pick_variant(&weights, &key);
        assert!(first.is_some());
        assert_eq!(pick_variant(&weights, &key), first);
    }
    assert_eq!(pick_variant(&[], "k"), None);
    assert_eq!(pick_variant(&[0, 0], "k"), None);
    for i in 0..100 {
        assert_eq!(pick_variant(&[0, 7, 0], &i.to_string()), Some(1));
    }
}

#[test]
fn pick_variant_follows_the_weights() {
    let n = 20_000;
    let second = (0..n)
        .filter(|i| pick_variant(&[1, 3], &format!("key-{i}")) == Some(1))
        .count();
    let share = second as f64 / n as f64;
    assert!((0.73..=0.77).contains(&share), "share of weight 3: {share}");
}

#[test]
fn bench_template_renders() {
    let (c, ctx) = bench::realistic();
    let analysis = analyse(&c).unwrap();
    assert_eq!(
        analysis.locked_sections.keys().collect::<Vec<_>>(),
        vec!["legal-footer", "legal-footer-text"]
    );
    let html_len = c.html.as_ref().unwrap().len();
    assert!((2500..4500).contains(&html_len), "html is {html_len} bytes");
    let r = compile(&c).render(&ctx, "someone@example.com").unwrap();
    let html = r.html.unwrap();
    let text = r.text.unwrap();
    assert!(r.subject.contains("100-4821-7731"), "{}", r.subject);
    assert!(r.variant.is_some());
    assert_eq!(r.preview.as_deref(), Some("8 items, EUR 356.21"));
    assert!(html.contains("Thanks for your order, Ada!"));
    assert!(html.contains("Canvas tote &lt;limited&gt;"));
    assert!(html.contains("Coupon SPRING10"));
    assert!(html.contains("EUR 79.00"));
    assert!(html.contains("https:&#x2f;&#x2f;shop.example.com&#x2f;help"));
    assert_eq!(html.matches("<tr class=\"odd\">").count(), 4);
    assert!(text.contains("- 4 x Cotton T-shirt (L, white): EUR 59.96"));
    assert!(text.contains("Canvas tote <limited>"));
    assert_eq!(
        r.context["support_url"],
        json!("https://shop.example.com/help")
    );
}

#[test]
fn default_fuel_lets_a_few_hundred_items_through() {
    let (c, mut ctx) = bench::realistic();
    let items = ctx["order"]["items"].as_array().unwrap().clone();
    let many: Vec<_> = items.iter().cycle().take(400).cloned().collect();
    ctx["order"]["items"] = json!(many);
    let r = compile(&c).render(&ctx, "k").unwrap();
    let html = r.html.unwrap();
    let rows =
        html.matches("<tr class=\"odd\">").count() + html.matches("<tr class=\"even\">").count();
    assert_eq!(rows, 400);
}

#[test]
#[ignore = "benchmark: run with --release -- --ignored --nocapture"]
fn bench_render_throughput() {
    let result = bench::run(Duration::from_secs(5));
    println!("{result}");
    assert_eq!(result["failures"], json!(0));
}

// ---------------------------------------------------------------------------------------
// no panics on any input

fn source_strategy() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        Just("{{".to_owned()),
        Just("}}".to_owned()),
        Just("{%".to_owned()),
        Just("%}".to_owned()),
        Just("{#".to_owned()),
        Just("#}".to_owned()),
        Just(" for x in a ".to_owned()),
        Just(" endfor ".to_owned()),
        Just(" if a ".to_owned()),
        Just(" else ".to_owned()),
        Just(" endif ".to_owned()),
        Just(" set b = ".to_owned()),
        Just(" macro m(x) ".to_owned()),
        Just(" endmacro ".to_owned()),
        Just(" a.b ".to_owned()),
        Just(" a[0] ".to_owned()),
        Just(" a|upper ".to_owned()),
        Just(" a|join(',') ".to_owned()),
        Just(" range(a) ".to_owned()),
        Just(" x ~ a ".to_owned()),
        Just(" locked: s ".to_owned()),
        Just(" endlocked ".to_owned()),
        Just(" raw ".to_owned()),
        Just(" include 'html' ".to_owned()),
        Just("'".to_owned()),
        Just("\"".to_owned()),
        Just("(".to_owned()),
        Just(")".to_owned()),
        Just("\n".to_owned()),
        Just("-".to_owned()),
        "\\PC{0,8}",
        "[a-z0-9 +*/.|(),\\[\\]]{0,6}",
    ];
    prop::collection::vec(piece, 0..24).prop_map(|pieces| pieces.concat())
}

fn json_strategy() -> impl Strategy<Value = serde_json::Value> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(serde_json::Value::from),
        "\\PC{0,12}".prop_map(serde_json::Value::from),
    ];
    leaf.prop_recursive(4, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(serde_json::Value::from),
            prop::collection::btree_map("[a-c]{1,2}", inner, 0..6)
                .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Syntactically valid templates whose expressions may still fail at render time (type
/// errors, missing attributes, division by zero...), so that the render error paths run.
fn valid_template_strategy() -> impl Strategy<Value = String> {
    let expr = prop::sample::select(vec![
        "a",
        "b",
        "x",
        "s",
        "a.b",
        "a[0]",
        "a['k']",
        "b[1]",
        "1",
        "'str'",
        "none",
        "range(3)",
        "b|length",
        "a|upper",
        "a|join(',')",
        "a * 3",
        "a + 1",
        "a ~ b",
        "a / 0",
        "a // 0",
        "a|int",
        "a|sort",
        "a|first",
        "a|items",
        "a|dictsort",
        "a|tojson",
        "a|round",
        "a|abs",
        "a|batch(2)",
        "a is defined",
        "a|default('d')",
        "'%s-%d'|format(a, a)",
        "a[1:2]",
        "a|selectattr('b')|list",
        "a|map(attribute='b')|list",
        "a.items()",
        "a|safe",
        "loop.index",
        "a|escape",
        "a|replace('a', b)",
        "a|indent(2)",
        "a|reverse",
        "a|unique",
        "dict(k=a)",
        "namespace(v=a).v",
        "a|float",
        "a|string|length",
        "-a",
        "not a",
        "a in b",
        "a == b",
        "a < b",
        "(a if b else x)",
        "(a, b)|list",
        "{'k': a}.k",
    ]);
    let leaf = prop_oneof![
        "[a-z <>&\n]{0,6}".prop_map(|t| t),
        expr.clone().prop_map(|e| format!("{{{{ {e} }}}}")),
    ];
    leaf.prop_recursive(4, 24, 4, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 1..4).prop_map(|parts| parts.concat()),
            (expr.clone(), inner.clone(), inner.clone())
                .prop_map(|(e, t, f)| format!("{{% if {e} %}}{t}{{% else %}}{f}{{% endif %}}")),
            (expr.clone(), inner.clone())
                .prop_map(|(e, t)| format!("{{% for x in {e} %}}{t}{{% endfor %}}")),
            (expr.clone(), inner.clone()).prop_map(|(e, t)| format!("{{% set s = {e} %}}{t}")),
            (expr.clone(), inner).prop_map(|(e, t)| format!(
                "{{% macro m(x) %}}{t}{{% endmacro %}}{{{{ m({e}) }}}}"
            )),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    #[test]
    fn valid_templates_render_or_fail_cleanly(
        html in valid_template_strategy(),
        text in valid_template_strategy(),
        subject in valid_template_strategy(),
        a in json_strategy(),
        b in json_strategy(),
        key in "\\PC{0,8}",
    ) {
        let c = TemplateContent {
            subject,
            html: Some(html),
            text: Some(text),
            variables: vec![var("a"), var("b"), var("s"), var("x")],
            ..TemplateContent::default()
        };
        let limits = Limits { fuel: 20_000, max_output_bytes: 64 * 1024 };
        let compiled = match Compiled::new(&c, limits) {
            Ok(compiled) => compiled,
            Err(issues) => panic!("generated template should be valid: {issues:#?}\n{c:#?}"),
        };
        match compiled.render(&json!({ "a": a, "b": b }), &key) {
            Ok(r) => prop_assert!(!r.subject.contains('\n')),
            Err(e) => prop_assert!(!e.to_string().is_empty()),
        }
    }

    #[test]
    fn arbitrary_sources_and_contexts_never_panic(
        subject in source_strategy(),
        html in source_strategy(),
        text in proptest::option::of(source_strategy()),
        a in json_strategy(),
        extra in json_strategy(),
        required_a in any::<bool>(),
        key in "\\PC{0,8}",
    ) {
        let c = TemplateContent {
            subject,
            html: Some(html),
            text,
            variables: vec![
                TemplateVariable { required: required_a, ..var("a") },
                with_default("b", json!([1, "two"])),
                var("s"),
                var("x"),
            ],
            ..TemplateContent::default()
        };
        let _ = analyse(&c);
        let _ = locked_sections(&c);
        let limits = Limits { fuel: 20_000, max_output_bytes: 64 * 1024 };
        if let Ok(compiled) = Compiled::new(&c, limits) {
            let _ = compiled.render(&json!({ "a": a, "z": extra }), &key);
            let _ = compiled.render(&extra, &key);
        }
    }
}
